import pg from 'pg'
import type { PostgresCursor, PostgresPoolClient, PostgresQueryResult } from 'kysely'
import type { TenancyContext } from '../context.js'
import { DatasourceUnavailableError, MismatchError, quote } from '../errors.js'
import type { Instance } from '../instances/instance.js'
import type { Lease } from './pool-manager.js'
import { SessionState } from './session-state.js'

interface ClientInternals {
  processID?: number
  _ended?: boolean
  _ending?: boolean
  _queryable?: boolean
}

function describe (instance: Instance | undefined): string {
  return instance === undefined ? 'the host context (no instance)' : `instance ${quote(instance.name)}`
}

/**
 * True when `err` means the connection itself is gone (server stopped,
 * network cut), as opposed to a statement the server refused.
 */
export function isConnectionError (err: unknown, client?: pg.ClientBase): boolean {
  if (err instanceof pg.DatabaseError) {
    const code = err.code ?? ''
    return code.startsWith('08') || code.startsWith('57P')
  }
  const internals = client as unknown as ClientInternals | undefined
  return internals !== undefined && (internals._ended === true || internals._ending === true || internals._queryable === false)
}

/**
 * The client the routing pool hands Kysely: one per pg client, reused on every
 * checkout so Kysely keeps one connection object per physical connection.
 * It remembers the connection's session state, and guards the rule that a
 * connection held across awaits (a transaction, `db.connection()`) belongs to
 * the instance that checked it out: a query on it while the context names
 * another instance fails with `TENANCY_MISMATCH` before reaching the server.
 * A lost connection turns into 503 `TENANCY_DATASOURCE_UNAVAILABLE` and is
 * discarded on release.
 */
export class RoutedClient implements PostgresPoolClient {
  /** What this connection's session carries. */
  readonly session = new SessionState()
  readonly #client: pg.PoolClient
  readonly #giveBack: (lease: Lease, destroy: boolean) => void
  #lease: Lease | undefined
  #owner: Instance | undefined
  #broken = false
  readonly #context: () => TenancyContext | undefined

  constructor (client: pg.PoolClient, giveBack: (lease: Lease, destroy: boolean) => void, context: () => TenancyContext | undefined) {
    this.#client = client
    this.#giveBack = giveBack
    this.#context = context
  }

  /** Read by Kysely to cancel a running query. */
  get processID (): number | undefined {
    return (this.#client as unknown as ClientInternals).processID
  }

  /** The raw pg client, for the routing pool's own session statements. */
  get raw (): pg.PoolClient {
    return this.#client
  }

  /** @internal Binds the client to the lease and instance of this checkout. */
  checkout (lease: Lease, owner: Instance | undefined): void {
    this.#lease = lease
    this.#owner = owner
  }

  query<R>(sql: string, parameters: ReadonlyArray<unknown>): Promise<PostgresQueryResult<R>>
  query<R>(cursor: PostgresCursor<R>): PostgresCursor<R>
  query<R> (sqlOrCursor: string | PostgresCursor<R>, parameters?: ReadonlyArray<unknown>): Promise<PostgresQueryResult<R>> | PostgresCursor<R> {
    const mismatch = this.#mismatch()
    if (typeof sqlOrCursor !== 'string') {
      if (mismatch) throw mismatch
      this.session.observe(String((sqlOrCursor as { text?: unknown }).text ?? ''))
      return this.#client.query(sqlOrCursor as any) as unknown as PostgresCursor<R>
    }
    if (mismatch) return Promise.reject(mismatch)
    this.session.observe(sqlOrCursor)
    return this.#run<R>(sqlOrCursor, parameters)
  }

  async #run<R> (sql: string, parameters: ReadonlyArray<unknown> | undefined): Promise<PostgresQueryResult<R>> {
    try {
      return await this.#client.query(sql, parameters as unknown[]) as unknown as PostgresQueryResult<R>
    } catch (err) {
      if (!isConnectionError(err, this.#client)) throw err
      this.#broken = true
      throw Object.assign(new DatasourceUnavailableError(quote(this.#owner?.name ?? this.#lease?.datasource ?? 'default')), { cause: err })
    }
  }

  release (destroy?: boolean): void {
    const lease = this.#lease
    if (lease === undefined) return
    this.#lease = undefined
    this.#owner = undefined
    this.#giveBack(lease, destroy === true || this.#broken)
  }

  #mismatch (): Error | undefined {
    const current = this.#context()?.instance
    const owner = this.#owner
    if (current === owner || current?.id === owner?.id) return undefined
    return new MismatchError(`This transaction (or connection) belongs to ${describe(owner)}, which began it, but a query on it now runs as ${describe(current)}. ` +
      'A transaction stays with one instance: finish it before switching, or run the other instance\'s work outside it.')
  }
}
