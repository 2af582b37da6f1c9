import type pg from 'pg'
import type { PostgresPool, PostgresPoolClient } from 'kysely'
import { currentContext, type TenancyContext } from '../context.js'
import { DatasourceUnavailableError, quote } from '../errors.js'
import type { Lease, PoolManager } from './pool-manager.js'
import { RoutedClient, isConnectionError } from './routed-client.js'
import { sessionTarget, type SessionSettings } from './session-state.js'

/** Options of {@link RoutingPool}. */
export interface RoutingPoolOptions {
  /** Extra session settings per checkout, e.g. for row-level security. Defaults to none. */
  settings?: SessionSettings
  /**
   * Reads the frame a checkout routes by, and the transaction guard compares
   * with. `tenancy.kysely()` passes one that sees only that tenancy's frames.
   * Defaults to the innermost frame of any tenancy (`currentContext`).
   */
  context?: () => TenancyContext | undefined
}

/** Counters of a {@link RoutingPool}. */
export interface RoutingStats {
  /** Clients handed out. */
  checkouts: number
  /** Checkouts that needed a session round trip (schema, role or settings changed). */
  sessionChanges: number
}

/**
 * A pool-shaped router for Kysely's `PostgresDialect`, so one Kysely serves
 * every instance. Kysely calls `connect()` for every query outside a
 * transaction and once per transaction; each call reads the current context
 * and takes a client from the pool of the instance's datasource (`default` in
 * host context or with no context): the default datasource for shared
 * instances, `isolateClient` for isolated ones, the schema's datasource for
 * schema instances. Before handing the client out it brings the session to
 * what the instance needs (`search_path`, `SET ROLE`, `settings`), sending only
 * the differences in one round trip, and nothing at all on the shared-mode
 * path. The client it returns refuses queries from another instance's context
 * (`TENANCY_MISMATCH`) and goes back to the pool it came from.
 *
 * ```ts
 * const pools = new PoolManager({ default: url, acme: acmeUrl })
 * const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(pools, {
 *   settings: (context) => ({ 'tenancy.iid': String(context?.instance?.id ?? '') }),
 * }) }) })
 * ```
 */
export class RoutingPool implements PostgresPool {
  // Kysely passes these to a cancel-query control client; it has no Client
  // constructor here, so it cancels through a pooled connection instead.
  readonly options = {}
  readonly stats: RoutingStats = { checkouts: 0, sessionChanges: 0 }
  readonly #pools: PoolManager
  readonly #settings: SessionSettings | undefined
  readonly #context: () => TenancyContext | undefined
  readonly #routed = new WeakMap<pg.PoolClient, RoutedClient>()
  readonly #giveBack = (lease: Lease, destroy: boolean): void => { this.#pools.release(lease, destroy) }

  constructor (pools: PoolManager, options: RoutingPoolOptions = {}) {
    this.#pools = pools
    this.#settings = options.settings
    this.#context = options.context ?? currentContext
  }

  // The promise form on purpose: pg's callback form can call back in the
  // context of the request that released the client.
  async connect (): Promise<PostgresPoolClient> {
    const context = this.#context()
    const instance = context?.instance
    const target = sessionTarget(context, this.#settings)
    const label = instance?.name ?? 'default'
    const lease = await this.#pools.acquire(instance?.datasource ?? 'default', label)
    let routed = this.#routed.get(lease.client)
    if (routed === undefined) {
      routed = new RoutedClient(lease.client, this.#giveBack, this.#context)
      this.#routed.set(lease.client, routed)
    }
    routed.checkout(lease, instance)
    this.stats.checkouts++
    let changes: string
    try {
      changes = routed.session.changesTo(target)
    } catch (err) {
      routed.release()
      throw err
    }
    if (changes === '') return routed
    this.stats.sessionChanges++
    try {
      await lease.client.query(changes)
    } catch (err) {
      // The session is now in an unknown state: the client must not be reused.
      routed.release(true)
      if (isConnectionError(err, lease.client)) throw Object.assign(new DatasourceUnavailableError(quote(label)), { cause: err })
      throw Object.assign(new Error(`The connection for ${instance ? `instance ${quote(instance.name)}` : 'the host context'} could not be prepared (${changes}): ${(err as Error).message}`), { cause: err })
    }
    routed.session.applied(target)
    return routed
  }

  async end (): Promise<void> {
    await this.#pools.close()
  }
}
