import type pg from 'pg'
import type { PostgresPool, PostgresPoolClient } from 'kysely'
import { currentContext, type TenancyContext } from '../context.js'
import { InvalidOptionsError, SessionError } from '../errors.js'
import type { Lease, PoolManager } from './pool-manager.js'
import { RoutedClient, type DiscardReason } from './routed-client.js'
import { SessionState, localChanges, sessionTarget, type SessionSettings } from './session-state.js'

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
  /**
   * The datasources are reached through PgBouncer's transaction pooling, where
   * consecutive transactions of one connection may run on different server
   * sessions: the session is never changed; a checkout that needs a schema, a
   * role or settings gives them to each transaction with `set_config(…, true)`
   * in its first round trip (a statement outside a transaction gets one of its
   * own), and a statement that may change the session is refused with
   * `TENANCY_UNSUPPORTED_STATEMENT` before it is sent, since its change would
   * stay on a server connection that other clients get next. Defaults to `false`.
   */
  transactionPooling?: boolean
  /**
   * Sends the statements that have parameters as named prepared statements,
   * up to this many distinct texts per connection (later ones unnamed), so
   * that PostgreSQL parses and plans each text once per connection instead of
   * once per query: what row-level security's policies cost is mostly
   * planning. Plans are re-made by PostgreSQL when the `search_path`, the role
   * or a table changes. `true` is 100; not with `transactionPooling`.
   * Defaults to `false` (none).
   */
  preparedStatements?: boolean | number
}

/** @internal The per-connection limit of the `preparedStatements` option (0 for none); throws `TENANCY_INVALID_OPTIONS` on a bad one. */
export function preparedStatementsPerConnection (option: boolean | number | undefined, transactionPooling: boolean): number {
  const max = option === true ? 100 : option === false || option === undefined ? 0 : option
  if (typeof max !== 'number' || !Number.isInteger(max) || max < 0) {
    throw new InvalidOptionsError(`preparedStatements must be true, false or a whole number of statements per connection, not ${JSON.stringify(option)}`)
  }
  if (max > 0 && transactionPooling) {
    throw new InvalidOptionsError('preparedStatements keeps prepared statements in the server session, which PgBouncer\'s transaction pooling (pgbouncer: \'transaction\') does not keep from one transaction to the next: leave it out, or use session pooling')
  }
  return max
}

/** Counters of a {@link RoutingPool}, since it was made. */
export interface RoutingStats {
  /** Clients handed out. */
  readonly checkouts: number
  /**
   * Checkouts that needed session statements (schema, role or settings
   * changed). They go out in the round trip of the checkout's first
   * statement when it is a single data statement, else in one of their own.
   */
  readonly sessionChanges: number
  /**
   * Connections destroyed on release instead of pooled again, by reason:
   * `session` a statement sent on it may have changed its session,
   * `transaction` a transaction was left open or failed on it, `lost` the
   * connection was lost, `asked` Kysely discarded it (a failed rollback) or its
   * session could not be prepared.
   */
  readonly destroyed: Readonly<Record<DiscardReason, number>>
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
 * (`TENANCY_MISMATCH`) and goes back to the pool it came from, unless the
 * checkout may have left something behind for the next one: a connection on
 * which a statement may have changed the session (read with PostgreSQL's
 * parser, loaded before the first checkout), a transaction is still open, or
 * the connection was lost, is destroyed instead.
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
  readonly #pools: PoolManager
  readonly #settings: SessionSettings | undefined
  readonly #context: () => TenancyContext | undefined
  readonly #transactionPooling: boolean
  readonly #prepared: number
  readonly #routed = new WeakMap<pg.PoolClient, RoutedClient>()
  #checkouts = 0
  #sessionChanges = 0
  readonly #destroyed: Record<DiscardReason, number> = { session: 0, transaction: 0, lost: 0, asked: 0 }
  readonly #giveBack = (lease: Lease, reason: DiscardReason | undefined): void => {
    if (reason !== undefined) this.#destroyed[reason]++
    this.#pools.release(lease, reason !== undefined)
  }

  constructor (pools: PoolManager, options: RoutingPoolOptions = {}) {
    this.#pools = pools
    this.#settings = options.settings
    this.#context = options.context ?? currentContext
    this.#transactionPooling = options.transactionPooling === true
    this.#prepared = preparedStatementsPerConnection(options.preparedStatements, this.#transactionPooling)
    // Loading blocks the event loop for a moment: start it now, at start-up,
    // so the first checkout does not wait for it; a failure surfaces there.
    if (!SessionState.loaded) SessionState.load().catch(() => {})
  }

  /** The counters, as of now. */
  get stats (): RoutingStats {
    return { checkouts: this.#checkouts, sessionChanges: this.#sessionChanges, destroyed: { ...this.#destroyed } }
  }

  // The promise form on purpose: pg's callback form can call back in the
  // context of the request that released the client.
  async connect (): Promise<PostgresPoolClient> {
    if (!SessionState.loaded) await loadParser()
    const context = this.#context()
    const instance = context?.instance
    const target = sessionTarget(context, this.#settings)
    const label = instance?.name ?? 'default'
    // Under transaction pooling no session is kept, so none is preferred.
    const lease = await this.#pools.acquireAsIs(instance?.datasource ?? 'default', label, this.#transactionPooling ? undefined : target)
    let routed = this.#routed.get(lease.client)
    if (routed === undefined) {
      routed = new RoutedClient(lease.client, this.#pools.sessionOf(lease.client), this.#giveBack, this.#context, this.#transactionPooling, this.#prepared)
      this.#routed.set(lease.client, routed)
    }
    this.#checkouts++
    if (this.#transactionPooling) {
      // No session state: each transaction sets its own (set_config(…, true)).
      try {
        routed.checkout(lease, instance, localChanges(target))
      } catch (err) {
        routed.checkout(lease, instance)
        routed.release()
        throw err
      }
      return routed
    }
    routed.checkout(lease, instance)
    let changes: string[]
    try {
      changes = routed.session.changeStatements(target)
    } catch (err) {
      routed.release()
      throw err
    }
    if (changes.length === 0) return routed
    this.#sessionChanges++
    // Sent with the checkout's first statement, in its round trip when it can carry them.
    routed.setUp(changes, target)
    return routed
  }

  async end (): Promise<void> {
    await this.#pools.close()
  }
}

async function loadParser (): Promise<void> {
  try {
    await SessionState.load()
  } catch (err) {
    throw Object.assign(new SessionError('PostgreSQL\'s parser (libpg-query), which reads every statement sent on a connection to keep sessions apart, could not be loaded, so no connection is handed out.'), { cause: err })
  }
}
