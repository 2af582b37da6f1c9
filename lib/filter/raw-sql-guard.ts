import { PostgresQueryCompiler, type FunctionNode, type OperationNode, type RawNode, type TableNode } from 'kysely'
import { RawSqlError, quote } from '../errors.js'
import { loadSqlParser, loadSqlScanner, type ParseSql, type ScanSql } from '../sql-parser.js'
import type { TenantTables } from './tenant-tables.js'

const RUNS_TEXT = 'runs SQL given to it as text'
const READS_NAMED = 'reads a table named by a value'
const READS_ALL = 'reads every table of a schema or database'

/**
 * Functions that run SQL given as text or read rows of a table named by a
 * value, so that no table appears in the statement: PostgreSQL 18's own
 * (pg_proc, those that run a query through SPI or read a relation's rows),
 * then those of the extensions shipped with it. `dblink*` is matched by prefix.
 */
const REFUSED_FUNCTIONS: ReadonlyMap<string, string> = new Map([
  ['query_to_xml', RUNS_TEXT], ['query_to_xml_and_xmlschema', RUNS_TEXT], ['query_to_xmlschema', RUNS_TEXT],
  ['ts_stat', RUNS_TEXT],
  // ts_rewrite(query, select): only the two-argument form runs its text.
  ['ts_rewrite', RUNS_TEXT],
  ['table_to_xml', READS_NAMED], ['table_to_xml_and_xmlschema', READS_NAMED], ['table_to_xmlschema', READS_NAMED],
  ['cursor_to_xml', 'reads a cursor declared earlier, in another context'], ['cursor_to_xmlschema', 'reads a cursor declared earlier, in another context'],
  ['schema_to_xml', READS_ALL], ['schema_to_xml_and_xmlschema', READS_ALL], ['schema_to_xmlschema', READS_ALL],
  ['database_to_xml', READS_ALL], ['database_to_xml_and_xmlschema', READS_ALL], ['database_to_xmlschema', READS_ALL],
  ['pg_logical_slot_get_changes', 'reads the changes of every table'], ['pg_logical_slot_peek_changes', 'reads the changes of every table'],
  ['pg_logical_slot_get_binary_changes', 'reads the changes of every table'], ['pg_logical_slot_peek_binary_changes', 'reads the changes of every table'],
  // tablefunc, xml2, pageinspect
  ['crosstab', RUNS_TEXT], ['crosstab2', RUNS_TEXT], ['crosstab3', RUNS_TEXT], ['crosstab4', RUNS_TEXT],
  ['connectby', READS_NAMED], ['xpath_table', RUNS_TEXT], ['get_raw_page', READS_NAMED],
])
const DBLINK = 'runs SQL given to it as text, on another connection'

/** Statements that run SQL the check cannot read, or that was checked in another context. */
const REFUSED_STATEMENTS: ReadonlyMap<string, readonly [string, string]> = new Map([
  ['DoStmt', ['DO', 'runs code given as text']],
  ['PrepareStmt', ['PREPARE', 'keeps a statement for EXECUTE, which may run in another context']],
  ['ExecuteStmt', ['EXECUTE', 'runs a statement prepared earlier, checked in another context or never']],
  ['FetchStmt', ['FETCH or MOVE', 'reads a cursor declared earlier, in another context']],
  ['CreateFunctionStmt', ['CREATE FUNCTION or PROCEDURE with a body in a string', 'holds SQL given as text']],
])

/** Catalog views that show column values (most common values, histograms) of every row of a table. */
const STATISTICS: ReadonlySet<string> = new Set(['pg_stats', 'pg_stats_ext', 'pg_stats_ext_exprs', 'pg_statistic', 'pg_statistic_ext_data'])
const SHOWS_VALUES = "shows column values of every instance's rows"

interface Relation { readonly schema: string | undefined, readonly name: string }
/** Why something is refused whatever the tenant tables are: `Raw SQL <what>, which <why>`. */
interface Construct { readonly what: string, readonly why: string }
/** What one text holds, independent of the tenant tables. */
interface Summary { readonly relations: readonly Relation[], readonly construct: Construct | null }

function functionRefusal (name: string, args: number): Construct | null {
  const why = name.startsWith('dblink') ? DBLINK : REFUSED_FUNCTIONS.get(name)
  if (why === undefined || (name === 'ts_rewrite' && args !== 2)) return null
  return { what: `calls ${name}()`, why }
}

function statisticsRefusal (name: string, schema: string | undefined): Construct | null {
  return STATISTICS.has(name) && (schema === undefined || schema === 'pg_catalog') ? { what: `reads ${name}`, why: SHOWS_VALUES } : null
}

function sval (node: unknown): string | undefined {
  const value = (node as { String?: { sval?: unknown } } | null)?.String?.sval
  // PostgreSQL's parser names every function with String nodes; anything else
  // would be another parser's tree, read as no name rather than guessed at.
  return typeof value === 'string' ? value : undefined
}

/** The relations a parse tree reads or writes, and the first construct in it that is refused whatever the tables. */
function inspect (tree: unknown, relations: Relation[], found: { construct: Construct | null }): void {
  if (Array.isArray(tree)) {
    for (const item of tree) inspect(item, relations, found)
    return
  }
  if (tree === null || typeof tree !== 'object') return
  for (const [key, value] of Object.entries(tree)) {
    if (value === null || typeof value !== 'object') continue
    if (key === 'RangeVar' || (key === 'relation' && typeof (value as { relname?: unknown }).relname === 'string')) {
      // INSERT / UPDATE / DELETE / COPY targets are bare RangeVar bodies.
      const { schemaname, relname } = value as { schemaname?: string, relname?: string }
      if (typeof relname === 'string') {
        relations.push({ schema: schemaname, name: relname })
        found.construct ??= statisticsRefusal(relname, schemaname)
      }
    } else if (key === 'FuncCall') {
      const { funcname, args } = value as { funcname?: unknown[], args?: unknown[] }
      const name = sval(funcname?.at(-1))
      if (name !== undefined) found.construct ??= functionRefusal(name, args?.length ?? 0)
    } else if (REFUSED_STATEMENTS.has(key)) {
      // A function whose body is parsed (BEGIN ATOMIC, RETURN) is read like any statement.
      const stringBody = key !== 'CreateFunctionStmt' ||
        ((value as { options?: unknown[] }).options ?? []).some((option) => (option as { DefElem?: { defname?: string } }).DefElem?.defname === 'as')
      if (stringBody) {
        const [what, why] = REFUSED_STATEMENTS.get(key)!
        found.construct ??= { what: `uses ${what}`, why }
      }
    }
    inspect(value, relations, found)
  }
}

const NAMES: ReadonlySet<string> = new Set(['IdentifierNode', 'SchemableIdentifierNode', 'ReferenceNode', 'ColumnNode', 'TableNode'])
const SIMPLE_FUNCTION = /^(?:[A-Za-z_][A-Za-z0-9_$]*\.)?([A-Za-z_][A-Za-z0-9_$]*)$/
const CACHE_SIZE = 1000

/**
 * The `strict` check. It refuses, with `TENANCY_RAW_SQL`, a raw statement
 * (`sql\`…\``, which the tenant filter cannot rewrite) that names a tenant
 * table, and whatever reads rows without naming their table in the
 * statement: functions that run SQL given as text or read a table named by a
 * value (`query_to_xml`, `table_to_xml`, `ts_stat`, `dblink`, …), `DO`,
 * `PREPARE` / `EXECUTE`, `FETCH` / `MOVE`, `CREATE FUNCTION` with a string
 * body, and the statistics views (`pg_stats`, …). Names come from PostgreSQL's
 * own parser (`libpg-query`), so quoting, comments and schema qualifiers
 * cannot hide them. A CTE named like a tenant table counts as the table:
 * refusing too much is the safe side. Statements the parser cannot read go
 * through: the server rejects them too. Functions the application defines
 * (and `CALL`) are not looked into: confining what they read is row-level
 * security's job.
 *
 * ```ts
 * const guard = await RawSqlGuard.load(tables)
 * new InstanceFilterPlugin({ tables, rawSqlGuard: guard })
 * await sql`select * from "student"`.execute(db)                                 // throws TENANCY_RAW_SQL outside unscoped()
 * await sql`select query_to_xml('select * from student', true, false, '')`.execute(db) // throws TENANCY_RAW_SQL
 * ```
 */
export class RawSqlGuard {
  readonly #tables: () => TenantTables
  readonly #parse: ParseSql
  readonly #scan: ScanSql
  readonly #compiler = new PostgresQueryCompiler()
  // Raw texts are usually a handful of constants: what each holds is
  // remembered (it does not depend on the tenant tables, which are looked up
  // on every check, so a table discovered later is refused at once).
  readonly #statements = new Map<string, Summary>()
  readonly #fragments = new Map<string, Summary>()

  private constructor (tables: TenantTables | (() => TenantTables), parse: ParseSql, scan: ScanSql) {
    this.#tables = typeof tables === 'function' ? tables : () => tables
    this.#parse = parse
    this.#scan = scan
  }

  /** Loads the parser and returns a guard for `tables` (or a function that returns the current ones). */
  static async load (tables: TenantTables | (() => TenantTables)): Promise<RawSqlGuard> {
    return new RawSqlGuard(tables, await loadSqlParser(), await loadSqlScanner())
  }

  /**
   * Throws `TENANCY_RAW_SQL` when the raw statement `node` names a tenant
   * table or holds anything listed above. The plugin calls it for every
   * statement that is a `RawNode` as a whole.
   */
  check (node: RawNode): void {
    // Compiled, so that identifiers given as sql.table()/sql.ref() are in the text.
    const { sql } = this.#compiler.compileQuery(node, { queryId: 'raw-sql-guard' } as never)
    const summary = this.#statement(sql)
    if (summary.construct !== null) refuse(summary.construct)
    const table = this.#tenantTable(summary)
    if (table !== null) throw new RawSqlError(quote(table))
  }

  /**
   * Throws `TENANCY_RAW_SQL` for what a builder query (`selectFrom`, …,
   * before the filter rewrites it) holds that the filter cannot confine: a
   * function of the list above called through `eb.fn(…)`; raw fragments
   * (`sql\`…\`` as a value, condition, selection or table) that call one,
   * name a tenant table in a subquery or as `sql.table(…)`, end the statement
   * (`;`) or comment out its rest (`--`, an unterminated quote); and the
   * statistics views as tables. A raw fragment that names a tenant table
   * only as an identifier (`sql\`student\`` as a table) is not seen.
   *
   * ```ts
   * guard.checkQuery(db.selectFrom('country').select((eb) => eb.fn('query_to_xml', [sql.lit('select * from student'), sql.lit(true), sql.lit(false), sql.lit('')]).as('x')).toOperationNode())
   * // throws TENANCY_RAW_SQL: Raw SQL calls query_to_xml(), which runs SQL given to it as text, …
   * ```
   */
  checkQuery (node: OperationNode): void {
    this.#walk(node)
  }

  #walk (node: OperationNode): void {
    switch (node.kind) {
      // Their values are the application's data, not nodes.
      case 'ValueNode':
      case 'PrimitiveValueListNode':
        return
      case 'FunctionNode':
      case 'AggregateFunctionNode':
        this.#checkFunction(node as FunctionNode)
        break
      case 'RawNode':
        this.#checkFragment(node as RawNode)
        break
      case 'TableNode': {
        const { identifier, schema } = (node as TableNode).table
        const construct = statisticsRefusal(identifier.name, schema?.name)
        if (construct !== null) refuse(construct)
        return
      }
    }
    for (const key in node) {
      const value = (node as unknown as Record<string, unknown>)[key]
      if (value === null || typeof value !== 'object') continue
      if (Array.isArray(value)) {
        for (const item of value) {
          if (item !== null && typeof item === 'object' && typeof (item as OperationNode).kind === 'string') this.#walk(item as OperationNode)
        }
      } else if (typeof (value as OperationNode).kind === 'string') {
        this.#walk(value as OperationNode)
      }
    }
  }

  #checkFunction (node: FunctionNode): void {
    // Kysely writes the name as it is given: anything but a plain name is read as raw SQL.
    const simple = SIMPLE_FUNCTION.exec(node.func)
    if (simple !== null) {
      // A FunctionNode always has its arguments, an AggregateFunctionNode its aggregated.
      const args = (node as { arguments?: readonly unknown[], aggregated?: readonly unknown[] })
      const construct = functionRefusal(simple[1]!.toLowerCase(), (args.arguments ?? args.aggregated)!.length)
      if (construct !== null) refuse(construct)
      return
    }
    this.#checkText(`${node.func}()`)
  }

  #checkFragment (node: RawNode): void {
    const tables = this.#tables()
    for (const parameter of node.parameters) {
      if (parameter.kind !== 'TableNode') continue
      // A table given to raw SQL (sql.table()) is in no place the filter confines.
      const { identifier, schema } = (parameter as TableNode).table
      if (tables.kind(identifier.name, schema?.name) !== undefined) throw new RawSqlError(quote(schema === undefined ? identifier.name : `${schema.name}.${identifier.name}`))
    }
    // Names given as parameters (sql.id(), sql.ref(), sql.table()) are part of
    // the text; a query given as a parameter is a builder query, which the
    // filter confines, and a value is data: both stand as a placeholder.
    let text = ''
    node.sqlFragments.forEach((fragment, i) => {
      text += fragment
      const parameter = node.parameters[i]
      if (parameter === undefined) return
      text += NAMES.has(parameter.kind) ? this.#compiler.compileQuery(parameter as never, { queryId: 'raw-sql-guard' } as never).sql : '$0'
    })
    this.#checkText(text)
  }

  #checkText (text: string): void {
    const summary = this.#fragment(text)
    if (summary.construct !== null) refuse(summary.construct)
    const table = this.#tenantTable(summary)
    if (table !== null) throw new RawSqlError(quote(table))
  }

  #tenantTable (summary: Summary): string | null {
    const tables = this.#tables()
    for (const { schema, name } of summary.relations) {
      if (tables.kind(name, schema) !== undefined) return schema === undefined ? name : `${schema}.${name}`
    }
    return null
  }

  #statement (text: string): Summary {
    let summary = this.#statements.get(text)
    if (summary !== undefined) return summary
    let tree: unknown
    try {
      tree = this.#parse(text)
    } catch {
      tree = undefined
    }
    const relations: Relation[] = []
    const found = { construct: null as Construct | null }
    inspect(tree, relations, found)
    summary = { relations, construct: found.construct }
    remember(this.#statements, text, summary)
    return summary
  }

  /** A piece of a builder query: read token by token, then, where it parses as an expression, as a tree. */
  #fragment (text: string): Summary {
    let summary = this.#fragments.get(text)
    if (summary !== undefined) return summary
    const relations: Relation[] = []
    const found = { construct: null as Construct | null }
    let tokens: ReturnType<ScanSql>['tokens'] | undefined
    try {
      tokens = this.#scan(text).tokens
    } catch {
      found.construct = { what: 'inside a query builder cannot be read (an unterminated quote or comment)', why: 'may hide the rest of the statement' }
    }
    for (const token of tokens ?? []) {
      if (found.construct !== null) break
      if (token.text === ';') {
        found.construct = { what: 'inside a query builder ends the statement (;)', why: 'would run what follows as another statement' }
      } else if (token.tokenName === 'SQL_COMMENT') {
        found.construct = { what: 'inside a query builder holds a -- comment', why: 'hides the rest of the statement' }
      } else if (token.tokenName === 'IDENT') {
        const name = token.text.startsWith('"') ? token.text.slice(1, -1).replaceAll('""', '"') : token.text.toLowerCase()
        // ts_rewrite is refused by its argument count, which only the tree gives.
        if (name !== 'ts_rewrite') found.construct = functionRefusal(name, 0) ?? statisticsRefusal(name, undefined)
      }
    }
    if (found.construct === null) {
      let tree: unknown
      try {
        tree = this.#parse(`select ${text}`)
      } catch {
        tree = undefined
      }
      inspect(tree, relations, found)
    }
    summary = { relations, construct: found.construct }
    remember(this.#fragments, text, summary)
    return summary
  }
}

function remember (cache: Map<string, Summary>, text: string, summary: Summary): void {
  // Reached after 1,000 texts: what it bounds is memory, which no answer shows.
  if (cache.size >= CACHE_SIZE) cache.clear()
  cache.set(text, summary)
}

function refuse (construct: Construct): never {
  const err = new RawSqlError(quote(construct.what))
  err.message = `Raw SQL ${construct.what}, which ${construct.why}, so what it reads cannot be confined to an instance. Use the query builder, or unscoped() with an explicit iid.`
  throw err
}
