import pg from 'pg'
import type { PostgresCursor, PostgresPoolClient, PostgresQueryResult } from 'kysely'
import type { TenancyContext } from '../context.js'
import { DatasourceUnavailableError, MismatchError, SessionError, UnsupportedStatementError, quote } from '../errors.js'
import type { Instance } from '../instances/instance.js'
import { settledIdle, type Lease } from './pool-manager.js'
import { SetUpQuery } from './set-up-query.js'
import { changesSession, singleDataStatement, transactionControl, type SessionState, type SessionTarget } from './session-state.js'

/**
 * Two objects of one instance (a registry reload replaces the object) share a
 * connection only when what the connection carries for them is the same: the
 * datasource, the schema and the role, besides the id the filter and the
 * settings use. An object of the same id elsewhere (changed by the reload, or
 * another tenancy's) is another instance to the connection.
 */
function sameSession (a: Instance | undefined, b: Instance | undefined): boolean {
  return a !== undefined && b !== undefined && a.id === b.id && a.datasource === b.datasource && a.schema === b.schema && a.role === b.role
}

function describe (instance: Instance | undefined): string {
  return instance === undefined ? 'the host context (no instance)' : `instance ${quote(instance.name)}`
}

/** An error the server sends when the connection itself is ending: connection exception (08) or operator intervention that ends the session (57P). */
// Errors, parse trees and cursors come from outside the type system: every
// fallback below (`?? ''`, `String(err)`, a cursor without text) is the safe
// reading of a shape pg or Kysely does not produce today, and stays so.
function isConnectionCode (err: unknown): boolean {
  if (!(err instanceof pg.DatabaseError)) return false
  const code = err.code ?? ''
  return code.startsWith('08') || code.startsWith('57P')
}

/** PostgreSQL refuses to run a prepared statement whose result columns changed since it was prepared (a `select *` after a migration). */
function isStalePlan (err: unknown): boolean {
  return err instanceof pg.DatabaseError && err.code === '0A000' && err.message.includes('cached plan must not change result type')
}

/**
 * Why a connection given back is destroyed rather than pooled again: Kysely
 * asked, the connection was lost, a statement may have changed its session,
 * or a transaction is still open (or failed) on it.
 */
export type DiscardReason = 'asked' | 'lost' | 'session' | 'transaction'

/** The session statements a checkout has still to send (see `RoutedClient.setUp`), and the state they give. */
interface SetUp {
  readonly statements: readonly string[]
  readonly target: SessionTarget
}

const ignore = (): void => {}

/**
 * The client the routing pool hands Kysely: one per pg client, reused on every
 * checkout so Kysely keeps one connection object per physical connection.
 * It remembers the connection's session state, and guards the rule that a
 * connection held across awaits (a transaction, `db.connection()`) belongs to
 * the instance that checked it out: a query on it while the context names
 * another instance fails with `TENANCY_MISMATCH` before reaching the server.
 *
 * It gives the connection back to its pool only when nothing of the checkout
 * can reach the next one. It is destroyed instead when it was lost (its
 * `error` or `end` event, or a connection-class error code; the query fails
 * with 503 `TENANCY_DATASOURCE_UNAVAILABLE`), when a statement sent on it may
 * have changed the session (see `changesSession`), or when a transaction is
 * still open or failed on it, or may be (the server's ready-for-query after a
 * failed statement has not arrived yet: see `settledIdle`): the server then
 * rolls the transaction back.
 */
export class RoutedClient implements PostgresPoolClient {
  /** What this connection's session carries (the pool manager's record of it, shared with every other user of the connection). */
  readonly session: SessionState
  readonly #client: pg.PoolClient
  readonly #giveBack: (lease: Lease, reason: DiscardReason | undefined) => void
  readonly #context: () => TenancyContext | undefined
  #lease: Lease | undefined
  #owner: Instance | undefined
  #lost = false
  readonly #transactionPooling: boolean
  readonly #prepared: number
  // Under transaction pooling: the statement that sets this checkout's schema,
  // role and settings for one transaction ('' when it needs none), and whether
  // the transaction open now has had it.
  #local = ''
  #localReady = false
  // The session statements this checkout still has to send; the round trip
  // that carries them while it is on the wire (every later statement of the
  // checkout waits for it); and why they failed, after which nothing more is
  // sent on the checkout (its connection was destroyed).
  #pending: SetUp | undefined
  #inFlight: Promise<void> | undefined
  #failed: Error | undefined

  constructor (client: pg.PoolClient, session: SessionState, giveBack: (lease: Lease, reason: DiscardReason | undefined) => void, context: () => TenancyContext | undefined, transactionPooling = false, prepared = 0) {
    this.#client = client
    this.#transactionPooling = transactionPooling
    this.#prepared = prepared
    this.session = session
    this.#giveBack = giveBack
    this.#context = context
    // pg emits these synchronously when the socket fails or closes, before the
    // failed query's rejection is handled, so #run sees the flag already set.
    const lost = (): void => { this.#lost = true }
    client.on('error', lost)
    client.on('end', lost)
  }

  /** Read by Kysely to cancel a running query. */
  get processID (): number | undefined {
    return (this.#client as pg.PoolClient & { processID?: number }).processID
  }

  /**
   * @internal Binds the client to the lease and instance of this checkout;
   * `local` is what each transaction of it must set first under transaction
   * pooling (see `localChanges`).
   */
  checkout (lease: Lease, owner: Instance | undefined, local = ''): void {
    this.#lease = lease
    this.#owner = owner
    this.#local = local
    this.#localReady = false
    this.#pending = undefined
    this.#inFlight = undefined
    this.#failed = undefined
  }

  /**
   * @internal Gives the checkout the routing pool's own session statements
   * (not observed), which bring the session to `target`: they go out with the
   * checkout's first statement, in its round trip when it is a single data
   * statement (see `SetUpQuery`), else on their own just before it. A
   * checkout that sends nothing leaves the session as it was. When they fail
   * the connection is destroyed, the statement is not run, and it fails, with
   * every later one of the checkout, with `TENANCY_SESSION_FAILED` (503 when
   * the connection was lost).
   */
  setUp (statements: readonly string[], target: SessionTarget): void {
    this.#pending = { statements, target }
  }

  query<R>(sql: string, parameters: ReadonlyArray<unknown>): Promise<PostgresQueryResult<R>>
  query<R>(cursor: PostgresCursor<R>): PostgresCursor<R>
  query<R> (sqlOrCursor: string | PostgresCursor<R>, parameters?: ReadonlyArray<unknown>): Promise<PostgresQueryResult<R>> | PostgresCursor<R> {
    const mismatch = this.#failed ?? this.#mismatch()
    if (typeof sqlOrCursor !== 'string') {
      if (mismatch) throw mismatch
      const text = (sqlOrCursor as { text?: unknown }).text
      const refused = this.#refusal(typeof text === 'string' ? text : undefined)
      if (refused) throw refused
      this.session.observe(typeof text === 'string' ? text : undefined)
      if (this.#local !== '') this.#localCursor()
      else if (this.#pending !== undefined || this.#inFlight !== undefined) this.#gate(sqlOrCursor as unknown as pg.Submittable)
      return this.#client.query(sqlOrCursor as unknown as pg.Submittable) as unknown as PostgresCursor<R>
    }
    if (mismatch) return Promise.reject(mismatch)
    const refused = this.#refusal(sqlOrCursor)
    if (refused) return Promise.reject(refused)
    this.session.observe(sqlOrCursor)
    if (this.#local !== '') return this.#runLocal<R>(sqlOrCursor, parameters)
    if (this.#pending !== undefined || this.#inFlight !== undefined) return this.#runSetUp<R>(sqlOrCursor, parameters)
    return this.#run<R>(sqlOrCursor, parameters, this.#prepared > 0)
  }

  /**
   * The checkout's first statement (or one sent while the first is on the
   * wire): after the round trip ahead of it, and with the session statements
   * still to send, in its own round trip when it can carry them.
   */
  async #runSetUp<R> (sql: string, parameters: ReadonlyArray<unknown> | undefined): Promise<PostgresQueryResult<R>> {
    while (this.#inFlight !== undefined) await this.#inFlight
    const refused = this.#failed ?? this.#mismatch()
    if (refused) throw refused
    const setUp = this.#pending
    if (setUp === undefined) return await this.#run<R>(sql, parameters, this.#prepared > 0)
    this.#pending = undefined
    if (singleDataStatement(sql)) return await this.#run<R>(sql, parameters, this.#prepared > 0, setUp)
    await this.#track(this.#sendSetUp(setUp))
    if (this.#failed) throw this.#failed
    return await this.#run<R>(sql, parameters, this.#prepared > 0)
  }

  /**
   * Sends the session statements on their own (one round trip; the simple
   * protocol, several statements in one text). pg calls back before it sends
   * the next query of its queue, so a cursor queued behind sees the outcome.
   */
  #sendSetUp (setUp: SetUp): Promise<void> {
    const text = setUp.statements.join('; ')
    return new Promise((resolve) => {
      this.#client.query(text, (err: Error | undefined) => {
        if (err) this.#setUpFailed(err, text)
        else this.session.applied(setUp.target)
        resolve()
      })
    })
  }

  /** Marks `done` as the round trip every later statement of the checkout waits for. */
  #track (done: Promise<unknown>): Promise<void> {
    const flight: Promise<void> = done.then(ignore, ignore).then(() => {
      if (this.#inFlight === flight) this.#inFlight = undefined
    })
    this.#inFlight = flight
    return flight
  }

  /**
   * A cursor goes out when pg's queue reaches it, behind any set-up of the
   * checkout: the set-up still to send is queued ahead of it, and the cursor
   * is sent only if the session then carries the checkout's state.
   */
  #gate (cursor: pg.Submittable): void {
    const setUp = this.#pending
    if (setUp !== undefined) {
      this.#pending = undefined
      void this.#track(this.#sendSetUp(setUp))
    }
    const submit = cursor.submit.bind(cursor) as (connection: unknown) => Error | null
    const gated = (connection: unknown): Error | null => {
      if (this.#failed !== undefined) return this.#failed
      if (this.#pending !== undefined) {
        return new SessionError(`The session of a connection for ${describe(this.#owner)} was prepared in the round trip of a statement sent just before this cursor, and rolled back when that statement failed, so the cursor was not sent.`)
      }
      return submit(connection)
    }
    ;(cursor as unknown as { submit: typeof gated }).submit = gated
    // A failed set-up destroys the connection, which pg may report to the
    // queued cursor before the gate is reached: it fails with the set-up's error either way.
    const fail = cursor as unknown as { handleError: (err: Error, connection: unknown) => void }
    const handleError = fail.handleError.bind(cursor)
    fail.handleError = (err, connection) => { handleError(this.#failed ?? err, connection) }
  }

  /** Records why the checkout's session statements failed; the connection is destroyed and nothing more is sent on the checkout. */
  #setUpFailed (err: unknown, text: string): Error {
    const lost = this.#noteLoss(err)
    const who = describe(this.#owner)
    const label = this.#label()
    const reason = err instanceof Error ? err.message : String(err)
    const failure = lost
      ? new DatasourceUnavailableError(label)
      : new SessionError(`The session of a connection for ${who} could not be prepared (${text}): ${reason}. The connection was destroyed.`)
    this.#failed = Object.assign(failure, { cause: err })
    this.release(true)
    return this.#failed
  }

  /** Sends `sql` behind the checkout's session statements, in one round trip (see SetUpQuery). */
  #sendWithSetUp<R> (sql: string, parameters: ReadonlyArray<unknown> | undefined, name: string | undefined, setUp: SetUp): Promise<PostgresQueryResult<R>> {
    const lease = this.#lease
    const done = new Promise<PostgresQueryResult<R>>((resolve, reject) => {
      let settled = false
      // Called back by pg before it sends anything queued behind, so a cursor
      // gated on the outcome reads it (see #gate).
      const query = new SetUpQuery(setUp.statements, sql, parameters as unknown[] | undefined, name, (err, result) => {
        if (settled) return
        settled = true
        if (err === null || err === undefined) {
          this.session.applied(setUp.target)
          resolve(result as PostgresQueryResult<R>)
        } else if (query.failure === 'statement') {
          // Rolled back with the statement: the session is as it was, and the set-up is still to send.
          if (this.#lease === lease) this.#pending = setUp
          reject(err)
        } else {
          // 'set-up', or 'unsent' (pg syncs then, and the session statements may or may not hold).
          const failure = this.#setUpFailed(err, setUp.statements.join('; '))
          reject(query.failure === 'unsent' ? err : failure)
        }
      })
      this.#client.query(query as unknown as pg.Submittable)
    })
    void this.#track(done)
    return done
  }

  /**
   * Under transaction pooling, with session state to give: every statement
   * runs in a transaction whose first statement sets it (`set_config(…, true)`),
   * since the next transaction may run on another server session. A `BEGIN`
   * carries the set-up in the same round trip; a statement outside a
   * transaction becomes `BEGIN; <set-up>`, itself, `COMMIT`, so it commits, or
   * fails, before its promise settles, as it would on its own.
   */
  async #runLocal<R> (sql: string, parameters: ReadonlyArray<unknown> | undefined): Promise<PostgresQueryResult<R>> {
    const control = transactionControl(sql)
    if (control === 'several') {
      throw new UnsupportedStatementError(`Under PgBouncer's transaction pooling (pgbouncer: 'transaction') ${describe(this.#owner)} sets its schema, role or settings at the start of each transaction, ` +
        'so a text that ends or begins a transaction among other statements cannot be sent: the statements after it would run without them. Send BEGIN, COMMIT and ROLLBACK on their own.')
    }
    const status = this.#client.getTransactionStatus()
    if (status === 'I') {
      if (control === 'start' && (parameters === undefined || parameters.length === 0)) {
        const results = await this.#setUp(`${sql}; ${this.#local}`) as unknown as Array<PostgresQueryResult<R>>
        return results[0]!
      }
      if (control === 'none') {
        await this.#setUp(`begin; ${this.#local}`)
        let result: PostgresQueryResult<R>
        try {
          result = await this.#run<R>(sql, parameters)
        } catch (err) {
          if (!this.#lost) await this.#client.query('rollback').catch(() => {})
          throw err
        }
        await this.#run('commit', undefined)
        return result
      }
    } else if (status === 'T' && !this.#localReady) {
      await this.#setUp(this.#local)
    }
    const result = await this.#run<R>(sql, parameters)
    if (control === 'end') this.#localReady = false
    return result
  }

  /** A cursor runs inside a transaction that has had the set-up: its rows are read over several round trips. */
  #localCursor (): void {
    const status = this.#client.getTransactionStatus()
    if (status === 'I') {
      throw new UnsupportedStatementError(`Under PgBouncer's transaction pooling (pgbouncer: 'transaction') ${describe(this.#owner)} sets its schema, role or settings at the start of each transaction, ` +
        'and a cursor outside a transaction would read its rows over several: stream inside db.transaction().')
    }
    if (status === 'T' && !this.#localReady) {
      // pg sends queued queries in order: the set-up reaches the server before the cursor; if it fails, so does the cursor.
      this.#client.query(this.#local).catch(() => {})
      this.#localReady = true
    }
  }

  /** Sends a set-up text of this checkout; a failure rolls back what it began and fails like `prepare`. */
  async #setUp (text: string): Promise<unknown> {
    try {
      const result = await this.#client.query(text)
      this.#localReady = true
      return result
    } catch (err) {
      const lost = this.#noteLoss(err)
      if (lost) throw Object.assign(new DatasourceUnavailableError(this.#label()), { cause: err })
      // Not read from getTransactionStatus(): pg rejects on the error, before
      // the server's ready-for-query says the text's BEGIN left the transaction
      // failed. pg sends the rollback after that message; outside a
      // transaction it is a warning.
      await this.#client.query('rollback').catch(() => {})
      const reason = err instanceof Error ? err.message : String(err)
      throw Object.assign(new SessionError(`The transaction of a connection for ${describe(this.#owner)} could not be prepared (${text}): ${reason}.`), { cause: err })
    }
  }

  /**
   * Sends one statement; `named`: as a prepared statement when the session
   * gives it a name (only a text with parameters: pg sends one without them in
   * the simple protocol, which may hold several statements and cannot be prepared).
   */
  async #run<R> (sql: string, parameters: ReadonlyArray<unknown> | undefined, named = false, setUp?: SetUp): Promise<PostgresQueryResult<R>> {
    const name = named && parameters !== undefined && parameters.length > 0 ? this.session.statementName(sql, this.#prepared) : undefined
    try {
      if (setUp !== undefined) return await this.#sendWithSetUp<R>(sql, parameters, name, setUp)
      const query = name === undefined ? this.#client.query(sql, parameters as unknown[]) : this.#client.query({ name, text: sql, values: parameters as unknown[] })
      return await query as unknown as PostgresQueryResult<R>
    } catch (err) {
      if (err === this.#failed) throw err
      if (this.#noteLoss(err)) throw Object.assign(new DatasourceUnavailableError(this.#label()), { cause: err })
      if (name !== undefined && isStalePlan(err)) {
        // PostgreSQL refused at Bind, before running anything, and keeps
        // refusing that name on this connection: no more names here, and the
        // connection is destroyed on release. Outside a transaction the
        // statement is sent again unnamed; inside one the transaction has failed.
        this.session.distrust()
        if (this.#client.getTransactionStatus() === 'I') return await this.#run<R>(sql, parameters, false, this.#takeSetUp())
      }
      throw err
    }
  }

  /** The set-up still to send, taken: a statement sent again after failing with its set-up carries it again. */
  #takeSetUp (): SetUp | undefined {
    const setUp = this.#pending
    this.#pending = undefined
    return setUp
  }

  /** Gives the connection back; `destroy` (Kysely's own discard) closes it whatever its state. */
  release (destroy?: boolean): void {
    const lease = this.#lease
    if (lease === undefined) return
    this.#lease = undefined
    this.#owner = undefined
    this.#local = ''
    this.#pending = undefined
    this.#giveBack(lease, this.#discardReason(destroy === true))
  }

  #discardReason (asked: boolean): DiscardReason | undefined {
    if (asked) return 'asked'
    if (this.#lost) return 'lost'
    if (!this.session.trusted) return 'session'
    if (!settledIdle(this.#client)) return 'transaction'
    return undefined
  }

  /** Whether `err` (or an event before it) means the connection is gone; remembers it. */
  #noteLoss (err: unknown): boolean {
    if (isConnectionCode(err)) this.#lost = true
    return this.#lost
  }

  #label (): string {
    return quote(this.#owner?.name ?? this.#lease?.datasource ?? 'default')
  }

  // Under transaction pooling, destroying this connection would not end the
  // server session a session change lands in: PgBouncer hands that server
  // connection to its next client as it stands. Such a statement is not sent.
  #refusal (sql: string | undefined): Error | undefined {
    if (!this.#transactionPooling || (sql !== undefined && !changesSession(sql))) return undefined
    return new UnsupportedStatementError('This statement may change the session (a session SET or RESET, set_config(…, false), a temporary object, PREPARE, LISTEN, a session advisory lock, DO, CALL …), ' +
      'and under PgBouncer\'s transaction pooling (pgbouncer: \'transaction\') the change would stay on a server connection that other clients use next, so it was not sent. ' +
      'Inside a transaction use the forms that end with it: SET LOCAL, set_config(name, value, true), pg_advisory_xact_lock.')
  }

  #mismatch (): Error | undefined {
    // A Kysely kept past its db.connection() callback still holds this object:
    // the connection is idle in its pool now, or another checkout's, and its
    // session is whatever that one left (another instance's schema or role).
    if (this.#lease === undefined) {
      return new MismatchError('This connection was given back to its pool when the db.connection() (or transaction) that checked it out ended, so it may be idle or another checkout\'s now, ' +
        'with that one\'s session: the query was not sent. Run a kept connection\'s queries inside its callback.')
    }
    const current = this.#context()?.instance
    const owner = this.#owner
    if (current === owner || sameSession(current, owner)) return undefined
    return new MismatchError(`This transaction (or connection) belongs to ${describe(owner)}, which began it, but a query on it now runs as ${describe(current)}. ` +
      'A transaction stays with one instance: finish it before switching, or run the other instance\'s work outside it.')
  }
}
