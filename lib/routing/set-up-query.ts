import pg from 'pg'

/** What pg's Query is handed as the connection: the few protocol writes used here. */
interface Connection {
  query (text: string): void
  parse (config: { text: string, name?: string, types?: unknown[] }): void
  bind (config: { portal?: string, statement?: string, values?: unknown[] }): void
  execute (config: { portal?: string, rows?: number }): void
  stream: { cork?: () => void, uncork?: () => void }
  parsedStatements: Record<string, string | undefined>
  submittedNamedStatements: Record<string, string | undefined>
}

/** pg's Query as this file uses it: the protocol handlers pg calls on the active query, which @types/pg leaves out. */
interface QueryBase {
  readonly text: string
  readonly name?: string
  submit (connection: Connection): Error | null
  requiresPreparation (): boolean
  handleRowDescription (msg: unknown): void
  handleDataRow (msg: unknown): void
  handleCommandComplete (msg: unknown, connection: unknown): void
  handleError (err: Error, connection: unknown): void
}

const Query = pg.Query as unknown as new (config: object) => QueryBase

/**
 * Where a {@link SetUpQuery} failed: `set-up` in a session statement (the
 * statement did not run), `statement` in the statement itself, by the server
 * (the session statements were rolled back with it), `unsent` before the
 * statement was sent (pg could not serialize a parameter; pg then syncs, so
 * the session statements do run).
 */
export type SetUpFailure = 'set-up' | 'statement' | 'unsent'

/**
 * One statement sent behind the session statements its checkout needs, in
 * the same round trip. With parameters (the extended protocol): each session
 * statement as Parse, Bind and Execute with no Sync after it, then the
 * statement's own messages and one Sync. Without (the simple protocol, as pg
 * sends such a text): one text, the session statements, then the statement.
 * Either way the server runs them in order in one implicit transaction, so
 *
 * - when a session statement fails, the statement is not run at all (the
 *   server skips every message up to the Sync);
 * - when the statement fails, the session statements are rolled back with it,
 *   and the session is as it was before;
 * - when both succeed, the session carries the new state and the statement's
 *   effects are committed at the Sync, as if it had run on its own.
 *
 * Only for one data statement that does not begin or end a transaction (the
 * routing pool sends anything else after its set-up has been answered). The
 * session statements' replies are consumed here; the result is the
 * statement's alone, as pg gives it for the statement on its own.
 *
 * ```ts
 * client.query(new SetUpQuery(['SET search_path TO "tenant_acme"'], 'select * from "item" where "id" = $1', [1], undefined, callback))
 * // one round trip: Parse/Bind/Execute of the SET, Parse/Bind/Describe/Execute of the select, Sync
 * ```
 */
export class SetUpQuery extends Query {
  readonly #setUp: readonly string[]
  // Replies of the session statements still to come; 0 once the statement's own begin.
  #remaining: number
  #parsedBefore = false
  #submitting = false
  /** Where it failed, once it has; `undefined` while it has not. */
  failure: SetUpFailure | undefined

  constructor (setUp: readonly string[], text: string, values: unknown[] | undefined, name: string | undefined, callback: (err: Error | null, result: unknown) => void) {
    super({ text, values, name, callback })
    this.#setUp = setUp
    this.#remaining = setUp.length
  }

  override submit (connection: Connection): Error | null {
    // The checks pg's own submit makes before it writes anything, made first:
    // the session statements must never reach the server without the Sync
    // that the statement's messages end with.
    const name = this.name
    const previous = name === undefined ? undefined : connection.parsedStatements[name] ?? connection.submittedNamedStatements[name]
    if (previous !== undefined && previous !== this.text) return new Error(`Prepared statements must be unique - '${name ?? ''}' was used for a different statement`)
    this.#parsedBefore = name !== undefined && connection.parsedStatements[name] !== undefined
    if (!this.requiresPreparation()) {
      // The statement is one data statement with no ';' (the routing pool's
      // condition), so the text holds exactly the session statements and it.
      connection.query(`${this.#setUp.join('; ')}; ${this.text}`)
      return null
    }
    connection.stream.cork?.()
    this.#submitting = true
    try {
      for (const statement of this.#setUp) {
        connection.parse({ text: statement, types: [] })
        connection.bind({ values: [] })
        connection.execute({})
      }
      return super.submit(connection)
    } finally {
      this.#submitting = false
      connection.stream.uncork?.()
    }
  }

  // A session statement's row description comes only in the simple protocol (the extended one sends no Describe for them).
  override handleRowDescription (msg: unknown): void {
    if (this.#remaining === 0) super.handleRowDescription(msg)
  }

  override handleDataRow (msg: unknown): void {
    if (this.#remaining === 0) super.handleDataRow(msg)
  }

  override handleCommandComplete (msg: unknown, connection: unknown): void {
    if (this.#remaining > 0) {
      this.#remaining--
      return
    }
    super.handleCommandComplete(msg, connection)
  }

  override handleError (err: Error, connection: Connection): void {
    this.failure ??= this.#submitting ? 'unsent' : this.#remaining > 0 ? 'set-up' : 'statement'
    // pg marks a named statement as parsed at the first ParseComplete of the
    // round trip, which was a session statement's: a name whose own Parse
    // failed (or never ran) must be parsed again next time.
    const name = this.name
    if (name !== undefined && !this.#parsedBefore) {
      delete connection.parsedStatements[name]
      delete connection.submittedNamedStatements[name]
    }
    super.handleError(err, connection)
  }
}
