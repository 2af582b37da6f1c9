import { Kysely, PostgresDialect } from 'kysely'
import { contextOf, enterContext, type ContextOwner, type TenancyContext } from './context.js'
import { ClosedError, InvalidOptionsError } from './errors.js'
import { SAFE_IDENTIFIER, type Instance, type InstanceConfig, type InstanceName } from './instances/instance.js'
import { InstanceRegistry, requireInstance, type InstanceStore } from './instances/instance-registry.js'
import { PoolManager, type DatasourceConfig, type PoolSettings } from './routing/pool-manager.js'
import { RoutingPool } from './routing/routing-pool.js'
import type { SessionSettings } from './routing/session-state.js'
import { InstanceFilterPlugin } from './filter/instance-filter-plugin.js'
import { TenantTables, discoverTenantTables, type TenantTablesOption } from './filter/tenant-tables.js'
import { RawSqlGuard } from './filter/raw-sql-guard.js'
import { rowLevelSecuritySettings, withSettings } from './filter/row-level-security.js'

/** Options of {@link createTenancy}. */
export interface TenancyOptions {
  /** The instances: a list validated at start-up, or a store. */
  instances: readonly InstanceConfig[] | InstanceStore
  /** Named datasources; `default` is required. Connection strings or pg `PoolConfig`s. */
  datasources: Record<string, DatasourceConfig>
  /** The tenant column. Defaults to `'iid'`. */
  tenantColumn?: string
  /**
   * At most this many datasource pools open at once (isolated instances each
   * have one); the least recently used idle pool is closed to make room.
   * Defaults to `10`.
   */
  maxPools?: number
  /** A pool with no client checked out for this long is closed. Defaults to `60000`. */
  poolIdleTimeoutMillis?: number
  /**
   * Settings of every datasource's pg pool (`max`, `connectionTimeoutMillis`,
   * `idleTimeoutMillis`, `allowExitOnIdle`); a datasource given as a
   * `PoolConfig` overrides them. Defaults to
   * `{ max: 10, connectionTimeoutMillis: 5000, idleTimeoutMillis: 10000, allowExitOnIdle: true }`.
   */
  pool?: PoolSettings
  /** Extra session settings set on each connection for its context, e.g. for row-level security. Defaults to none. */
  settings?: SessionSettings
  /**
   * The tenant tables, `must` or `may`, by `table` or `schema.table`. Defaults
   * to discovery from the default datasource's catalog by `createTenancy`:
   * every table with the tenant column, `NOT NULL` ⇒ `must`, nullable ⇒ `may`
   * (call `discoverTables()` again after a migration adds one).
   */
  tables?: TenantTablesOption
  /**
   * Refuse raw statements (`sql\`…\``) that name a tenant table outside
   * `unscoped()` with `TENANCY_RAW_SQL`. Defaults to `false`.
   */
  strict?: boolean
  /**
   * Row-level security, the second line of defence: every connection carries
   * the context in the session setting `tenancy.iid` for the policies that
   * `rowLevelSecurityStatements()` creates. Defaults to `false`.
   */
  rls?: boolean
}

function isStore (value: unknown): value is InstanceStore {
  return value !== null && typeof value === 'object' && typeof (value as InstanceStore).byName === 'function' &&
    typeof (value as InstanceStore).byId === 'function' && typeof (value as InstanceStore).list === 'function'
}

/**
 * One multi-tenant setup: instances, datasources and the context functions
 * bound to them. Made by {@link createTenancy}.
 */
export class Tenancy implements ContextOwner {
  /** The instances. */
  readonly instances: InstanceStore
  /** The tenant column. */
  readonly tenantColumn: string
  readonly #pools: PoolManager
  readonly #settings: SessionSettings | undefined
  #tenantTables: TenantTables | undefined
  readonly #strict: boolean
  #rawSqlGuard: RawSqlGuard | undefined
  #kysely: Kysely<any> | undefined
  #closed = false

  /** @internal use {@link createTenancy} */
  constructor (options: TenancyOptions) {
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('createTenancy needs an options object')
    this.#pools = new PoolManager(options.datasources, { maxPools: options.maxPools, poolIdleTimeoutMillis: options.poolIdleTimeoutMillis, pool: options.pool })
    if (options.settings !== undefined && typeof options.settings !== 'function') throw new InvalidOptionsError('settings must be a function of the context that returns the session settings')
    for (const flag of ['strict', 'rls'] as const) {
      if (options[flag] !== undefined && typeof options[flag] !== 'boolean') throw new InvalidOptionsError(`${flag} must be true or false`)
    }
    this.#settings = options.rls === true ? withSettings(options.settings, rowLevelSecuritySettings()) : options.settings
    this.#strict = options.strict === true
    if (options.tables !== undefined) this.#tenantTables = new TenantTables(options.tables)
    this.instances = isStore(options.instances) ? options.instances : new InstanceRegistry(options.instances, this.#pools.names())
    this.tenantColumn = options.tenantColumn ?? 'iid'
    if (typeof this.tenantColumn !== 'string' || !SAFE_IDENTIFIER.test(this.tenantColumn)) {
      throw new InvalidOptionsError(`tenantColumn ${JSON.stringify(this.tenantColumn)} is not a safe column name`)
    }
  }

  /** @internal The pool manager, for the routing driver and tests. */
  get pools (): PoolManager {
    return this.#pools
  }

  /**
   * Looks up an instance by name or id; throws `TENANCY_UNKNOWN_INSTANCE` or
   * `TENANCY_INSTANCE_DISABLED`.
   */
  getInstance (nameOrId: InstanceName | number): Instance {
    return requireInstance(this.instances, nameOrId)
  }

  /**
   * Runs `fn` as the instance named or numbered `nameOrId`. Nests like a
   * scope: the outer context is back when `fn` returns or throws.
   */
  runAsInstance<R> (nameOrId: InstanceName | number, fn: () => R): R {
    return enterContext(this, 'instance', requireInstance(this.instances, nameOrId), fn)
  }

  /** Runs `fn` in host context: the operator context that belongs to no instance. */
  runAsHost<R> (fn: () => R): R {
    return enterContext(this, 'host', undefined, fn)
  }

  /**
   * Runs `fn` with the tenant filter off, for cross-instance admin work with
   * explicit `iid`s. Queries still run on the current instance's database.
   */
  unscoped<R> (fn: () => R): R {
    return enterContext(this, 'unscoped', this.currentInstance(), fn)
  }

  /** The innermost frame of this tenancy in the current async context; frames of other tenancies are skipped. */
  context (): TenancyContext | undefined {
    return contextOf(this)
  }

  /** The instance of this tenancy's current frame, or `undefined`. */
  currentInstance (): Instance | undefined {
    return contextOf(this)?.instance
  }

  /**
   * The Kysely of this tenancy: one for every instance, scoped by the current
   * context. Which database and schema a query runs on follows the context.
   */
  kysely<DB> (): Kysely<DB> {
    if (this.#closed) throw new ClosedError('its Kysely cannot be used any more.')
    if (this.#kysely !== undefined) return this.#kysely as Kysely<DB>
    if (this.#tenantTables === undefined) throw new InvalidOptionsError('the tenant tables are not known yet: create the tenancy with createTenancy(), which discovers them')
    const context = (): TenancyContext | undefined => contextOf(this)
    this.#kysely = new Kysely<any>({
      dialect: new PostgresDialect({ pool: new RoutingPool(this.#pools, { settings: this.#settings, context }) }),
      plugins: [new InstanceFilterPlugin({ tables: () => this.#tenantTables!, tenantColumn: this.tenantColumn, rawSqlGuard: this.#rawSqlGuard, context })],
    })
    return this.#kysely as Kysely<DB>
  }

  /** The tenant tables the filter confines: the `tables` option, or those discovered. */
  get tenantTables (): TenantTables | undefined {
    return this.#tenantTables
  }

  /**
   * Reads the tenant tables from the default datasource's catalog (every
   * schema) and uses them from now on: for a tenancy made without `tables`,
   * after a migration that adds a tenant table.
   */
  async discoverTables (): Promise<TenantTables> {
    const lease = await this.#pools.acquire('default')
    try {
      this.#tenantTables = await discoverTenantTables(lease.client, this.tenantColumn)
    } finally {
      this.#pools.release(lease)
    }
    return this.#tenantTables
  }

  /** @internal Start-up work of createTenancy: table discovery, the strict parser. */
  async prepareTenantFilter (options: TenancyOptions): Promise<void> {
    if (options.tables === undefined) await this.discoverTables()
    if (this.#strict) this.#rawSqlGuard = await RawSqlGuard.load(() => this.#tenantTables!)
  }

  /** Ends every pool this tenancy opened. Safe to call twice. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    if (this.#kysely) await this.#kysely.destroy()
    await this.#pools.close()
  }
}

/**
 * Creates a tenancy: validates the options (throwing `TENANCY_INVALID_OPTIONS`
 * with the reason), discovers the tenant tables and loads what the checks need.
 *
 * ```ts
 * const tenancy = await createTenancy({
 *   instances: [{ name: '', id: 1 }, { name: 'acme', id: 2 }],
 *   datasources: { default: process.env.DATABASE_URL },
 * })
 * ```
 */
export async function createTenancy (options: TenancyOptions): Promise<Tenancy> {
  const tenancy = new Tenancy(options)
  try {
    await tenancy.prepareTenantFilter(options)
  } catch (err) {
    await tenancy.close()
    throw err
  }
  return tenancy
}
