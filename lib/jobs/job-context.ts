import { InvalidJobError, NoContextError, quote } from '../errors.js'
import type { ContextOwner, TenancyContext } from '../context.js'
import type { Instance, InstanceName } from '../instances/instance.js'
import type { InstanceStore } from '../instances/instance-registry.js'

/**
 * The key a job's payload carries its context under: `{ instance: <id> }` for
 * a job of an instance, `{ host: true }` for a host job. Reserved: a payload
 * that already has it is refused when it is sent. The id, not the name: ids
 * are never reused, so a job that outlives its instance can never run as a
 * later instance of the same name.
 *
 * ```ts
 * await boss.findJobs('report', { data: { [JOB_CONTEXT_KEY]: { instance: 2 } } }) // instance 2's report jobs
 * ```
 */
export const JOB_CONTEXT_KEY = '__tenancy'

/** Where a job runs: an instance, by id, or host context. */
export type JobTarget = { readonly instance: number } | { readonly host: true }

/** A payload with its context recorded under {@link JOB_CONTEXT_KEY}. */
export type WrappedJobData<T> = T & { readonly [JOB_CONTEXT_KEY]: JobTarget }

/**
 * The part of a tenancy the jobs layer uses (a `Tenancy` is one). Structural,
 * so the jobs layer does not import the tenancy that builds it.
 */
export interface JobTenancy extends ContextOwner {
  /** This tenancy's current frame. */
  context (): TenancyContext | undefined
  /** The instance by name or id; throws for unknown and disabled ones. */
  getInstance (nameOrId: InstanceName | number): Instance
  /** The instances. */
  readonly instances: InstanceStore
  /** The store's change events, when the tenancy has them. */
  on?: (event: 'instanceCreated' | 'instanceUpdated' | 'instanceRemoved', listener: () => void) => unknown
  off?: (event: 'instanceCreated' | 'instanceUpdated' | 'instanceRemoved', listener: () => void) => unknown
}

const HOST: JobTarget = Object.freeze({ host: true })

/** NoContextError's own message speaks of tables; a job needs its own words. */
function noContext (message: string): Error {
  const err = new NoContextError(message)
  err.message = message
  return err
}

/**
 * The context a job sent now should run in: the current instance, or host
 * context when the current frame is `runAsHost`. Throws `TENANCY_NO_CONTEXT`
 * anywhere else: a job must never be sent that nobody can tell where to run.
 * @internal
 */
export function currentJobTarget (tenancy: Pick<JobTenancy, 'context'>): JobTarget {
  const context = tenancy.context()
  if (context?.instance !== undefined) return { instance: context.instance.id }
  if (context?.kind === 'host') return HOST
  throw noContext(context === undefined
    ? 'A job is being sent outside any instance: send it inside runAsInstance() (it runs as that instance), or inside runAsHost() for a job that runs in host context.'
    : 'A job is being sent inside unscoped() with no instance: send it inside runAsInstance(), or inside runAsHost() for a job that runs in host context.')
}

/** @internal `data` with `target` recorded; the caller's object is not changed. */
export function wrapFor<T extends object> (target: JobTarget, data: T | null | undefined): WrappedJobData<T> {
  if (data === null || data === undefined) return { [JOB_CONTEXT_KEY]: target } as WrappedJobData<T>
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new InvalidJobError(`its data must be an object (or nothing), not ${Array.isArray(data) ? 'a list' : `a ${typeof data}`}, so that it can carry its instance under ${JOB_CONTEXT_KEY}.`)
  }
  if (Object.hasOwn(data, JOB_CONTEXT_KEY)) {
    throw new InvalidJobError(`its data already has the key ${JOB_CONTEXT_KEY}, which is reserved for the job's instance.`)
  }
  return { ...data, [JOB_CONTEXT_KEY]: target } as WrappedJobData<T>
}

/**
 * Records the current context in a job's payload, for a queue other than
 * pg-boss (BullMQ, graphile-worker, …): the current instance's id, or host
 * context inside `runAsHost`. Returns a new object; `null` or nothing becomes
 * `{}` plus the context. Throws `TENANCY_NO_CONTEXT` outside any instance
 * (and in `unscoped()` without one), `TENANCY_INVALID_JOB` for data that is
 * not an object or already has the reserved key.
 *
 * ```ts
 * await tenancy.runAsInstance('acme', () => queue.add('report', wrapJobData(tenancy, { day: '2026-11-23' })))
 * // job.data: { day: '2026-11-23', __tenancy: { instance: 2 } }
 * ```
 */
export function wrapJobData<T extends object> (tenancy: Pick<JobTenancy, 'context'>, data?: T | null): WrappedJobData<T> {
  return wrapFor(currentJobTarget(tenancy), data)
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

/**
 * Reads the context a payload was sent from, and the payload without it.
 * Throws `TENANCY_INVALID_JOB` for a payload that does not name it exactly:
 * only a positive whole number is an instance id, so `'1 or 1=1'`, `-1`,
 * `1.5` and a name are all refused. Does not look the instance up.
 *
 * ```ts
 * unwrapJobData({ day: 'x', __tenancy: { instance: 2 } }) // { target: { instance: 2 }, data: { day: 'x' } }
 * ```
 */
export function unwrapJobData<T extends object = Record<string, unknown>> (payload: unknown): { target: JobTarget, data: T } {
  if (!isPlainObject(payload)) {
    throw new InvalidJobError(`its data is ${payload === null ? 'null' : Array.isArray(payload) ? 'a list' : `a ${typeof payload}`}, so it names no instance: send jobs with jobs.send() or wrapJobData() inside runAsInstance() or runAsHost().`)
  }
  const mark = payload[JOB_CONTEXT_KEY]
  if (mark === undefined) {
    throw new InvalidJobError(`its data has no ${JOB_CONTEXT_KEY} key, so it names no instance: it was not sent through jobs.send() or wrapJobData().`)
  }
  const { [JOB_CONTEXT_KEY]: _mark, ...data } = payload
  return { target: readTarget(mark), data: data as T }
}

function readTarget (mark: unknown): JobTarget {
  if (!isPlainObject(mark)) throw new InvalidJobError(`${JOB_CONTEXT_KEY} is ${quote(mark)}, not { instance: <id> } or { host: true }.`)
  const keys = Object.keys(mark)
  if (keys.length === 1 && mark.host === true) return HOST
  if (keys.length === 1 && 'instance' in mark) {
    const id = mark.instance
    if (typeof id === 'number' && Number.isSafeInteger(id) && id > 0) return { instance: id }
    throw new InvalidJobError(`${JOB_CONTEXT_KEY}.instance is ${quote(id)}, not an instance id (a positive whole number)${typeof id === 'string' ? ': jobs carry the instance\'s id, never its name' : ''}.`)
  }
  throw new InvalidJobError(`${JOB_CONTEXT_KEY} is ${quote(JSON.stringify(mark))}, not { instance: <id> } or { host: true }.`)
}

/** @internal Runs `fn` in `target`'s context; the instance passes the one gate (unknown, disabled) synchronously. */
export function runInTarget<R> (tenancy: Pick<JobTenancy, 'runAsInstance' | 'runAsHost'>, target: JobTarget, fn: () => R): R {
  return 'host' in target ? tenancy.runAsHost(fn) : tenancy.runAsInstance(target.instance, fn)
}

/**
 * Runs a job's handler in the context its payload was sent from, for a queue
 * other than pg-boss: as the instance (looked up by id through
 * `runAsInstance`, so every query of the handler is confined), or in host
 * context. `handler` gets the payload without the reserved key. Rejects before
 * `handler` runs with `TENANCY_INVALID_JOB` for a payload that names no valid
 * id, `TENANCY_UNKNOWN_INSTANCE` for an instance that is unknown or was
 * removed, `TENANCY_INSTANCE_DISABLED` for a disabled one: the queue then
 * retries or fails the job as it does with any error.
 *
 * ```ts
 * new Worker('reports', (job) => runWrappedJob(tenancy, job.data, (data) => buildReport(data.day)))
 * // buildReport runs as instance 2: its queries get `where "iid" = $1` -- [2]
 * ```
 */
export async function runWrappedJob<T extends object, R> (tenancy: JobTenancy, payload: unknown, handler: (data: T) => R | Promise<R>): Promise<R> {
  const { target, data } = unwrapJobData<T>(payload)
  return await runInTarget(tenancy, target, () => handler(data))
}
