import pg from 'pg'
import { InvalidOptionsError } from '../errors.js'
import type { TenancyContext } from '../context.js'
import { loadSqlParser, type ParseSql } from '../sql-parser.js'

/**
 * Extra session settings for the connections the routing pool hands out,
 * computed from the context at each checkout. Keys are PostgreSQL setting
 * names (custom ones need a dot: `tenancy.iid`); values are strings. A key
 * returned once and missing later is set to `''`, so no value outlives the
 * checkout that wanted it. Return the same object shape every time and keep it
 * cheap: it runs for every query outside a transaction.
 *
 * ```ts
 * // what row-level security policies read with current_setting('tenancy.iid', true)
 * const settings: SessionSettings = (context) => ({ 'tenancy.iid': String(context?.instance?.id ?? '') })
 * ```
 */
export type SessionSettings = (context: TenancyContext | undefined) => Readonly<Record<string, string>>

/** What a connection's session should carry, or carries. */
export interface SessionTarget {
  /** The only schema on `search_path`, or `null` for the server's default path. */
  readonly schema: string | null
  /** The role after `SET ROLE`, or `null` for the login role. */
  readonly role: string | null
  /** Extra settings; see {@link SessionSettings}. */
  readonly settings: Readonly<Record<string, string>>
}

const NO_SETTINGS: Readonly<Record<string, string>> = Object.freeze({})
const SETTING_NAME = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?$/

/** The session a checkout in `context` needs. */
export function sessionTarget (context: TenancyContext | undefined, settings?: SessionSettings): SessionTarget {
  const instance = context?.instance
  return {
    schema: instance?.schema ?? null,
    role: instance?.role ?? null,
    settings: settings ? settings(context) : NO_SETTINGS,
  }
}

// Statements whose effect outlives the transaction they run in, or that run
// code nobody can read here: prepared statements, LISTEN, a loaded library,
// a DO block or a procedure (which can do anything a session can).
const SESSION_STATEMENTS = new Set(['DiscardStmt', 'DoStmt', 'CallStmt', 'PrepareStmt', 'ExecuteStmt', 'DeallocateStmt', 'ListenStmt', 'LoadStmt'])
// Built-in functions with an effect on the session beyond the statement:
// session advisory locks, the random seed, pg_trgm's threshold, a dblink
// connection, a replication origin, or SQL given as text (which may call any
// of them). set_config is judged by its arguments.
const SESSION_FUNCTIONS = new Set([
  'pg_advisory_lock', 'pg_advisory_lock_shared', 'pg_try_advisory_lock', 'pg_try_advisory_lock_shared',
  'setseed', 'set_limit', 'dblink_connect', 'dblink_connect_u', 'pg_replication_origin_session_setup',
  'query_to_xml', 'query_to_xmlschema', 'query_to_xml_and_xmlschema', 'ts_stat', 'ts_rewrite',
  'crosstab', 'crosstab2', 'crosstab3', 'crosstab4',
])
// SET TRANSACTION and SET TRANSACTION SNAPSHOT end with the transaction; SET SESSION CHARACTERISTICS does not.
const TRANSACTION_SETS = new Set(['TRANSACTION', 'TRANSACTION SNAPSHOT'])
// DECLARE … WITH HOLD: the cursor survives the transaction (CURSOR_OPT_HOLD in parsenodes.h).
const CURSOR_OPT_HOLD = 0x20
// The session's own schema for temporary objects, by any of its names. A
// temporary table is found before the instance's own (pg_temp is searched
// first), so one left behind would shadow them for the next checkout.
const TEMPORARY_SCHEMA = /\bpg_temp(?:_\d+)?\b/i
// UPDATE pg_settings calls set_config(…, false) through a rule.
const SETTINGS_VIEW = 'pg_settings'

type Tree = Record<string, unknown>

function isTree (value: unknown): value is Tree {
  return value !== null && typeof value === 'object'
}

/** The node of a one-key wrapper such as `{ A_Const: {…} }`, when its key is `kind`. */
function nodeOf (value: unknown, kind: string): Tree | undefined {
  if (!isTree(value)) return undefined
  const node = value[kind]
  return isTree(node) ? node : undefined
}

function constantString (value: unknown): string | undefined {
  const sval = nodeOf(nodeOf(value, 'A_Const'), 'sval')?.sval
  return typeof sval === 'string' ? sval : undefined
}

function constantTrue (value: unknown): boolean {
  return nodeOf(nodeOf(value, 'A_Const'), 'boolval')?.boolval === true
}

function lastName (names: unknown): string {
  if (!Array.isArray(names) || names.length === 0) return ''
  const sval = nodeOf(names[names.length - 1], 'String')?.sval
  return typeof sval === 'string' ? sval.toLowerCase() : ''
}

/**
 * `set_config(name, value, true)` ends with the transaction, unless it points
 * `search_path` somewhere that cannot be read here (a parameter could be
 * `pg_temp`, and a table created then is temporary). Any other form (false,
 * a parameter, a named argument) may change the session.
 */
function setConfigChangesSession (call: Tree): boolean {
  const args = call.args
  if (!Array.isArray(args) || args.length !== 3 || !constantTrue(args[2])) return true
  const name = constantString(args[0])
  if (name === undefined) return true
  return name.toLowerCase() === 'search_path' && constantString(args[1]) === undefined
}

/** Whether any node of `tree`, at any depth, may change the session. */
function nodeChangesSession (tree: unknown): boolean {
  if (Array.isArray(tree)) return tree.some(nodeChangesSession)
  if (!isTree(tree)) return typeof tree === 'string' && TEMPORARY_SCHEMA.test(tree)
  for (const [key, value] of Object.entries(tree)) {
    if (SESSION_STATEMENTS.has(key)) return true
    if (key === 'relpersistence' && value === 't') return true
    if (key === 'FuncCall' && isTree(value)) {
      const name = lastName(value.funcname)
      if (SESSION_FUNCTIONS.has(name) || (name === 'set_config' && setConfigChangesSession(value))) return true
    }
    if ((key === 'UpdateStmt' || key === 'InsertStmt' || key === 'DeleteStmt' || key === 'MergeStmt') && isTree(value) &&
      isTree(value.relation) && value.relation.relname === SETTINGS_VIEW) return true
    if (nodeChangesSession(value)) return true
  }
  return false
}

/** Whether one top-level statement may leave the session changed after its transaction ends. */
function statementChangesSession (statement: unknown): boolean {
  const set = nodeOf(statement, 'VariableSetStmt')
  // SET LOCAL and SET TRANSACTION end with the transaction (outside one they do nothing).
  if (set) return !(set.is_local === true || (set.kind === 'VAR_SET_MULTI' && TRANSACTION_SETS.has(String(set.name)))) || nodeChangesSession(set.args)
  const cursor = nodeOf(statement, 'DeclareCursorStmt')
  if (cursor && typeof cursor.options === 'number' && (cursor.options & CURSOR_OPT_HOLD) !== 0) return true
  // Nested SETs (ALTER ROLE … SET, CREATE FUNCTION … SET) are not run now, so only the top level is read for them.
  return nodeChangesSession(statement)
}

let parse: ParseSql | undefined
// One SELECT, INSERT, UPDATE, DELETE or WITH statement (no ';' anywhere) can
// change the session only through a temporary table, an update of pg_settings
// or one of the functions above, and each of those needs one of these words
// in the text: an identifier cannot be split by comments or quotes, and only
// U&"…" could spell one otherwise. Such a text has the parser's verdict
// without being parsed, which keeps builder queries and long batches cheap.
const PLAIN_DML = /^\s*(?:select|insert|update|delete|with)\b[^;]*$/i
const SESSION_WORDS = /set_config|advisory_lock|setseed|set_limit|dblink|replication_origin|query_to_xml|ts_stat|ts_rewrite|crosstab|temp|pg_settings|u&/i
// Verdicts of parsed texts are remembered (the same texts come back); the
// bounds keep a stream of distinct texts from growing the map without end.
const MAX_VERDICTS = 2000
const MAX_REMEMBERED_CHARS = 4_000_000
const verdicts = new Map<string, boolean>()
let rememberedChars = 0

/**
 * Whether a text is one `SELECT`, `INSERT`, `UPDATE`, `DELETE` or `WITH`
 * statement with no `;` anywhere: it can neither begin nor end a transaction,
 * nor hold a second statement.
 */
export function singleDataStatement (text: string): boolean {
  return PLAIN_DML.test(text)
}

function remember (text: string, verdict: boolean): void {
  if (text.length > MAX_REMEMBERED_CHARS / 4) return
  for (const oldest of verdicts.keys()) {
    if (verdicts.size < MAX_VERDICTS && rememberedChars + text.length <= MAX_REMEMBERED_CHARS) break
    verdicts.delete(oldest)
    rememberedChars -= oldest.length
  }
  verdicts.set(text, verdict)
  rememberedChars += text.length
}

/**
 * Whether a statement text sent on a connection may leave its session
 * changed for the next checkout, as read by PostgreSQL's own parser: a
 * session `SET`/`RESET` (`SET LOCAL` and `SET TRANSACTION` are fine),
 * `DISCARD`, `DO`, `CALL`, `PREPARE`/`EXECUTE`/`DEALLOCATE`, `LISTEN`,
 * `LOAD`, a temporary object, a `WITH HOLD` cursor, `set_config` other than
 * `set_config('name', …, true)`, an update of `pg_settings`, a session
 * advisory lock or another built-in with a session effect, and any text the
 * parser cannot read (or before the parser is loaded). Comments, quoting,
 * schema qualification and several statements in one text do not hide any of
 * them. A single data statement that contains none of the words these need
 * is known not to change the session without parsing. What a user-defined
 * function does inside cannot be seen.
 *
 * ```ts
 * await SessionState.load()
 * changesSession('select 1; reset role') // true
 * changesSession('select set_config(\'tenancy.x\', $1, true)') // false
 * ```
 */
export function changesSession (text: string): boolean {
  if (parse === undefined) return true
  if (PLAIN_DML.test(text) && !SESSION_WORDS.test(text)) return false
  let verdict = verdicts.get(text)
  if (verdict !== undefined) return verdict
  try {
    const tree = parse(text) as { stmts?: Array<{ stmt?: unknown }> }
    // libpg-query always gives `stmts` (empty for a text of comments only); a tree without it is not read as safe.
    verdict = tree.stmts === undefined || tree.stmts.some((entry) => statementChangesSession(entry.stmt))
  } catch {
    verdict = true
  }
  remember(text, verdict)
  return verdict
}

/**
 * What a statement text does to the transaction around it: `start` a single
 * `BEGIN` / `START TRANSACTION`, `end` a single statement that ends one
 * (`COMMIT`, `ROLLBACK`, `END`, `ABORT`, `PREPARE TRANSACTION`, `… AND CHAIN`
 * included), `several` a text of several statements with one of those among
 * them (or a text the parser cannot read), `none` anything else (savepoints
 * included). The parser must be loaded ({@link SessionState.load}).
 *
 * ```ts
 * transactionControl('start transaction isolation level serializable') // 'start'
 * transactionControl('select 1; commit') // 'several'
 * ```
 */
export type TransactionControl = 'none' | 'start' | 'end' | 'several'

const SAVEPOINT_KINDS = new Set(['TRANS_STMT_SAVEPOINT', 'TRANS_STMT_RELEASE', 'TRANS_STMT_ROLLBACK_TO'])
const START_KINDS = new Set(['TRANS_STMT_BEGIN', 'TRANS_STMT_START'])
const controls = new Map<string, TransactionControl>()

/** See {@link TransactionControl}. */
export function transactionControl (text: string): TransactionControl {
  if (PLAIN_DML.test(text)) return 'none'
  let control = controls.get(text)
  if (control !== undefined) return control
  control = 'several'
  if (parse !== undefined) {
    try {
      const statements = ((parse(text) as { stmts?: Array<{ stmt?: unknown }> }).stmts ?? []).map((entry) => nodeOf(entry.stmt, 'TransactionStmt'))
      const kinds = statements.map((node) => node === undefined || SAVEPOINT_KINDS.has(String(node.kind)) ? 'none' : START_KINDS.has(String(node.kind)) ? 'start' : 'end')
      control = kinds.length === 1 ? kinds[0]! : kinds.every((kind) => kind === 'none') ? 'none' : 'several'
    } catch {}
  }
  if (controls.size >= MAX_VERDICTS) controls.clear()
  if (text.length <= 10_000) controls.set(text, control)
  return control
}

/**
 * The statement that gives the current transaction what `target` needs, with
 * settings that end with it (`set_config(…, true)`: `SET LOCAL`), or `''` when
 * it needs nothing: for PgBouncer's transaction pooling, where no session
 * state survives the transaction. Every setting key is set, `''` included,
 * since the server session may have been anyone's.
 *
 * ```ts
 * localChanges({ schema: 'tenant_acme', role: 'tenant_acme', settings: { 'tenancy.iid': '3' } })
 * // select set_config('role', 'tenant_acme', true), set_config('search_path', '"tenant_acme"', true), set_config('tenancy.iid', '3', true)
 * ```
 */
export function localChanges (target: SessionTarget): string {
  const calls: string[] = []
  if (target.role !== null) calls.push(`set_config('role', ${pg.escapeLiteral(target.role)}, true)`)
  if (target.schema !== null) calls.push(`set_config('search_path', ${pg.escapeLiteral(pg.escapeIdentifier(target.schema))}, true)`)
  for (const name of Object.keys(target.settings)) {
    const value = target.settings[name]
    if (typeof value !== 'string') throw new InvalidOptionsError(`the session setting ${JSON.stringify(name)} must be a string, not ${typeof value}`)
    if (!SETTING_NAME.test(name)) throw new InvalidOptionsError(`${JSON.stringify(name)} is not a valid session setting name`)
    calls.push(`set_config(${pg.escapeLiteral(name)}, ${pg.escapeLiteral(value)}, true)`)
  }
  return calls.length === 0 ? '' : `select ${calls.join(', ')}`
}

// Statement names are process-wide, so every routing pool that uses a
// connection gives a text the same name: pg refuses one name for two texts on
// one connection. A name is never reused; past the bound, new texts run unnamed.
const MAX_NAMED_TEXTS = 10_000
const MAX_NAMED_CHARS = 10_000
const statementNames = new Map<string, string>()

function nameOf (text: string): string | undefined {
  let name = statementNames.get(text)
  if (name === undefined && statementNames.size < MAX_NAMED_TEXTS && text.length <= MAX_NAMED_CHARS) {
    name = `tenancy_${statementNames.size + 1}`
    statementNames.set(text, name)
  }
  return name
}

/**
 * What one pooled connection's session carries, as far as this library set it.
 * A new connection starts at the server defaults, so the shared-mode path
 * (no schema, no role, no settings) never costs a round trip; a checkout that
 * needs something else sends only the differences, in one round trip.
 *
 * Every statement text the application sends is {@link observe}d; after one
 * that may change the session (see {@link changesSession}) the state is no
 * longer {@link trusted}, and such a connection must be destroyed, not reused:
 * no statement could repair it (a temporary table, a prepared statement, a
 * lock or a listener outlive any `RESET`).
 *
 * ```ts
 * await SessionState.load()
 * const state = new SessionState()
 * const sql = state.changesTo({ schema: 'tenant_acme', role: null, settings: {} })
 * // 'SET search_path TO "tenant_acme"'
 * if (sql) { await client.query(sql); state.applied(target) }
 * state.observe('select 1; reset role')
 * state.trusted // false: destroy the connection on release
 * ```
 */
export class SessionState {
  #schema: string | null = null
  #role: string | null = null
  #settings: Readonly<Record<string, string>> = NO_SETTINGS
  #trusted = true
  #prepared: Set<string> | undefined

  /** Loads PostgreSQL's parser, which {@link observe} needs; until then every statement counts as a session change. */
  static async load (): Promise<void> {
    if (parse !== undefined) return
    const loaded = await loadSqlParser()
    // The first parse is slow (the module's first calls): pay it here, before
    // any connection is checked out, rather than inside a request's query.
    loaded('select set_config($1, $2, true)')
    parse = loaded
  }

  /** Whether {@link load} has completed. */
  static get loaded (): boolean {
    return parse !== undefined
  }

  /** The SQL (simple protocol, several statements) that turns this session into `target`, or `''` when it already is. */
  changesTo (target: SessionTarget): string {
    return this.changeStatements(target).join('; ')
  }

  /** The statements of {@link changesTo}, one by one (none when the session already is `target`). */
  changeStatements (target: SessionTarget): string[] {
    const statements: string[] = []
    if (target.schema === this.#schema && target.role === this.#role && target.settings === this.#settings) return statements
    if (target.role !== this.#role) {
      statements.push(target.role === null ? 'RESET ROLE' : `SET ROLE ${pg.escapeIdentifier(target.role)}`)
    }
    if (target.schema !== this.#schema) {
      statements.push(target.schema === null ? 'RESET search_path' : `SET search_path TO ${pg.escapeIdentifier(target.schema)}`)
    }
    const calls: string[] = []
    for (const name of Object.keys(target.settings)) {
      const value = target.settings[name]
      if (typeof value !== 'string') throw new InvalidOptionsError(`the session setting ${JSON.stringify(name)} must be a string, not ${typeof value}`)
      if (this.#settings[name] === value) continue
      if (!SETTING_NAME.test(name)) throw new InvalidOptionsError(`${JSON.stringify(name)} is not a valid session setting name`)
      calls.push(`set_config(${pg.escapeLiteral(name)}, ${pg.escapeLiteral(value)}, false)`)
    }
    for (const name of Object.keys(this.#settings)) {
      if (!(name in target.settings) && this.#settings[name] !== '') calls.push(`set_config(${pg.escapeLiteral(name)}, '', false)`)
    }
    if (calls.length > 0) statements.push(`SELECT ${calls.join(', ')}`)
    return statements
  }

  /**
   * Whether the session already is `target`, so that {@link changesTo} would
   * give `''`, without building any SQL: what the pool manager asks of each
   * idle connection to hand out one that needs no round trip.
   */
  holds (target: SessionTarget): boolean {
    if (target.schema !== this.#schema || target.role !== this.#role) return false
    if (target.settings === this.#settings) return true
    for (const name of Object.keys(target.settings)) if (this.#settings[name] !== target.settings[name]) return false
    for (const name of Object.keys(this.#settings)) if (!(name in target.settings) && this.#settings[name] !== '') return false
    return true
  }

  /** Records that `target` was applied (or already held). */
  applied (target: SessionTarget): void {
    this.#schema = target.schema
    this.#role = target.role
    // Keys once set stay remembered so they are cleared when a later target drops them.
    if (target.settings !== this.#settings) {
      const merged: Record<string, string> = {}
      for (const name of Object.keys(this.#settings)) merged[name] = ''
      this.#settings = Object.keys(merged).length === 0 ? target.settings : Object.assign(merged, target.settings)
    }
  }

  /**
   * Notes a statement text the application sends on the connection (`undefined`
   * when its text is not known): one that may change the session makes the
   * state untrusted for good.
   */
  observe (sql: string | undefined): void {
    if (this.#trusted && (sql === undefined || changesSession(sql))) this.#trusted = false
  }

  /**
   * The name to send `text` under as a prepared statement on this connection
   * (`preparedStatements`), so that PostgreSQL parses and plans it once per
   * connection rather than once per query; `undefined` to send it unnamed:
   * once the session is not {@link trusted} (a `DISCARD` or `DEALLOCATE` may
   * have dropped what was prepared), or when `max` other texts are prepared
   * on it already. The first use of a name prepares it.
   *
   * ```ts
   * state.statementName('select * from "student" where "student"."iid" = $1', 100) // 'tenancy_1'
   * ```
   */
  statementName (text: string, max: number): string | undefined {
    if (!this.#trusted) return undefined
    const name = nameOf(text)
    if (name === undefined) return undefined
    const prepared = this.#prepared ??= new Set()
    if (!prepared.has(name)) {
      if (prepared.size >= max) return undefined
      prepared.add(name)
    }
    return name
  }

  /** After a prepared statement's plan could not be used again (see RoutedClient): no more names on this connection, which is destroyed on release. */
  distrust (): void {
    this.#trusted = false
  }

  /** False once a statement may have changed the session: the connection must then be destroyed. */
  get trusted (): boolean {
    return this.#trusted
  }
}
