import { PostgresQueryCompiler, type RawNode } from 'kysely'
import { RawSqlError, quote } from '../errors.js'
import { loadSqlParser, type ParseSql } from '../sql-parser.js'
import type { TenantTables } from './tenant-tables.js'

/** Every `schema.table` (or `table`) a parse tree reads or writes. */
function collectRelations (tree: unknown, out: Array<{ schema: string | undefined, name: string }>): void {
  if (Array.isArray(tree)) {
    for (const item of tree) collectRelations(item, out)
    return
  }
  if (tree === null || typeof tree !== 'object') return
  for (const [key, value] of Object.entries(tree)) {
    if (key === 'RangeVar' && value !== null && typeof value === 'object') {
      const { schemaname, relname } = value as { schemaname?: string, relname?: string }
      if (typeof relname === 'string') out.push({ schema: schemaname, name: relname })
    } else if (key === 'relation' && value !== null && typeof value === 'object' && typeof (value as { relname?: unknown }).relname === 'string') {
      // INSERT / UPDATE / DELETE / COPY targets are bare RangeVar bodies.
      const { schemaname, relname } = value as { schemaname?: string, relname: string }
      out.push({ schema: schemaname, name: relname })
    }
    collectRelations(value, out)
  }
}

/**
 * The `strict` check: refuses a raw statement (`sql\`…\``, which the tenant
 * filter cannot rewrite) that names a tenant table, with `TENANCY_RAW_SQL`.
 * Table names come from PostgreSQL's own parser (`libpg-query`), so quoting,
 * comments and schema qualifiers cannot hide a table. A CTE named like a
 * tenant table counts as the table: refusing too much is the safe side.
 * Statements the parser cannot read go through: the server rejects them too.
 *
 * ```ts
 * const guard = await RawSqlGuard.load(tables)
 * new InstanceFilterPlugin({ tables, rawSqlGuard: guard })
 * await sql`select * from "student"`.execute(db)   // throws TENANCY_RAW_SQL outside unscoped()
 * ```
 */
export class RawSqlGuard {
  readonly #tables: () => TenantTables
  readonly #parse: ParseSql
  readonly #compiler = new PostgresQueryCompiler()
  // Raw statements are usually a handful of constant texts: remember verdicts,
  // for as long as the tenant tables they were reached with are the current ones.
  readonly #verdicts = new Map<string, string | null>()
  #verdictsOf: TenantTables | undefined

  private constructor (tables: TenantTables | (() => TenantTables), parse: ParseSql) {
    this.#tables = typeof tables === 'function' ? tables : () => tables
    this.#parse = parse
  }

  /** Loads the parser and returns a guard for `tables` (or a function that returns the current ones). */
  static async load (tables: TenantTables | (() => TenantTables)): Promise<RawSqlGuard> {
    return new RawSqlGuard(tables, await loadSqlParser())
  }

  /** The first tenant table `text` names, or `null`. */
  tenantTableIn (text: string): string | null {
    const tables = this.#tables()
    if (tables !== this.#verdictsOf) {
      this.#verdicts.clear()
      this.#verdictsOf = tables
    }
    let verdict = this.#verdicts.get(text)
    if (verdict !== undefined) return verdict
    verdict = null
    let tree: unknown
    try {
      tree = this.#parse(text)
    } catch {
      tree = undefined
    }
    const relations: Array<{ schema: string | undefined, name: string }> = []
    collectRelations(tree, relations)
    for (const { schema, name } of relations) {
      if (tables.kind(name, schema) !== undefined) {
        verdict = schema === undefined ? name : `${schema}.${name}`
        break
      }
    }
    if (this.#verdicts.size >= 1000) this.#verdicts.clear()
    this.#verdicts.set(text, verdict)
    return verdict
  }

  /** Throws `TENANCY_RAW_SQL` when the raw statement `node` names a tenant table. */
  check (node: RawNode): void {
    // Compiled, so that identifiers given as sql.table()/sql.ref() are in the text.
    const { sql } = this.#compiler.compileQuery(node, { queryId: 'raw-sql-guard' } as never)
    const table = this.tenantTableIn(sql)
    if (table !== null) throw new RawSqlError(quote(table))
  }
}
