// Types only: pg-boss is the application's dependency, never loaded by this module.
import type { InsertOptions, Job, JobInsert, JobResult, PgBoss, Request, Schedule, ScheduleOptions, SendOptions, WorkHandler, WorkHandlerFor, WorkOptions } from 'pg-boss'
import { InvalidOptionsError } from '../errors.js'
import type { InstanceName } from '../instances/instance.js'
import { currentJobTarget, runInTarget, unwrapJobData, wrapFor, type JobTarget, type JobTenancy } from './job-context.js'

/** Options of {@link InstanceJobs.schedule}: pg-boss's `ScheduleOptions` plus the instances. */
export type InstanceScheduleOptions = ScheduleOptions & {
  /**
   * Which instances get the schedule, each with a cron entry of its own:
   * `'all'` (every enabled instance of the store, kept in step with it by
   * {@link InstanceJobs.refresh}), a list of names or ids, or, when omitted,
   * the current context's instance (host context inside `runAsHost`).
   * Defaults to the current context.
   */
  instances?: 'all' | ReadonlyArray<InstanceName | number>
}

/** Options of {@link InstanceJobs.unschedule}. */
export interface InstanceUnscheduleOptions {
  /** The `key` the schedule was made with. Defaults to none. */
  key?: string
  /** As in {@link InstanceScheduleOptions.instances}; `'all'` removes every instance's entry and stops following the store. Defaults to the current context. */
  instances?: 'all' | ReadonlyArray<InstanceName | number>
}

/** What a schedule call or {@link InstanceJobs.refresh} changed in pg-boss's schedule table. */
export interface ScheduleChanges {
  /** Cron entries created or updated. */
  scheduled: number
  /** Cron entries removed. */
  unscheduled: number
}

interface Followed {
  readonly name: string
  readonly cron: string
  readonly data: object | null | undefined
  readonly options: ScheduleOptions
  readonly key: string
}

const HOST_KEY = 'host'
const PAGE = 1000

/** The pg-boss schedule key of one instance's (or the host's) entry: `instance/2`, `nightly/instance/2`, `host`. */
export function scheduleKey (key: string | undefined, target: JobTarget): string {
  const own = 'host' in target ? HOST_KEY : `instance/${target.instance}`
  return key ? `${key}/${own}` : own
}

/** The instance id of a key made by {@link scheduleKey} for `key`, `'host'`, or `undefined` for a key that is not one. */
function parseKey (key: string | undefined, stored: string): number | 'host' | undefined {
  const prefix = key ? `${key}/` : ''
  if (!stored.startsWith(prefix)) return undefined
  const own = stored.slice(prefix.length)
  if (own === HOST_KEY) return 'host'
  const match = /^instance\/([1-9][0-9]{0,15})$/.exec(own)
  return match ? Number(match[1]) : undefined
}

function checkKey (key: unknown): string | undefined {
  if (key === undefined || key === '') return undefined
  if (typeof key !== 'string') throw new InvalidOptionsError('a schedule key must be a string')
  return key
}

const STORE_EVENTS = ['instanceCreated', 'instanceUpdated', 'instanceRemoved'] as const

type AnyHandler = (jobs: Job<any>[], tx?: any) => any

/**
 * pg-boss with the instance: jobs sent inside an instance's context run in it,
 * every cron entry belongs to one instance. Made by `tenancy.jobs(boss)`; the
 * `boss` is the application's, created, started and stopped by it.
 *
 * ```ts
 * const jobs = tenancy.jobs(boss)
 * await jobs.work('welcome', async ([job]) => {
 *   await db.insertInto('mail').values({ to: job.data.to }).execute() // insert into "mail" ("to", "iid") values ($1, $2) -- [.., 2]
 * })
 * await tenancy.runAsInstance('acme', () => jobs.send('welcome', { to: 'a@acme.test' }))
 * ```
 */
export class InstanceJobs {
  /** The pg-boss instance, for everything this layer does not wrap. */
  readonly boss: PgBoss
  readonly #tenancy: JobTenancy
  readonly #followed = new Map<string, Followed>()
  #following: Promise<void> = Promise.resolve()

  /** @internal use `tenancy.jobs(boss)` */
  constructor (tenancy: JobTenancy, boss: PgBoss) {
    if (boss === null || typeof boss !== 'object' || typeof boss.send !== 'function' || typeof boss.work !== 'function') {
      throw new InvalidOptionsError('jobs() needs a PgBoss instance')
    }
    this.#tenancy = tenancy
    this.boss = boss
    if (typeof tenancy.on === 'function') {
      const follow = (): void => { this.#followStore() }
      for (const event of STORE_EVENTS) tenancy.on(event, follow)
      // A stopped boss has no schedule table to write to: stop following then.
      if (typeof boss.once === 'function') {
        boss.once('stopped', () => { for (const event of STORE_EVENTS) tenancy.off?.(event, follow) })
      }
    }
  }

  /**
   * A change of the store (an instance created, updated or removed, in this
   * process or another) brings the `instances: 'all'` schedules in step, one
   * refresh after the other; a failure is reported as a warning, and the next
   * change or a {@link refresh} call tries again.
   */
  #followStore (): void {
    if (this.#followed.size === 0) return
    this.#following = this.#following.then(() => this.refresh()).then(() => undefined, (err: unknown) => {
      process.emitWarning(`The schedules of all instances could not follow a change of the instances: ${err instanceof Error ? err.message : String(err)}`)
    })
  }

  /**
   * `boss.send()` with the current context recorded in the job's data under
   * `__tenancy` (the instance's id, or `{ host: true }` inside `runAsHost`).
   * Throws `TENANCY_NO_CONTEXT` outside any instance, before anything is sent.
   * A payload of `null` or nothing arrives as `{}`.
   *
   * ```ts
   * await tenancy.runAsInstance('acme', () => jobs.send('report', { day: '2026-11-23' }, { retryLimit: 3 }))
   * // job.data: { day: '2026-11-23', __tenancy: { instance: 2 } }
   * ```
   */
  async send (request: Request): Promise<string | null>
  async send (name: string, data?: object | null, options?: SendOptions): Promise<string | null>
  async send (nameOrRequest: string | Request, data?: object | null, options?: SendOptions): Promise<string | null> {
    const target = currentJobTarget(this.#tenancy)
    if (typeof nameOrRequest === 'object' && nameOrRequest !== null) {
      return await this.boss.send({ ...nameOrRequest, data: wrapFor(target, nameOrRequest.data) })
    }
    return await this.boss.send(nameOrRequest, wrapFor(target, data), options)
  }

  /** `boss.insert()` with the current context recorded in every job's data, as {@link send} does. */
  async insert (name: string, jobs: JobInsert[], options?: InsertOptions): Promise<string[] | null> {
    const target = currentJobTarget(this.#tenancy)
    return await this.boss.insert(name, jobs.map((job) => ({ ...job, data: wrapFor(target, job.data) })), options)
  }

  /**
   * `boss.work()`, each job run in the context it was sent from: as its
   * instance through `runAsInstance` (so every query of the handler is
   * confined), or in host context. Handlers get the data without `__tenancy`.
   * A job whose data names no valid id fails with `TENANCY_INVALID_JOB`, one
   * whose instance is unknown, removed or disabled with that error; the
   * handler never sees them, and pg-boss retries and dead-letters them as
   * usual.
   *
   * With `batchSize > 1` a batch is split by context: the handler is called
   * once per instance with that instance's jobs, in its context, one call
   * after the other, and each job is settled on its own (pg-boss's
   * `perJobResults`): a refused job or a failing instance never fails the
   * others. A handler that asks for `perJobResults` itself returns the results
   * of the jobs it was given. `transactional` workers take one job at a time.
   *
   * ```ts
   * await jobs.work('report', { batchSize: 20 }, async (batch) => {
   *   // every job of `batch` belongs to the current instance
   *   await db.insertInto('report').values(batch.map((job) => ({ day: job.data.day }))).execute()
   * })
   * ```
   */
  async work<ReqData, ResData = any> (name: string, handler: WorkHandler<ReqData, ResData>): Promise<string>
  async work<ReqData, ResData = any, const O extends WorkOptions = WorkOptions> (name: string, options: O, handler: WorkHandlerFor<O, ReqData, ResData>): Promise<string>
  async work (name: string, optionsOrHandler: WorkOptions | AnyHandler, maybeHandler?: unknown): Promise<string> {
    const options: WorkOptions = typeof optionsOrHandler === 'function' ? {} : (optionsOrHandler ?? {})
    const handler = (typeof optionsOrHandler === 'function' ? optionsOrHandler : maybeHandler) as AnyHandler
    if (typeof handler !== 'function') throw new InvalidOptionsError('work() needs a handler function')
    const batched = (options.batchSize ?? 1) > 1
    if (!batched) {
      // batchSize 1: pg-boss hands over one job. Async, so a refused job rejects
      // and takes pg-boss's ordinary failure path (retry, dead letter).
      return await this.boss.work(name, options, async ([job]: Job<any>[], tx?: unknown) => {
        const { target, data } = unwrapJobData(job!.data)
        return await runInTarget(this.#tenancy, target, () => handler([{ ...job!, data }], tx))
      })
    }
    if (options.transactional === true) {
      throw new InvalidOptionsError('a transactional worker takes one job at a time (batchSize 1): a batch commits as one, so a job whose instance is refused would fail the jobs of every other instance with it')
    }
    return await this.boss.work(name, { ...options, perJobResults: true }, (jobs: Job<any>[]) => this.#runBatch(jobs, handler, options.perJobResults === true))
  }

  async #runBatch (jobs: Job<any>[], handler: AnyHandler, ownResults: boolean): Promise<JobResult[]> {
    const results: JobResult[] = []
    const groups = new Map<string, { target: JobTarget, jobs: Job<any>[] }>()
    for (const job of jobs) {
      let target: JobTarget
      let data: unknown
      try {
        ({ target, data } = unwrapJobData(job.data))
        // The gate, before grouping: a refused job must not take its group down with it.
        if (!('host' in target)) this.#tenancy.getInstance(target.instance)
      } catch (err) {
        results.push({ id: job.id, status: 'failed', output: err })
        continue
      }
      const key = 'host' in target ? HOST_KEY : String(target.instance)
      let group = groups.get(key)
      if (group === undefined) groups.set(key, group = { target, jobs: [] })
      group.jobs.push({ ...job, data })
    }
    for (const group of groups.values()) {
      try {
        const output = await runInTarget(this.#tenancy, group.target, () => handler(group.jobs))
        if (ownResults) {
          const ids = new Set(group.jobs.map((job) => job.id))
          // Only results for this group's jobs: a handler must not settle another instance's job.
          if (Array.isArray(output)) for (const result of output as JobResult[]) if (ids.has(result?.id)) results.push(result)
        } else {
          for (const job of group.jobs) results.push({ id: job.id, status: 'completed', output: group.jobs.length === 1 ? output : undefined })
        }
      } catch (err) {
        for (const job of group.jobs) results.push({ id: job.id, status: 'failed', output: err })
      }
    }
    return results
  }

  /**
   * `boss.schedule()` once per instance: each instance gets a cron entry of
   * its own (key `instance/<id>`, or `<key>/instance/<id>` with `key`), whose
   * jobs run as that instance. With `instances: 'all'` every enabled instance
   * of the store is scheduled and {@link refresh} keeps the entries in step
   * with it. One cron pass for the whole fleet runs, however many processes
   * call this: pg-boss elects it, and upserts an entry by its key.
   * Throws `TENANCY_UNKNOWN_INSTANCE` / `TENANCY_INSTANCE_DISABLED` for a
   * listed instance, `TENANCY_NO_CONTEXT` without `instances` outside any
   * instance, before anything is scheduled.
   *
   * ```ts
   * await jobs.schedule('nightly', '0 3 * * *', { full: true }, { instances: 'all', tz: 'Europe/Berlin' })
   * // pgboss.schedule: ('nightly', 'instance/1', …), ('nightly', 'instance/2', …), …
   * ```
   */
  async schedule (name: string, cron: string, data?: object | null, options: InstanceScheduleOptions = {}): Promise<ScheduleChanges> {
    const { instances, key: rawKey, ...rest } = options ?? {}
    const key = checkKey(rawKey)
    if (instances === 'all') {
      const followed: Followed = { name, cron, data, options: rest, key: key ?? '' }
      const changes = await this.#sync(followed, true)
      this.#followed.set(JSON.stringify([name, key ?? '']), followed)
      return changes
    }
    const targets = this.#targets(instances)
    for (const target of targets) await this.#scheduleOne(name, cron, data, rest, key, target)
    return { scheduled: targets.length, unscheduled: 0 }
  }

  /**
   * Removes the cron entries {@link schedule} made for `name`: those of the
   * listed instances, of the current context's instance, or with
   * `instances: 'all'` every instance's (and stops following the store).
   */
  async unschedule (name: string, options: InstanceUnscheduleOptions = {}): Promise<ScheduleChanges> {
    const key = checkKey(options.key)
    if (options.instances === 'all') {
      this.#followed.delete(JSON.stringify([name, key ?? '']))
      let unscheduled = 0
      for (const entry of await this.#entries(name, key)) {
        await this.boss.unschedule(name, entry.stored)
        unscheduled++
      }
      return { scheduled: 0, unscheduled }
    }
    const targets = this.#targets(options.instances, true)
    for (const target of targets) await this.boss.unschedule(name, scheduleKey(key, target))
    return { scheduled: 0, unscheduled: targets.length }
  }

  /**
   * Brings every `instances: 'all'` schedule of this process in step with the
   * store: an instance that is new (or enabled again) gets its entry, one that
   * was removed or disabled loses it. With `databaseStore()` this runs by
   * itself on each `instanceCreated`, `instanceUpdated` and `instanceRemoved`
   * (in every process that sees the change); call it for a store of your own
   * when it changes (or on a timer), and with a list of instances given in
   * configuration, after a restart.
   */
  async refresh (): Promise<ScheduleChanges> {
    const total: ScheduleChanges = { scheduled: 0, unscheduled: 0 }
    for (const followed of this.#followed.values()) {
      const changes = await this.#sync(followed, false)
      total.scheduled += changes.scheduled
      total.unscheduled += changes.unscheduled
    }
    return total
  }

  #targets (instances: InstanceScheduleOptions['instances'], lenient = false): JobTarget[] {
    if (instances === undefined) return [currentJobTarget(this.#tenancy)]
    if (!Array.isArray(instances)) throw new InvalidOptionsError('instances must be \'all\' or a list of instance names or ids')
    // Removing the entry of an instance that has gone must still work, so unschedule reads ids as they are.
    return instances.map((nameOrId) => lenient && typeof nameOrId === 'number' && Number.isSafeInteger(nameOrId) && nameOrId > 0
      ? { instance: nameOrId }
      : { instance: this.#tenancy.getInstance(nameOrId).id })
  }

  async #scheduleOne (name: string, cron: string, data: object | null | undefined, options: ScheduleOptions, key: string | undefined, target: JobTarget): Promise<void> {
    await this.boss.schedule(name, cron, wrapFor(target, data), { ...options, key: scheduleKey(key, target) })
  }

  /** This layer's entries of `name` (and `key`) in pg-boss's schedule table, page by page. */
  async #entries (name: string, key: string | undefined): Promise<Array<{ stored: string, owner: number | 'host' }>> {
    const found: Array<{ stored: string, owner: number | 'host' }> = []
    let after: Pick<Schedule, 'name' | 'key'> | undefined
    for (;;) {
      const page = await this.boss.getSchedules(name, undefined, after === undefined ? { limit: PAGE } : { limit: PAGE, after })
      for (const row of page) {
        const owner = parseKey(key, row.key)
        if (owner !== undefined) found.push({ stored: row.key, owner })
      }
      if (page.length < PAGE) return found
      const last = page[page.length - 1]!
      after = { name: last.name, key: last.key }
    }
  }

  async #sync (followed: Followed, all: boolean): Promise<ScheduleChanges> {
    const { name, cron, data, options, key } = followed
    const wanted = new Map<number, JobTarget>()
    for (const instance of this.#tenancy.instances.list()) if (!instance.disabled) wanted.set(instance.id, { instance: instance.id })
    const existing = new Set<number>()
    let unscheduled = 0
    for (const entry of await this.#entries(name, key || undefined)) {
      if (entry.owner === 'host') continue
      if (wanted.has(entry.owner)) {
        existing.add(entry.owner)
      } else {
        await this.boss.unschedule(name, entry.stored)
        unscheduled++
      }
    }
    let scheduled = 0
    for (const [id, target] of wanted) {
      if (!all && existing.has(id)) continue
      await this.#scheduleOne(name, cron, data, options, key || undefined, target)
      scheduled++
    }
    return { scheduled, unscheduled }
  }
}

const made = new WeakMap<JobTenancy, WeakMap<PgBoss, InstanceJobs>>()

/**
 * The jobs layer of `tenancy` over `boss`: one per pair, so every part of an
 * application shares the schedules it follows. `tenancy.jobs(boss)` calls it.
 */
export function instanceJobs (tenancy: JobTenancy, boss: PgBoss): InstanceJobs {
  let byBoss = made.get(tenancy)
  if (byBoss === undefined) made.set(tenancy, byBoss = new WeakMap())
  let jobs = byBoss.get(boss)
  if (jobs === undefined) byBoss.set(boss, jobs = new InstanceJobs(tenancy, boss))
  return jobs
}
