import pg from 'pg'
import type { MigrationProvider, MigrationResult, NoMigrations } from 'kysely/migration'
import { DatasourceUnavailableError, InvalidOptionsError, UnknownInstanceError, quote } from '../errors.js'
import { SAFE_IDENTIFIER } from '../instances/instance.js'
import type { InstanceStore } from '../instances/instance-registry.js'
import { DEFAULT_POOL_SETTINGS, type DatasourceConfig, type Lease, type PoolManager, type PoolSettings } from '../routing/pool-manager.js'
import { HOST_TARGET, migrationTargets, type MigrationTarget, type MigrationTargetKind } from './migration-target.js'
import { migrateTarget, readTargetStatus, type MigrationGoal, type MigrationTables } from './target-migration.js'

/**
 * The `migrations` option of `createTenancy`: two Kysely `MigrationProvider`s
 * (`FileMigrationProvider`, or in-code records).
 *
 * ```ts
 * migrations: {
 *   instance: new FileMigrationProvider({ fs, path, migrationFolder: path.resolve('migrations/instance') }),
 *   host: { getMigrations: async () => ({ '001_plan': { up: async (db) => { await db.schema.createTable('plan').addColumn('id', 'integer').execute() } } }) },
 * }
 * ```
 */
export interface MigrationsOption {
  /**
   * Runs on every physical target: the shared tables of each datasource once,
   * each schema instance's schema, each isolated instance's database.
   * Defaults to none.
   */
  instance?: MigrationProvider
  /** Runs once on the default datasource, for the tables of no instance. Defaults to none. */
  host?: MigrationProvider
  /**
   * The migration table of the `instance` set, kept in each target (in schema
   * mode inside the schema); its lock table is `<tableName>_lock`. Defaults to
   * `'kysely_migration'`, Kysely's own, so a single-database application keeps
   * its history when its database becomes the shared target.
   */
  tableName?: string
  /** The migration table of the `host` set; its lock table is `<hostTableName>_lock`. Defaults to `'tenancy_host_migration'`. */
  hostTableName?: string
}

/** Which migration set a run covers. */
export type MigrationSet = 'host' | 'instance'

/** Options of `tenancy.migrate()`. */
export interface FleetMigrateOptions {
  /**
   * Only the targets of these instances (names or ids); a shared target is
   * migrated for all its instances. An unknown one throws
   * `TENANCY_UNKNOWN_INSTANCE` before anything runs. Defaults to every target.
   */
  only?: ReadonlyArray<string | number>
  /**
   * `'all'`: the host set on the default datasource first, then the instance
   * set on every target; `'instance'` or `'host'` alone. Defaults to `'all'`,
   * or to `'instance'` when `only` or `to` is given.
   */
  sets?: 'all' | MigrationSet
  /**
   * Where each target should end: `'previous'` reverts its last migration, a
   * migration's name migrates it up or down until that is its last one, and
   * Kysely's `NO_MIGRATIONS` reverts everything. Defaults to the latest.
   */
  to?: string | NoMigrations
  /**
   * Targets run at once, each on one connection of its datasource's pool. It
   * is capped at `maxPools × pool.max`; besides, at most half of a pool's
   * connections (at least one) serve migrations, so the application keeps the
   * rest, and at most `maxPools` datasources are in use at a time. Defaults to
   * `maxPools × max(1, floor(pool.max / 2))`.
   */
  concurrency?: number
  /** Called at each target's start, after each migration and at each target's end; its errors are ignored. Defaults to none. */
  onProgress?: (event: MigrationProgress) => void
  /**
   * Stops the run: targets running finish the migration they are in and stop,
   * no new target starts, and those are reported `not-reached`. Defaults to none.
   */
  signal?: AbortSignal
}

/** Options of `tenancy.migrationStatus()`. */
export interface MigrationStatusOptions {
  /** As in {@link FleetMigrateOptions.only}. Defaults to every target. */
  only?: ReadonlyArray<string | number>
  /** As in {@link FleetMigrateOptions.concurrency}. */
  concurrency?: number
}

/**
 * How one target's run ended: `success` (including nothing to do), `error` (a
 * migration or the target's session failed; it stays at its last good
 * migration), `unavailable` (its database could not be reached: 503),
 * `aborted` (stopped by the signal between two migrations), `not-reached`
 * (the signal came before it started).
 */
export type TargetMigrationStatus = 'success' | 'error' | 'unavailable' | 'aborted' | 'not-reached'

/** One target's line of a {@link MigrationReport}. */
export interface TargetMigrationResult {
  /** The target's key, e.g. `schema:default.tenant_acme`. */
  readonly target: string
  readonly kind: MigrationTargetKind
  readonly set: MigrationSet
  readonly datasource: string
  /** The schema holding the target's migration tables, once known. */
  readonly schema: string | null
  readonly instances: readonly string[]
  readonly status: TargetMigrationStatus
  /** Kysely's results, in the order they ran; the rest of the plan is `NotExecuted`. */
  readonly results: readonly MigrationResult[]
  /** The migration that failed (status `error`). */
  readonly failedMigration?: string
  /** What went wrong: the migration's own error, or 503 `TENANCY_DATASOURCE_UNAVAILABLE` with the cause. */
  readonly error?: unknown
}

/** What `tenancy.migrate()` returns instead of throwing. */
export interface MigrationReport {
  /** Every target reached ended in `success`. */
  readonly ok: boolean
  /** At least one migration ran. */
  readonly changed: boolean
  /** One result per target, host first, then in configuration order. */
  readonly targets: readonly TargetMigrationResult[]
  /** The keys of the targets the signal kept from starting. */
  readonly notReached: readonly string[]
  /** Set when the tenant tables could not be discovered again after the run. */
  discoveryError?: unknown
}

/** One event of `onProgress`. */
export type MigrationProgress =
  | { readonly type: 'target-start', readonly target: MigrationTarget, readonly set: MigrationSet, readonly direction: 'Up' | 'Down', readonly plan: readonly string[], readonly total: number }
  | { readonly type: 'migration', readonly target: MigrationTarget, readonly set: MigrationSet, readonly result: MigrationResult }
  | { readonly type: 'target-end', readonly result: TargetMigrationResult, readonly done: number, readonly total: number }

/** One target's line of `tenancy.migrationStatus()`. */
export interface TargetMigrationState {
  readonly target: string
  readonly kind: MigrationTargetKind
  readonly set: MigrationSet
  readonly datasource: string
  readonly schema: string | null
  readonly instances: readonly string[]
  /** The last applied migration, or `null`. */
  readonly version: string | null
  readonly executed: readonly string[]
  readonly pending: readonly string[]
  /** Set when the target could not be read (503 when its database is down). */
  readonly error?: unknown
}

/** What the fleet migrator needs of `createTenancy`'s options. */
export interface FleetMigratorOptions {
  migrations?: MigrationsOption
  datasources: Record<string, DatasourceConfig>
  maxPools?: number
  pool?: PoolSettings
}

interface Job {
  readonly target: MigrationTarget
  readonly set: MigrationSet
}

/** Leases a target may take under the budget, and runs work on targets within it. */
interface Budget {
  readonly concurrency: number
  perDatasource (datasource: string): number
  readonly maxPools: number
}

function providerOf (value: unknown, name: string): MigrationProvider | undefined {
  if (value === undefined) return undefined
  if (value === null || typeof value !== 'object' || typeof (value as MigrationProvider).getMigrations !== 'function') {
    throw new InvalidOptionsError(`migrations.${name} must be a Kysely MigrationProvider (an object with getMigrations())`)
  }
  return value as MigrationProvider
}

function tableName (value: unknown, name: string, fallback: string): string {
  if (value === undefined) return fallback
  if (typeof value !== 'string' || !SAFE_IDENTIFIER.test(value) || value.length > 58) {
    throw new InvalidOptionsError(`migrations.${name} ${JSON.stringify(value)} must be a safe table name of at most 58 characters (its lock table adds "_lock")`)
  }
  return value
}

/** A provider read once per run, so every target of the run sees the same migrations. */
function once (provider: MigrationProvider): MigrationProvider {
  let migrations: ReturnType<MigrationProvider['getMigrations']> | undefined
  return { getMigrations: () => (migrations ??= provider.getMigrations()) }
}

function safely (onProgress: ((event: MigrationProgress) => void) | undefined, event: MigrationProgress): void {
  if (onProgress === undefined) return
  try {
    onProgress(event)
  } catch {
    // A progress bar must not stop a migration.
  }
}

/**
 * Migrates every physical target of a tenancy with Kysely's Migrator: the
 * `host` set once on the default datasource, the `instance` set on each
 * target of {@link migrationTargets}, in parallel within the pool budget.
 * Each target keeps its own migration and lock tables and its own lock, runs
 * each migration in its own transaction, and fails alone. `tenancy.migrate()`
 * and `tenancy.migrationStatus()` call it.
 *
 * ```ts
 * const report = await new FleetMigrator(options).migrate(tenancy.pools, tenancy.instances, { concurrency: 4 })
 * report.targets.filter((target) => target.status !== 'success')
 * ```
 */
export class FleetMigrator {
  readonly #instance: MigrationProvider | undefined
  readonly #host: MigrationProvider | undefined
  readonly #instanceTables: MigrationTables
  readonly #hostTables: MigrationTables
  readonly #datasources: Record<string, DatasourceConfig>
  readonly #poolMax: number
  readonly #maxPools: number

  constructor (options: FleetMigratorOptions) {
    const migrations = options.migrations === undefined ? {} : options.migrations
    if (migrations === null || typeof migrations !== 'object') throw new InvalidOptionsError('migrations must be an object: { instance, host }')
    for (const key of Object.keys(migrations)) {
      if (!['instance', 'host', 'tableName', 'hostTableName'].includes(key)) throw new InvalidOptionsError(`migrations.${key} is not an option (instance, host, tableName, hostTableName)`)
    }
    this.#instance = providerOf(migrations.instance, 'instance')
    this.#host = providerOf(migrations.host, 'host')
    const table = tableName(migrations.tableName, 'tableName', 'kysely_migration')
    const hostTable = tableName(migrations.hostTableName, 'hostTableName', 'tenancy_host_migration')
    const internal = [table, `${table}_lock`, hostTable, `${hostTable}_lock`]
    if (new Set(internal).size !== internal.length) throw new InvalidOptionsError('migrations.tableName and migrations.hostTableName must name different tables')
    this.#instanceTables = { table, lockTable: `${table}_lock`, internal }
    this.#hostTables = { table: hostTable, lockTable: `${hostTable}_lock`, internal }
    this.#datasources = options.datasources
    this.#poolMax = options.pool?.max ?? DEFAULT_POOL_SETTINGS.max
    this.#maxPools = options.maxPools ?? 10
  }

  /** Runs the migrations; see {@link FleetMigrateOptions}. Throws only for bad options, before anything runs. */
  async migrate (pools: PoolManager, instances: InstanceStore, options: FleetMigrateOptions = {}): Promise<MigrationReport> {
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('migrate() takes an options object')
    const { onProgress, signal } = options
    if (onProgress !== undefined && typeof onProgress !== 'function') throw new InvalidOptionsError('onProgress must be a function')
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidOptionsError('signal must be an AbortSignal')
    const sets = this.#sets(options)
    const jobs = this.#jobs(instances, options.only, sets)
    const budget = this.#budget(options.concurrency)
    const providers = { host: this.#host && once(this.#host), instance: this.#instance && once(this.#instance) }
    // A provider that cannot list its migrations fails every target alike: say so once, before anything runs.
    for (const set of sets) await providers[set]!.getMigrations()
    const goal = await goalOf(options.to, sets[0]!, providers[sets[0]!]!)

    const total = jobs.length
    const results = new Map<Job, TargetMigrationResult>()
    let done = 0
    const finish = (result: TargetMigrationResult): void => {
      done++
      safely(onProgress, { type: 'target-end', result, done, total })
    }
    const work = async (job: Job, lease: Lease): Promise<boolean> => {
      const { target, set } = job
      const watch = watchConnection(lease.client)
      const outcome = await migrateTarget(lease.client, target, providers[set]!, set === 'host' ? this.#hostTables : this.#instanceTables, goal, signal, {
        onStart: (plan, direction) => { safely(onProgress, { type: 'target-start', target, set, direction, plan, total }) },
        onMigration: (result) => { safely(onProgress, { type: 'migration', target, set, result }) },
      })
      const lost = outcome.status === 'error' && watch.lost(outcome.error)
      const result: TargetMigrationResult = {
        ...describe(job),
        schema: outcome.schema,
        status: lost ? 'unavailable' : outcome.status,
        results: outcome.results,
        ...(outcome.failedMigration === undefined ? {} : { failedMigration: outcome.failedMigration }),
        ...(outcome.error === undefined ? {} : { error: lost ? Object.assign(new DatasourceUnavailableError(quote(labelOf(target))), { cause: outcome.error }) : outcome.error }),
      }
      watch.stop()
      results.set(job, result)
      finish(result)
      return outcome.status !== 'error'
    }
    const unreachable = (job: Job, error: unknown): void => {
      const result: TargetMigrationResult = { ...describe(job), schema: job.target.schema, status: error instanceof DatasourceUnavailableError ? 'unavailable' : 'error', results: [], error }
      results.set(job, result)
      finish(result)
    }
    // The host set first and alone: instance tables may refer to host tables.
    const host = jobs.filter((job) => job.set === 'host')
    const rest = jobs.filter((job) => job.set !== 'host')
    await runWithin(pools, budget, host, signal, work, unreachable)
    await runWithin(pools, budget, rest, signal, work, unreachable)

    const targets = jobs.map((job) => results.get(job) ?? { ...describe(job), schema: job.target.schema, status: 'not-reached' as const, results: [] })
    for (const job of jobs) if (!results.has(job)) finish(targets[jobs.indexOf(job)]!)
    return {
      ok: targets.every((target) => target.status === 'success'),
      changed: targets.some((target) => target.results.some((result) => result.status === 'Success')),
      targets,
      notReached: targets.filter((target) => target.status === 'not-reached').map((target) => target.target),
    }
  }

  /** Each target's version and pending migrations. Throws only for bad options. */
  async status (pools: PoolManager, instances: InstanceStore, options: MigrationStatusOptions = {}): Promise<TargetMigrationState[]> {
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('migrationStatus() takes an options object')
    const sets: MigrationSet[] = []
    if (this.#host !== undefined && options.only === undefined) sets.push('host')
    if (this.#instance !== undefined) sets.push('instance')
    if (sets.length === 0) throw new InvalidOptionsError('no migrations are configured: give createTenancy a migrations option')
    const jobs = this.#jobs(instances, options.only, sets)
    const budget = this.#budget(options.concurrency)
    const providers = { host: this.#host && once(this.#host), instance: this.#instance && once(this.#instance) }
    const states = new Map<Job, TargetMigrationState>()
    await runWithin(pools, budget, jobs, undefined, async (job, lease) => {
      const watch = watchConnection(lease.client)
      try {
        const state = await readTargetStatus(lease.client, job.target, providers[job.set]!, job.set === 'host' ? this.#hostTables : this.#instanceTables)
        states.set(job, { ...describe(job), schema: state.schema, version: state.executed.at(-1) ?? null, executed: state.executed, pending: state.pending })
        return true
      } catch (err) {
        const error = watch.lost(err) ? Object.assign(new DatasourceUnavailableError(quote(labelOf(job.target))), { cause: err }) : err
        states.set(job, { ...describe(job), schema: job.target.schema, version: null, executed: [], pending: [], error })
        return false
      } finally {
        watch.stop()
      }
    }, (job, error) => {
      states.set(job, { ...describe(job), schema: job.target.schema, version: null, executed: [], pending: [], error })
    })
    return jobs.map((job) => states.get(job)!)
  }

  #sets (options: FleetMigrateOptions): MigrationSet[] {
    const narrowed = options.only !== undefined || options.to !== undefined
    const sets = options.sets ?? (narrowed ? 'instance' : 'all')
    if (sets !== 'all' && sets !== 'instance' && sets !== 'host') throw new InvalidOptionsError(`sets must be "all", "instance" or "host", not ${quote(sets)}`)
    if (sets === 'all' && narrowed) throw new InvalidOptionsError('only and to apply to one migration set: give sets: "instance" or "host"')
    if (sets === 'host' && options.only !== undefined) throw new InvalidOptionsError('only names instances: the host set has none')
    const wanted: MigrationSet[] = sets === 'all' ? ['host', 'instance'] : [sets]
    const present = wanted.filter((set) => (set === 'host' ? this.#host : this.#instance) !== undefined)
    if (present.length === 0) {
      throw new InvalidOptionsError(sets === 'all' ? 'no migrations are configured: give createTenancy a migrations option' : `no ${sets} migrations are configured (migrations.${sets})`)
    }
    return present
  }

  #jobs (instances: InstanceStore, only: FleetMigrateOptions['only'], sets: readonly MigrationSet[]): Job[] {
    const jobs: Job[] = []
    if (sets.includes('host')) jobs.push({ target: HOST_TARGET, set: 'host' })
    if (!sets.includes('instance')) return jobs
    let targets = migrationTargets(instances.list())
    if (only !== undefined) {
      if (!Array.isArray(only)) throw new InvalidOptionsError('only must be an array of instance names or ids')
      const chosen = new Set<string>()
      for (const nameOrId of only) {
        const instance = typeof nameOrId === 'number' ? instances.byId(nameOrId) : typeof nameOrId === 'string' ? instances.byName(nameOrId) : undefined
        if (instance === undefined) throw new UnknownInstanceError(quote(nameOrId))
        chosen.add(instance.name)
      }
      targets = targets.filter((target) => target.instances.some((name) => chosen.has(name)))
    }
    for (const target of targets) jobs.push({ target, set: 'instance' })
    return jobs
  }

  #budget (concurrency: number | undefined): Budget {
    const maxPools = this.#maxPools
    const half = (max: number): number => Math.max(1, Math.floor(max / 2))
    const ceiling = maxPools * this.#poolMax
    if (concurrency !== undefined && !(Number.isSafeInteger(concurrency) && concurrency > 0)) {
      throw new InvalidOptionsError(`concurrency must be a positive integer, not ${JSON.stringify(concurrency)}`)
    }
    return {
      concurrency: Math.min(concurrency ?? maxPools * half(this.#poolMax), ceiling),
      maxPools,
      perDatasource: (datasource) => {
        const config = this.#datasources[datasource]
        const own = config !== null && typeof config === 'object' ? config.max : undefined
        return half(own ?? this.#poolMax)
      },
    }
  }
}

async function goalOf (to: FleetMigrateOptions['to'], set: MigrationSet, provider: MigrationProvider): Promise<MigrationGoal> {
  if (to === undefined) return { kind: 'latest' }
  if (to === 'previous') return { kind: 'previous' }
  if (to !== null && typeof to === 'object' && (to as NoMigrations).__noMigrations__ === true) return { kind: 'none' }
  if (typeof to !== 'string') throw new InvalidOptionsError('to must be "previous", a migration name or NO_MIGRATIONS')
  if (!Object.keys(await provider.getMigrations()).includes(to)) throw new InvalidOptionsError(`to: there is no ${set} migration named ${quote(to)}`)
  return { kind: 'name', name: to }
}

/**
 * Follows a leased client while a target runs on it: the connection is lost
 * when the client reported an error or its end meanwhile, or when the server
 * answered with a connection exception (08) or a session-ending intervention
 * (57P), as opposed to a statement it refused.
 */
function watchConnection (client: pg.ClientBase): { lost (err: unknown): boolean, stop (): void } {
  let gone = false
  const mark = (): void => { gone = true }
  client.on('error', mark)
  client.on('end', mark)
  return {
    lost: (err) => gone || (err instanceof pg.DatabaseError && /^(08|57P)/.test(err.code ?? '')),
    stop: () => {
      client.off('error', mark)
      client.off('end', mark)
    },
  }
}

function describe ({ target, set }: Job): Pick<TargetMigrationResult, 'target' | 'kind' | 'set' | 'datasource' | 'instances'> {
  return { target: target.key, kind: target.kind, set, datasource: target.datasource, instances: target.instances }
}

function labelOf (target: MigrationTarget): string {
  return target.instances.length > 0 ? target.instances.join(', ') : target.datasource
}

/**
 * Runs `work` on each job within the budget: at most `concurrency` at once, at
 * most `perDatasource` of one datasource, at most `maxPools` datasources. A
 * job's connection goes on to the next job of the same datasource when `work`
 * says it is healthy, and is destroyed otherwise and at the end: its
 * `search_path` was changed, and the application's pools must never see it.
 * No job starts once `signal` is aborted.
 */
async function runWithin (pools: PoolManager, budget: Budget, jobs: readonly Job[], signal: AbortSignal | undefined,
  work: (job: Job, lease: Lease) => Promise<boolean>, unreachable: (job: Job, error: unknown) => void): Promise<void> {
  const queue = [...jobs]
  const running = new Map<string, number>()
  let active = 0
  const eligible = (job: Job): boolean => {
    const count = running.get(job.target.datasource) ?? 0
    return count < budget.perDatasource(job.target.datasource) && (count > 0 || running.size < budget.maxPools)
  }
  const take = (datasource?: string): Job | undefined => {
    const index = queue.findIndex((job) => (datasource === undefined || job.target.datasource === datasource) && eligible(job))
    return index < 0 ? undefined : queue.splice(index, 1)[0]
  }
  await new Promise<void>((resolve) => {
    const launch = (): void => {
      while (active < budget.concurrency && signal?.aborted !== true) {
        const job = take()
        if (job === undefined) break
        start(job, undefined)
      }
      if (active === 0 && (queue.length === 0 || signal?.aborted === true)) resolve()
    }
    const start = (job: Job, held: Lease | undefined): void => {
      const datasource = job.target.datasource
      active++
      running.set(datasource, (running.get(datasource) ?? 0) + 1)
      void run(job, held).then((lease) => {
        active--
        const left = running.get(datasource)! - 1
        if (left === 0) running.delete(datasource)
        else running.set(datasource, left)
        const next = lease !== undefined && signal?.aborted !== true ? take(datasource) : undefined
        if (next !== undefined) start(next, lease)
        else if (lease !== undefined) pools.release(lease, true)
        launch()
      })
    }
    const run = async (job: Job, held: Lease | undefined): Promise<Lease | undefined> => {
      let lease = held
      if (lease === undefined) {
        try {
          lease = await pools.acquire(job.target.datasource, labelOf(job.target))
        } catch (err) {
          unreachable(job, err)
          return undefined
        }
      }
      let healthy = false
      try {
        healthy = await work(job, lease)
      } catch (err) {
        unreachable(job, err)
      }
      if (healthy) return lease
      pools.release(lease, true)
      return undefined
    }
    launch()
  })
}
