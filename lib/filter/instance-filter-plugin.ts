import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely'
import { currentContext, type TenancyContext } from '../context.js'
import { InvalidOptionsError } from '../errors.js'
import { tenantColumn } from './tenant-column.js'
import type { RawSqlGuard } from './raw-sql-guard.js'
import { InstanceFilterTransformer, type InstanceFilterTarget } from './instance-filter-transformer.js'
import { TenantTables, type TenantTablesOption } from './tenant-tables.js'

/** Options of {@link InstanceFilterPlugin}. */
export interface InstanceFilterPluginOptions {
  /**
   * The tenant tables: the `tables` option's form, {@link TenantTables} (e.g.
   * from {@link discoverTenantTables}), or a function returning the current ones.
   */
  tables: TenantTablesOption | TenantTables | (() => TenantTables)
  /** The tenant column. Defaults to `'iid'`. */
  tenantColumn?: string
  /**
   * Refuses raw statements (`sql\`…\``) that name a tenant table outside
   * `unscoped`, with `TENANCY_RAW_SQL`. Needs a loaded guard: see
   * {@link RawSqlGuard.load}. Defaults to none (raw statements pass unchanged).
   */
  rawSqlGuard?: RawSqlGuard
  /**
   * Reads the frame the filter confines to. `tenancy.kysely()` passes one that
   * sees only that tenancy's frames, so another tenancy's `unscoped()` or
   * instance is no context here. Defaults to the innermost frame of any
   * tenancy (`currentContext`).
   */
  context?: () => TenancyContext | undefined
}

const NO_CONTEXT: InstanceFilterTarget = { kind: 'none' }
const HOST: InstanceFilterTarget = { kind: 'host' }

function targetOf (context: TenancyContext | undefined): InstanceFilterTarget {
  if (context === undefined) return NO_CONTEXT
  return context.kind === 'host' || context.instance === undefined ? HOST : { kind: 'instance', id: context.instance.id }
}

/**
 * Confines every query to the current context's instance: each reference to a
 * tenant table, wherever it stands in the statement (FROM, JOINs, subqueries,
 * CTEs, set operations, UPDATE … FROM, DELETE … USING, INSERT … SELECT, ON
 * CONFLICT, builders inside raw statements, `create table … as select`), gets
 * `<alias>.iid = <instance id>`; INSERT fills `iid`. In host
 * context `may` tables get `iid is null` and `must` tables throw
 * `TENANCY_HOST_CONTEXT`; in `unscoped` the filter is off; with no context a
 * tenant table throws `TENANCY_NO_CONTEXT`. Errors are raised while the query
 * compiles, before anything reaches the database. `tenancy.kysely()` installs
 * it; it works on its own with any Kysely.
 *
 * ```ts
 * const db = new Kysely<DB>({ dialect, plugins: [new InstanceFilterPlugin({ tables: { student: 'must', role: 'may' } })] })
 * await runAsInstance('shareTest', () => db.selectFrom('student as s').leftJoin('role as r', 'r.id', 's.role_id').selectAll('s').execute())
 * // select "s".* from "student" as "s" left join "role" as "r" on ("r"."id" = "s"."role_id") and "r"."iid" = $1
 * //   where "s"."iid" = $2   -- [2, 2]
 * ```
 */
export class InstanceFilterPlugin implements KyselyPlugin {
  readonly #transformer: InstanceFilterTransformer
  readonly #guard: RawSqlGuard | undefined
  readonly #column: string
  readonly #context: () => TenancyContext | undefined

  constructor (options: InstanceFilterPluginOptions) {
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('InstanceFilterPlugin needs an options object')
    const tables = options.tables instanceof TenantTables || typeof options.tables === 'function' ? options.tables : new TenantTables(options.tables)
    this.#column = tenantColumn(options.tenantColumn)
    this.#transformer = new InstanceFilterTransformer(tables, this.#column)
    this.#guard = options.rawSqlGuard
    if (options.context !== undefined && typeof options.context !== 'function') throw new InvalidOptionsError('context must be a function that returns the current frame')
    this.#context = options.context ?? currentContext
  }

  transformQuery (args: PluginTransformQueryArgs): RootOperationNode {
    const context = this.#context()
    if (context?.kind === 'unscoped') return args.node
    const node = args.node
    switch (node.kind) {
      case 'RawNode':
        this.#guard?.check(node)
        // A builder inside the raw text (`sql\`… ${db.selectFrom(…)}\``) was
        // confined when the text was made, perhaps under another instance.
        return this.#transformer.confine(node, targetOf(context), args.queryId)
      case 'SelectQueryNode':
      case 'InsertQueryNode':
      case 'UpdateQueryNode':
      case 'DeleteQueryNode':
      case 'MergeQueryNode':
      // `create table … as select` copies rows: its select is confined like any other.
      case 'CreateTableNode':
        // With strict, what a builder holds that runs SQL given as text
        // (`eb.fn('query_to_xml', …)`, raw fragments naming tables) is refused too.
        this.#guard?.checkQuery(node)
        return this.#transformer.confine(node, targetOf(context), args.queryId)
      default:
        // Other schema statements name no rows.
        return node
    }
  }

  async transformResult (args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result
  }
}
