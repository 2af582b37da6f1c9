import { Kysely, PostgresDialect } from 'kysely'
import { contextOf, enterContext, type ContextOwner, type TenancyContext } from './context.js'
import { ClosedError, DoctorError, InvalidOptionsError } from './errors.js'
import { type Instance, type InstanceConfig, type InstanceName } from './instances/instance.js'
import { InstanceRegistry, requireInstance, type InstanceStore } from './instances/instance-registry.js'
import { DatabaseStore } from './instances/database-store.js'
import { PoolManager, type DatasourceConfig, type PoolSettings } from './routing/pool-manager.js'
import { RoutingPool, preparedStatementsPerConnection } from './routing/routing-pool.js'
import type { SessionSettings } from './routing/session-state.js'
import { InstanceFilterPlugin } from './filter/instance-filter-plugin.js'
import { TenantTables, type TenantTablesOption } from './filter/tenant-tables.js'
import { tenantColumn } from './filter/tenant-column.js'
import { TableWatcher } from './filter/table-watcher.js'
import { RawSqlGuard } from './filter/raw-sql-guard.js'
import { rowLevelSecuritySettings, withSettings } from './filter/row-level-security.js'
import { instanceJobs, type InstanceJobs } from './jobs/instance-jobs.js'
import type { PgBoss } from 'pg-boss'
import { FleetMigrator, type FleetMigrateOptions, type MigrationReport, type MigrationsOption, type MigrationStatusOptions, type TargetMigrationState } from './lifecycle/fleet-migrator.js'
import { InstanceLifecycle, type CreateInstanceInput, type CreatedInstance, type InstancePatch, type ProvisionContext, type RemoveInstanceOptions, type TenancyEvents } from './lifecycle/instance-lifecycle.js'
import { doctor, warnFindings, type DoctorSettings } from './doctor.js'

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
   * Defaults to `10`, or no limit when `maxConnections` is set.
   */
  maxPools?: number
  /**
   * At most this many connections open at once over all datasources (the
   * server's real limit): a checkout that needs one more closes an idle
   * connection (a datasource's second one first, the least recently used
   * first), or waits its turn in a
   * queue served one datasource after the other; `pool.max` still caps each
   * datasource. Defaults to no budget (only `maxPools × pool.max`).
   */
  maxConnections?: number
  /**
   * Under `maxConnections`, when every connection is open: how long a
   * checkout whose datasource has connections, all checked out, waits for
   * one of them before an idle connection of another datasource is closed
   * to open one more. Defaults to the running mean of the budget's connect
   * times.
   */
  growAfterMillis?: number
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
   * The tenant tables, `must` or `may`, by `table` or `schema.table`; a view
   * in the long form, `{ kind: 'must', relation: 'view' }`. Defaults to
   * discovery by `createTenancy` from the catalog of every datasource an
   * instance uses, merged: every table, view, materialized view, partitioned
   * or foreign table with the tenant column, `NOT NULL` ⇒ `must`, nullable ⇒
   * `may`, kept current by `watchTables`.
   */
  tables?: TenantTablesOption
  /**
   * Refuse outside `unscoped()`, with `TENANCY_RAW_SQL`, raw statements
   * (`sql\`…\``) that name a tenant table or that read rows without naming
   * their table: `query_to_xml` and the other functions that run SQL given as
   * text or read a table named by a value, `DO`, `PREPARE` / `EXECUTE`,
   * `FETCH` / `MOVE`, `CREATE FUNCTION` with a string body, `pg_stats` (the
   * list: {@link RawSqlGuard}). Defaults to `false`.
   */
  strict?: boolean
  /**
   * Row-level security, the second line of defence: every connection carries
   * the context in the session setting `tenancy.iid` for the policies that
   * `rowLevelSecurityStatements()` creates (views get `security_invoker`).
   * Defaults to `false`.
   */
  rls?: boolean
  /**
   * `tenancy.kysely()` sends each statement that has parameters as a named
   * prepared statement, so that PostgreSQL parses and plans it once per
   * connection instead of once per query: up to this many distinct texts per
   * connection (`true`: 100), later ones unnamed. Worth most with `rls`, whose
   * policies are mostly planning cost. PostgreSQL plans again when the
   * `search_path`, the role or a table changes; a `select *` whose columns a
   * migration changed fails once per connection inside a transaction (sent again
   * unnamed outside one). Refused with `pgbouncer: 'transaction'`.
   * Defaults to `false`.
   */
  preparedStatements?: boolean | number
  /**
   * Follow changes to the tables made by any process (a migration run
   * elsewhere, another server): one connection per watched datasource, outside
   * the pools, listens to an event trigger on DDL (created when the login is a
   * superuser; the README says how to create it by hand) or, without one,
   * reads a catalog fingerprint every 400 ms; the tables are discovered again
   * within a second. While a change may have gone unseen for longer, queries that
   * name a table other than a tenant table are refused with
   * `TENANCY_UNKNOWN_TABLE`. Needs discovered tables (no `tables` option).
   * Defaults to `true` without `tables`, `false` with it or with `pgbouncer: 'transaction'`.
   */
  watchTables?: boolean
  /**
   * Migrations, two Kysely `MigrationProvider`s run by `migrate()`: `instance`
   * on every physical target (the shared tables of each datasource once, each
   * schema instance's schema, each isolated instance's database), each target
   * with its own migration and lock tables; `host` once on the default
   * datasource, for the tables of no instance.
   *
   * ```ts
   * migrations: { instance: new FileMigrationProvider({ fs, path, migrationFolder: path.resolve('migrations') }) }
   * ```
   *
   * Defaults to none.
   */
  migrations?: MigrationsOption
  /**
   * Servers on which `createInstance({ mode: 'isolated' })` creates databases,
   * by name: the connection settings of a login that may `CREATE DATABASE`. A
   * new database's datasource is the same settings with the database
   * replaced, added to the pools of every process that sees the instance.
   *
   * ```ts
   * servers: { main: 'postgres://provisioner:secret@db1/postgres' }
   * ```
   *
   * Defaults to none.
   */
  servers?: Record<string, DatasourceConfig>
  /**
   * Called for each new instance after its migrations, in its context (its
   * queries are confined to it), e.g. to create its administrator with the
   * initial `password`. Must be idempotent: a retried creation calls it
   * again. Defaults to none.
   */
  onProvision?: (context: ProvisionContext) => unknown
  /**
   * The datasources are reached through PgBouncer, in this pooling mode.
   * `'session'` changes nothing: each connection keeps its own server session.
   * `'transaction'` keeps nothing in the session: a schema, role or `rls` /
   * `settings` value is set at the start of each transaction with
   * `set_config(…, true)`, a query outside a transaction running in one of its
   * own (`BEGIN; <set-up>`, the query, `COMMIT`); `watchTables`, a
   * `databaseStore` and `migrate()`, which need a session, are refused with
   * `TENANCY_INVALID_OPTIONS`, and a statement that may change the session with
   * `TENANCY_UNSUPPORTED_STATEMENT` before it is sent (see the README, "PgBouncer").
   * Defaults to `false` (direct connections).
   */
  pgbouncer?: 'session' | 'transaction' | false
  /**
   * Checks the set-up at start-up with {@link doctor}: one catalog statement
   * on the `default` datasource and on each datasource of schema instances
   * (isolated instances' databases and pending migrations are left to
   * `fastify-tenancy doctor`):
   * `'warn'` emits each finding once per process as a process warning
   * (`TenancyDoctorWarning`), `'throw'` makes `createTenancy` throw
   * `TENANCY_DOCTOR_FINDINGS` listing them, `false` skips the check.
   * Defaults to `'warn'`.
   */
  doctor?: 'warn' | 'throw' | false
}

// Under transaction pooling each transaction may run in another server
// session: nothing may rely on state kept in the session between them.
function refuseUnderTransactionPooling (options: TenancyOptions): void {
  const why = 'which PgBouncer\'s transaction pooling (pgbouncer: \'transaction\') does not keep from one transaction to the next: use session pooling (pgbouncer: \'session\') or direct connections for it'
  if (options.watchTables === true) throw new InvalidOptionsError(`watchTables listens for catalog changes (LISTEN) on one session, ${why}; leave it out (it defaults to false with pgbouncer: 'transaction') and call discoverTables() after migrations`)
  if (options.instances instanceof DatabaseStore) throw new InvalidOptionsError(`a databaseStore listens for changes (LISTEN) and holds name locks on one session, ${why}`)
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
  #tableWatcher: TableWatcher | undefined
  #kysely: Kysely<any> | undefined
  #closed = false
  readonly #migrator: FleetMigrator
  readonly #discoversTables: boolean
  readonly #lifecycle: InstanceLifecycle
  readonly #transactionPooling: boolean
  readonly #preparedStatements: number
  readonly #doctorSettings: DoctorSettings

  /** @internal use {@link createTenancy} */
  constructor (options: TenancyOptions) {
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('createTenancy needs an options object')
    if (options.doctor !== undefined && options.doctor !== 'warn' && options.doctor !== 'throw' && options.doctor !== false) {
      throw new InvalidOptionsError(`doctor must be "warn", "throw" or false, not ${JSON.stringify(options.doctor)}`)
    }
    this.#pools = new PoolManager(options.datasources, { maxPools: options.maxPools, maxConnections: options.maxConnections, growAfterMillis: options.growAfterMillis, poolIdleTimeoutMillis: options.poolIdleTimeoutMillis, pool: options.pool })
    if (options.settings !== undefined && typeof options.settings !== 'function') throw new InvalidOptionsError('settings must be a function of the context that returns the session settings')
    for (const flag of ['strict', 'rls', 'watchTables'] as const) {
      if (options[flag] !== undefined && typeof options[flag] !== 'boolean') throw new InvalidOptionsError(`${flag} must be true or false`)
    }
    if (options.pgbouncer !== undefined && options.pgbouncer !== false && options.pgbouncer !== 'session' && options.pgbouncer !== 'transaction') {
      throw new InvalidOptionsError(`pgbouncer must be "session", "transaction" or false, not ${JSON.stringify(options.pgbouncer)}`)
    }
    this.#transactionPooling = options.pgbouncer === 'transaction'
    if (this.#transactionPooling) refuseUnderTransactionPooling(options)
    this.#preparedStatements = preparedStatementsPerConnection(options.preparedStatements, this.#transactionPooling)
    if (options.watchTables === true && options.tables !== undefined) throw new InvalidOptionsError('watchTables follows discovered tables: leave out the tables option, or watchTables')
    this.#settings = options.rls === true ? withSettings(options.settings, rowLevelSecuritySettings()) : options.settings
    this.#strict = options.strict === true
    if (options.tables !== undefined) this.#tenantTables = new TenantTables(options.tables)
    this.instances = isStore(options.instances) ? options.instances : new InstanceRegistry(options.instances, this.#pools.names())
    this.tenantColumn = tenantColumn(options.tenantColumn)
    this.#migrator = new FleetMigrator(options)
    this.#discoversTables = options.tables === undefined
    this.#doctorSettings = Object.freeze({
      datasources: options.datasources, rls: options.rls === true, maxPools: options.maxPools, maxConnections: options.maxConnections, pool: options.pool,
      migrations: options.migrations?.instance ?? options.migrations?.host, listens: isStore(options.instances) && !(this.instances instanceof InstanceRegistry),
    })
    this.#lifecycle = new InstanceLifecycle({
      pools: this.#pools,
      tenantTables: () => this.#tenantTables,
      kysely: () => this.kysely(),
      // Past the gate: provisioning and removal work on instances that are not ready, or disabled.
      runAs: (instance, fn) => enterContext(this, 'instance', instance, fn),
      migrate: async (instance, to) => {
        if (options.migrations?.instance === undefined) return
        const report = await this.migrate({ only: [instance.id], sets: 'instance', ...(to === undefined ? {} : { to }) })
        const failed = report.targets.find((target) => target.status !== 'success')
        if (failed !== undefined) throw failed.error ?? new Error(`the migrations of ${failed.target} ended ${failed.status}`)
      },
      appliedMigrations: async (instance) => {
        if (options.migrations?.instance === undefined) return undefined
        const [state] = await this.migrationStatus({ only: [instance.id] })
        if (state?.error !== undefined) throw state.error
        return state?.executed ?? []
      },
      instanceReady: () => { if (this.#discoversTables && !this.#closed) this.discoverTables().catch(() => {}) },
    }, options)
  }

  /** @internal What {@link doctor} reads of the options. */
  get doctorSettings (): DoctorSettings {
    return this.#doctorSettings
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
      dialect: new PostgresDialect({ pool: new RoutingPool(this.#pools, { settings: this.#settings, context, transactionPooling: this.#transactionPooling, preparedStatements: this.#preparedStatements }) }),
      plugins: [new InstanceFilterPlugin({ tables: () => this.#tenantTables!, tenantColumn: this.tenantColumn, rawSqlGuard: this.#rawSqlGuard, context })],
    })
    return this.#kysely as Kysely<DB>
  }

  /** The tenant tables the filter confines: the `tables` option, or those discovered. */
  get tenantTables (): TenantTables | undefined {
    return this.#tenantTables
  }

  /**
   * Reads the tenant tables from the catalog of every datasource an instance
   * uses (every schema), merges them and uses them from now on: after a
   * migration that adds a tenant table, when `watchTables` is off. A
   * datasource other than `default` that cannot be reached is left out: its
   * instances' queries may then name only tenant tables (others fail with
   * `TENANCY_UNKNOWN_TABLE`) until it is read, which is tried again every
   * second. Reads of one datasource run one at a time, and each new set of
   * tables replaces the last at once.
   */
  async discoverTables (): Promise<TenantTables> {
    this.#tableWatcher ??= new TableWatcher({
      pools: this.#pools,
      instances: this.instances,
      tenantColumn: this.tenantColumn,
      context: () => this.currentInstance(),
      publish: (tables) => { this.#tenantTables = tables },
    })
    return await this.#tableWatcher.discover()
  }

  /** @internal Start-up work of createTenancy: table discovery and watching, the strict parser. */
  async prepareTenantFilter (options: TenancyOptions): Promise<void> {
    if (options.tables === undefined) await this.discoverTables()
    if (options.watchTables ?? (options.tables === undefined && options.pgbouncer !== 'transaction')) await this.#tableWatcher!.watch(options.datasources, options.pool)
    if (this.#strict) this.#rawSqlGuard = await RawSqlGuard.load(() => this.#tenantTables!)
  }

  /**
   * Runs the `migrations` on every physical target, in parallel within the
   * pool budget, and returns one result per target instead of throwing: a
   * failing target stays at its last good migration and never stops the
   * others. When a migration ran, the tenant tables are discovered again
   * (unless the `tables` option lists them). Throws only before anything
   * runs: `TENANCY_UNKNOWN_INSTANCE` for an unknown name in `only`,
   * `TENANCY_INVALID_OPTIONS` for bad options.
   *
   * ```ts
   * const report = await tenancy.migrate({ concurrency: 8 })
   * for (const target of report.targets) if (target.status !== 'success') console.error(target.target, target.failedMigration, target.error)
   * ```
   */
  async migrate (options: FleetMigrateOptions = {}): Promise<MigrationReport> {
    if (this.#transactionPooling) throw new InvalidOptionsError('migrate() takes a session advisory lock per target, which PgBouncer\'s transaction pooling (pgbouncer: \'transaction\') cannot keep: run the migrations from a tenancy whose datasources are reached directly or through session pooling')
    const report = await this.#migrator.migrate(this.#pools, this.instances, options)
    if (report.changed && this.#discoversTables) {
      try {
        await this.discoverTables()
      } catch (err) {
        report.discoveryError = err
      }
    }
    return report
  }

  /** Each migration target's version (its last applied migration) and pending migrations. */
  async migrationStatus (options: MigrationStatusOptions = {}): Promise<TargetMigrationState[]> {
    return await this.#migrator.status(this.#pools, this.instances, options)
  }

  /**
   * The jobs layer over a pg-boss instance the application created: `send`
   * records the current instance in the job, `work` runs each job as its
   * instance, `schedule` keeps one cron entry per instance. The same object for
   * the same `boss`.
   *
   * ```ts
   * const jobs = tenancy.jobs(boss)
   * await jobs.work('report', async ([job]) => { await db.insertInto('report').values(job.data).execute() }) // runs as the sender's instance
   * ```
   */
  jobs (boss: PgBoss): InstanceJobs {
    return instanceJobs(this, boss)
  }

  /**
   * Creates an instance in the `instances` store (a {@link databaseStore}),
   * provisions it and returns it `ready` with its administrator's initial
   * password: `shared` makes nothing physical, `schema` a schema (and with
   * `role` a role of its own), `isolated` a database on one of `servers`; then
   * the instance migrations on its target, then `onProvision` as the instance.
   * With `from`, it is a copy of that schema or isolated instance: its rows,
   * sequences and migration state, the tenant column rewritten to the new id.
   * Requests to it get 503 `TENANCY_INSTANCE_NOT_READY` until it is ready. A
   * step that fails leaves it `failed` and throws; calling `createInstance`
   * again with the same name and mode resumes it. Every process sees it within
   * a second. A name taken (also by another process creating it now) throws
   * 409 `TENANCY_INSTANCE_EXISTS`; one differing only in case, or whose schema or
   * database would be another's, 400 `TENANCY_INVALID_INSTANCE_NAME`.
   *
   * ```ts
   * const { instance, password } = await tenancy.createInstance({ name: 'acme', mode: 'schema', title: 'Acme', role: true })
   * // create schema "tenant_acme"; create role "tenant_acme" login password 'SCRAM-SHA-256$…'; … migrations …
   * ```
   */
  async createInstance (input: CreateInstanceInput): Promise<CreatedInstance> {
    return await this.#lifecycle.create(input)
  }

  /**
   * Changes an instance's `title`, `config` (replaced whole) or `disabled`, in
   * every process within a second; its name, id, mode, schema, role, datasource
   * and server cannot change while it lives.
   *
   * ```ts
   * await tenancy.updateInstance('acme', { config: { plan: 'pro' }, disabled: false })
   * ```
   */
  async updateInstance (nameOrId: InstanceName | number, patch: InstancePatch): Promise<Instance> {
    return await this.#lifecycle.update(nameOrId, patch)
  }

  /**
   * Removes an instance: disables it first (new requests get 403), then with
   * `drop` deletes its rows from every tenant table (shared), drops its schema
   * and role (schema) or its database after closing its pool (isolated), and
   * deletes its record; without `drop` the record is marked removed and the
   * data stays. Only what provisioning made is dropped. Its id is never reused.
   *
   * ```ts
   * await tenancy.removeInstance('acme', { drop: true })
   * ```
   */
  async removeInstance (nameOrId: InstanceName | number, options: RemoveInstanceOptions = {}): Promise<void> {
    await this.#lifecycle.remove(nameOrId, options)
  }

  /**
   * Listens to the instances' changes, fired in every process that sees them:
   * `instanceCreated` (ready), `instanceUpdated`, `instanceRemoved`,
   * `provisionFailed`. A listener that throws is reported as a warning.
   *
   * ```ts
   * tenancy.on('instanceCreated', (instance) => { console.log('new instance', instance.name) })
   * ```
   */
  on<E extends keyof TenancyEvents> (event: E, listener: (...args: TenancyEvents[E]) => void): this {
    this.#lifecycle.events.on(event, listener as (...args: unknown[]) => void)
    return this
  }

  /** Stops `listener` listening to `event`. */
  off<E extends keyof TenancyEvents> (event: E, listener: (...args: TenancyEvents[E]) => void): this {
    this.#lifecycle.events.off(event, listener as (...args: unknown[]) => void)
    return this
  }

  /** @internal Start-up work of createTenancy: the instance store's table, seeds and rows. */
  async openInstances (): Promise<void> {
    await this.#lifecycle.start()
  }

  /** Ends every pool this tenancy opened. Safe to call twice. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#lifecycle.close()
    await this.#tableWatcher?.close()
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
    await tenancy.openInstances()
    await tenancy.prepareTenantFilter(options)
    const mode = options.doctor ?? 'warn'
    if (mode !== false) {
      const findings = await doctor(tenancy, { migrations: false, isolated: false })
      if (mode === 'throw' && findings.length > 0) {
        throw Object.assign(new DoctorError(findings.map((finding) => `${finding.message} ${finding.fix}`).join(' ')), { findings })
      }
      warnFindings(findings)
    }
  } catch (err) {
    await tenancy.close()
    throw err
  }
  return tenancy
}
