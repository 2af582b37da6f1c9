import { sql, type DatabaseIntrospector, type DatabaseMetadataOptions, type Kysely, type SchemaMetadata, type TableMetadata, type ColumnMetadata } from 'kysely'

interface ColumnRow {
  column: string
  not_null: boolean
  has_default: boolean
  table: string
  table_type: string
  type: string
  type_schema: string
  column_description: string | null
  auto_incrementing: string | null
}

/** The last `getTables()` answer on one connection, and how many statements that connection had sent then. */
export interface TablesMemo {
  readonly statements: () => number
  last?: { internal: boolean, statements: number, tables: TableMetadata[] }
}

/**
 * Kysely's PostgreSQL introspection narrowed to one target's schema. Kysely's
 * Migrator asks for every table of the database several times per run; with a
 * thousand schemas that is a thousand tables' columns each time, and a table
 * of the same name in another schema would pass for this target's. Here
 * `getSchemas()` knows only the target's schema and `getTables()` only its
 * tables, with the same metadata Kysely's own introspector gives. Migrations
 * that introspect see their target alone.
 *
 * ```ts
 * await new TargetIntrospector(db, 'tenant_acme', ['kysely_migration', 'kysely_migration_lock']).getTables()
 * // select a.attname as "column", … from pg_catalog.pg_attribute as a … where ns.nspname = $1 …   -- $1 = 'tenant_acme'
 * ```
 */
export class TargetIntrospector implements DatabaseIntrospector {
  readonly #db: Kysely<any>
  readonly #schema: string
  readonly #internal: readonly string[]
  readonly #memo: TablesMemo | undefined

  /**
   * `internal` names the migration tables, left out unless
   * `withInternalKyselyTables` is asked for. `memo`, shared by the
   * introspectors of one connection (Kysely makes one per use), keeps the last
   * answer with the count of statements sent on the connection: while the
   * count has not moved, nothing on the connection can have changed the
   * catalog, and the answer is given again (Kysely's Migrator asks twice in a
   * row on every step). Defaults to no memo.
   */
  constructor (db: Kysely<any>, schema: string, internal: readonly string[], memo?: TablesMemo) {
    this.#db = db
    this.#schema = schema
    this.#internal = internal
    this.#memo = memo
  }

  async getSchemas (): Promise<SchemaMetadata[]> {
    const { rows } = await sql<{ name: string }>`select nspname as name from pg_catalog.pg_namespace where nspname = ${this.#schema}`.execute(this.#db)
    return rows.map(({ name }) => ({ name }))
  }

  async getTables (options: DatabaseMetadataOptions = { withInternalKyselyTables: false }): Promise<TableMetadata[]> {
    const memo = this.#memo
    const internal = options.withInternalKyselyTables
    const last = memo?.last
    if (memo !== undefined && last !== undefined && last.internal === internal && last.statements === memo.statements()) return [...last.tables]
    const tables = await this.#read(options)
    if (memo !== undefined) memo.last = { internal, statements: memo.statements(), tables }
    return [...tables]
  }

  async #read (options: DatabaseMetadataOptions): Promise<TableMetadata[]> {
    const leaveOut = options.withInternalKyselyTables ? [] : this.#internal
    const { rows } = await sql<ColumnRow>`
      select a.attname as column, a.attnotnull as not_null, a.atthasdef as has_default, c.relname as table,
        c.relkind as table_type, typ.typname as type, dtns.nspname as type_schema,
        col_description(a.attrelid, a.attnum) as column_description,
        pg_get_serial_sequence(quote_ident(ns.nspname) || '.' || quote_ident(c.relname), a.attname) as auto_incrementing
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_class c on a.attrelid = c.oid
      join pg_catalog.pg_namespace ns on c.relnamespace = ns.oid
      join pg_catalog.pg_type typ on a.atttypid = typ.oid
      join pg_catalog.pg_namespace dtns on typ.typnamespace = dtns.oid
      where ns.nspname = ${this.#schema} and c.relkind in ('r', 'v', 'p', 'f') and a.attnum >= 0 and not a.attisdropped
        and not (c.relname = any(${leaveOut}::text[]))
      order by c.relname, a.attnum`.execute(this.#db)
    const tables = new Map<string, TableMetadata & { columns: ColumnMetadata[] }>()
    for (const row of rows) {
      let table = tables.get(row.table)
      if (table === undefined) {
        table = { name: row.table, schema: this.#schema, isView: row.table_type === 'v', isForeign: row.table_type === 'f', columns: [] }
        tables.set(row.table, table)
      }
      table.columns.push(Object.freeze({
        name: row.column,
        dataType: row.type,
        dataTypeSchema: row.type_schema,
        isNullable: !row.not_null,
        hasDefaultValue: row.has_default,
        isAutoIncrementing: row.auto_incrementing !== null,
        comment: row.column_description ?? undefined,
      }))
    }
    return [...tables.values()].map((table) => Object.freeze(table))
  }
}
