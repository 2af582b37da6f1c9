import { InvalidOptionsError } from '../errors.js'
import { tenantColumn } from './tenant-column.js'

/**
 * How a tenant table holds rows:
 * - `must`: every row belongs to an instance (`iid NOT NULL`);
 * - `may`: host rows too (`iid` nullable, `NULL` is a host row).
 */
export type TenantTableKind = 'must' | 'may'

/**
 * What a tenant table is in the catalog. The filter confines all of them the
 * same way; {@link rowLevelSecurityStatements} cannot: a view gets
 * `security_invoker`, not a policy.
 */
export type TenantRelation = 'table' | 'view' | 'materialized view' | 'foreign table'

/** One entry of the `tables` option in its long form, for what is not a plain table. */
export interface TenantTableEntry {
  readonly kind: TenantTableKind
  /** Defaults to `'table'`. */
  readonly relation?: TenantRelation
}

/**
 * The `tables` option: tenant tables by name, `table` or `schema.table`. An
 * unqualified name matches the table in every schema, so schema-mode
 * instances (which reach their tables through `search_path`) are covered too.
 * A view is declared in the long form.
 *
 * ```ts
 * { student: 'must', role: 'may', 'audit.event': 'must', student_names: { kind: 'must', relation: 'view' } }
 * ```
 */
export type TenantTablesOption = Readonly<Record<string, TenantTableKind | TenantTableEntry>>

const RELATIONS: ReadonlySet<string> = new Set<TenantRelation>(['table', 'view', 'materialized view', 'foreign table'])

/**
 * Which datasources discovery read, and where the current query runs: a query
 * of an instance whose datasource was not read (it could not be reached, or
 * the instance came later), or whose catalog may have changed unseen
 * (`stale`), may name only tenant tables: every other table is refused as
 * unknown, since it may have gained the tenant column there.
 */
export interface TenantTablesScope {
  readonly scanned: ReadonlySet<string>
  /** The datasource of the current context. */
  readonly current: () => string
  /** True while changes to `datasource`'s catalog may have gone unseen. Defaults to never. */
  readonly stale?: (datasource: string) => boolean
  /** Told when a query runs on a datasource that was not read, so that it can be. Defaults to nothing. */
  readonly unread?: (datasource: string) => void
}

interface Entry { readonly kind: TenantTableKind, readonly relation: TenantRelation }

function entryOf (key: string, value: unknown): Entry {
  if (value === 'must' || value === 'may') return { kind: value, relation: 'table' }
  if (value !== null && typeof value === 'object') {
    const { kind, relation = 'table' } = value as TenantTableEntry
    if ((kind === 'must' || kind === 'may') && RELATIONS.has(relation)) return { kind, relation }
  }
  throw new InvalidOptionsError(`tables.${key} must be "must", "may" or { kind: "must" | "may", relation: "table" | "view" | "materialized view" | "foreign table" }, not ${JSON.stringify(value)}`)
}

/**
 * The tenant tables of a database, looked up by a reference's schema and name.
 * Immutable once built.
 */
export class TenantTables {
  // name → kind for unqualified entries and for the merge of every schema's entry
  // of that name (a reference without schema may reach any of them).
  readonly #byName = new Map<string, TenantTableKind>()
  // "schema.name" → entry, for qualified references.
  readonly #qualified = new Map<string, Entry>()
  readonly #unqualified = new Map<string, Entry>()
  // With discovery: every relation the catalog had, tenant or not, by name and
  // by "schema.name". A table outside it may have been created since, with a
  // tenant column nobody has seen: it is refused rather than run unfiltered.
  readonly #known: ReadonlySet<string> | undefined
  readonly #scope: TenantTablesScope | undefined

  /**
   * `known`, given by discovery, lists every relation of the database (`name`
   * and `schema.name`); without it every table not in `entries` is taken as
   * not a tenant table, as the `tables` option declares. `scope` is for
   * tables discovered over several datasources.
   */
  constructor (entries: TenantTablesOption, known?: Iterable<string>, scope?: TenantTablesScope) {
    this.#known = known === undefined ? undefined : new Set(known)
    this.#scope = scope
    if (entries === null || typeof entries !== 'object') throw new InvalidOptionsError('tables must be an object of table names to "must" or "may"')
    for (const [key, value] of Object.entries(entries)) {
      const entry = entryOf(key, value)
      const parts = key.split('.')
      if (parts.length > 2 || parts.some((part) => part.length === 0 || part.length > 63)) {
        throw new InvalidOptionsError(`tables key ${JSON.stringify(key)} must be "table" or "schema.table"`)
      }
      const name = parts.at(-1)!
      if (parts.length === 2) this.#qualified.set(key, entry)
      else this.#unqualified.set(name, entry)
      // `must` wins: it is the stricter of the two in host context.
      if (this.#byName.get(name) !== 'must') this.#byName.set(name, entry.kind)
    }
  }

  /**
   * The tables of several databases as one: a table is a tenant table if it
   * is one in any of them (`must` where any says `must`), and known if any
   * knows it. `scope` says which datasources `parts` come from.
   */
  static merge (parts: Iterable<TenantTables>, scope?: TenantTablesScope): TenantTables {
    const entries: Record<string, TenantTableEntry> = {}
    let known: Set<string> | undefined = new Set()
    for (const part of parts) {
      for (const [key, entry] of [...part.#unqualified, ...part.#qualified]) {
        const before = entries[key]
        entries[key] = before === undefined ? entry : { kind: before.kind === 'must' ? 'must' : entry.kind, relation: before.relation }
      }
      if (part.#known === undefined) known = undefined
      else if (known !== undefined) for (const key of part.#known) known.add(key)
    }
    return new TenantTables(entries, known, scope)
  }

  /**
   * False for a table that discovery did not see: it may have been created
   * since and hold instance rows (call `tenancy.discoverTables()`). With a
   * scope, also for every table of a datasource discovery could not read or
   * whose changes may have gone unseen.
   */
  isKnown (name: string, schema?: string): boolean {
    if (this.#known === undefined) return true
    if (this.#scope !== undefined) {
      const datasource = this.#scope.current()
      if (!this.#scope.scanned.has(datasource)) {
        this.#scope.unread?.(datasource)
        return false
      }
      if (this.#scope.stale?.(datasource) === true) return false
    }
    return this.#known.has(schema === undefined ? name : `${schema}.${name}`)
  }

  /** The kind of the table `schema.name` (or `name` without schema), or `undefined` when it is not a tenant table. */
  kind (name: string, schema?: string): TenantTableKind | undefined {
    if (schema === undefined) return this.#byName.get(name)
    return (this.#qualified.get(`${schema}.${name}`) ?? this.#unqualified.get(name))?.kind
  }

  /** Whether the tenant table of this entry key (`table` or `schema.table`) is a table, a view, …; `undefined` for no entry. */
  relation (key: string): TenantRelation | undefined {
    return (this.#qualified.get(key) ?? this.#unqualified.get(key))?.relation
  }

  /** The entries, in the form of the `tables` option: plain tables as `'must'` / `'may'`, the others in the long form. */
  toJSON (): Record<string, TenantTableKind | TenantTableEntry> {
    const out: Record<string, TenantTableKind | TenantTableEntry> = {}
    for (const [key, { kind, relation }] of [...this.#unqualified, ...this.#qualified]) {
      out[key] = relation === 'table' ? kind : { kind, relation }
    }
    return out
  }
}

/** Something that runs one catalog query: a pg `Pool`, `PoolClient` or `Client`. */
export interface CatalogQueryable {
  query (text: string, values: unknown[]): Promise<{ rows: any[] }>
}

const RELKINDS: Readonly<Record<string, TenantRelation>> = { r: 'table', p: 'table', v: 'view', m: 'materialized view', f: 'foreign table' }

/**
 * The relations discovery reads: every table, view, materialized view,
 * partitioned or foreign table of every ordinary schema (temporary tables and
 * `information_schema` left out), with the tenant column `$1` if it has one.
 * A catalog fingerprint over the same rows tells whether discovery would see
 * anything new.
 */
export const CATALOG_RELATIONS = `select c.oid, n.nspname as schema, c.relname as name, c.relkind as relkind, a.attnotnull as not_null
       from pg_catalog.pg_class c
       join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       left join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attname = $1 and not a.attisdropped and a.attnum > 0
      where c.relkind in ('r', 'p', 'v', 'm', 'f')
        and n.nspname not in ('information_schema') and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'`

/**
 * Discovers the tenant tables of a database from its catalog: every table,
 * view, materialized view, partitioned or foreign table of every ordinary
 * schema that has `tenantColumn`. A `NOT NULL` column makes a `must` table, a
 * nullable one a `may` table; a view's columns are never `NOT NULL` in the
 * catalog, so views are `may` (declare them `must` to refuse them in host
 * context). Entries are schema-qualified (`public.student`).
 *
 * ```ts
 * const tables = await discoverTenantTables(pool, 'iid')
 * tables.kind('student') // 'must'
 * tables.relation('public.student_names') // 'view'
 * ```
 */
export async function discoverTenantTables (db: CatalogQueryable, column?: string): Promise<TenantTables> {
  const { rows } = await db.query(CATALOG_RELATIONS, [tenantColumn(column)])
  const entries: Record<string, TenantTableEntry> = {}
  const known: string[] = []
  for (const row of rows) {
    known.push(row.name, `${row.schema}.${row.name}`)
    // CATALOG_RELATIONS reads only the relkinds of RELKINDS.
    if (row.not_null !== null) entries[`${row.schema}.${row.name}`] = { kind: row.not_null ? 'must' : 'may', relation: RELKINDS[row.relkind]! }
  }
  return new TenantTables(entries, known)
}
