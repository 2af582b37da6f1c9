import { InvalidOptionsError } from '../errors.js'
import { SAFE_IDENTIFIER } from '../instances/instance.js'

/**
 * How a tenant table holds rows:
 * - `must`: every row belongs to an instance (`iid NOT NULL`);
 * - `may`: host rows too (`iid` nullable, `NULL` is a host row).
 */
export type TenantTableKind = 'must' | 'may'

/**
 * The `tables` option: tenant tables by name, `table` or `schema.table`. An
 * unqualified name matches the table in every schema, so schema-mode
 * instances (which reach their tables through `search_path`) are covered too.
 *
 * ```ts
 * { student: 'must', role: 'may', 'audit.event': 'must' }
 * ```
 */
export type TenantTablesOption = Readonly<Record<string, TenantTableKind>>

/**
 * The tenant tables of a database, looked up by a reference's schema and name.
 * Immutable once built.
 */
export class TenantTables {
  // name → kind for unqualified entries and for the merge of every schema's entry
  // of that name (a reference without schema may reach any of them).
  readonly #byName = new Map<string, TenantTableKind>()
  // "schema.name" → kind, for qualified references.
  readonly #qualified = new Map<string, TenantTableKind>()
  readonly #unqualified = new Map<string, TenantTableKind>()
  // With discovery: every relation the catalog had, tenant or not, by name and
  // by "schema.name". A table outside it may have been created since, with a
  // tenant column nobody has seen: it is refused rather than run unfiltered.
  readonly #known: ReadonlySet<string> | undefined

  /**
   * `known`, given by discovery, lists every relation of the database (`name`
   * and `schema.name`); without it every table not in `entries` is taken as
   * not a tenant table, as the `tables` option declares.
   */
  constructor (entries: TenantTablesOption, known?: Iterable<string>) {
    this.#known = known === undefined ? undefined : new Set(known)
    if (entries === null || typeof entries !== 'object') throw new InvalidOptionsError('tables must be an object of table names to "must" or "may"')
    for (const [key, kind] of Object.entries(entries)) {
      if (kind !== 'must' && kind !== 'may') throw new InvalidOptionsError(`tables.${key} must be "must" or "may", not ${JSON.stringify(kind)}`)
      const parts = key.split('.')
      if (parts.length > 2 || parts.some((part) => part.length === 0 || part.length > 63)) {
        throw new InvalidOptionsError(`tables key ${JSON.stringify(key)} must be "table" or "schema.table"`)
      }
      const name = parts.at(-1)!
      if (parts.length === 2) this.#qualified.set(key, kind)
      else this.#unqualified.set(name, kind)
      // `must` wins: it is the stricter of the two in host context.
      if (this.#byName.get(name) !== 'must') this.#byName.set(name, kind)
    }
  }

  /**
   * False only for a table that discovery did not see: it may have been
   * created since and hold instance rows (call `tenancy.discoverTables()`).
   */
  isKnown (name: string, schema?: string): boolean {
    return this.#known === undefined || this.#known.has(schema === undefined ? name : `${schema}.${name}`)
  }

  /** The number of configured entries. */
  get size (): number {
    return this.#qualified.size + this.#unqualified.size
  }

  /** The kind of the table `schema.name` (or `name` without schema), or `undefined` when it is not a tenant table. */
  kind (name: string, schema?: string): TenantTableKind | undefined {
    if (schema === undefined) return this.#byName.get(name)
    return this.#qualified.get(`${schema}.${name}`) ?? this.#unqualified.get(name)
  }

  /** The entries, in the form of the `tables` option. */
  toJSON (): Record<string, TenantTableKind> {
    return Object.fromEntries([...this.#unqualified, ...this.#qualified])
  }
}

/** Something that runs one catalog query: a pg `Pool`, `PoolClient` or `Client`. */
export interface CatalogQueryable {
  query (text: string, values: unknown[]): Promise<{ rows: any[] }>
}

/**
 * Discovers the tenant tables of a database from its catalog: every table,
 * view or partitioned table of every ordinary schema that has `tenantColumn`.
 * A `NOT NULL` column makes a `must` table, a nullable one a `may` table.
 * Entries are schema-qualified (`public.student`).
 *
 * ```ts
 * const tables = await discoverTenantTables(pool, 'iid')
 * tables.kind('student') // 'must'
 * ```
 */
export async function discoverTenantTables (db: CatalogQueryable, tenantColumn = 'iid'): Promise<TenantTables> {
  if (!SAFE_IDENTIFIER.test(tenantColumn)) throw new InvalidOptionsError(`tenantColumn ${JSON.stringify(tenantColumn)} is not a safe column name`)
  const { rows } = await db.query(
    `select n.nspname as schema, c.relname as name, a.attnotnull as not_null
       from pg_catalog.pg_class c
       join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       left join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attname = $1 and not a.attisdropped and a.attnum > 0
      where c.relkind in ('r', 'p', 'v', 'm', 'f')
        and n.nspname not in ('information_schema') and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'`,
    [tenantColumn])
  const entries: Record<string, TenantTableKind> = {}
  const known: string[] = []
  for (const row of rows) {
    known.push(row.name, `${row.schema}.${row.name}`)
    if (row.not_null !== null) entries[`${row.schema}.${row.name}`] = row.not_null ? 'must' : 'may'
  }
  return new TenantTables(entries, known)
}
