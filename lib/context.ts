import { AsyncLocalStorage } from 'node:async_hooks'
import { NoTenancyError } from './errors.js'
import type { Instance, InstanceName } from './instances/instance.js'

/**
 * What the current async context runs as:
 * - `instance`: queries are confined to `instance`;
 * - `host`: the operator context; only host rows of `may` tables are visible;
 * - `unscoped`: the tenant filter is off (cross-instance admin work). Routing
 *   still follows `instance` when one is set.
 */
export type ContextKind = 'instance' | 'host' | 'unscoped'

/**
 * What a frame belongs to: a `Tenancy`. The context functions of the named
 * exports call these on the frame's owner.
 */
export interface ContextOwner {
  runAsInstance<R> (nameOrId: InstanceName | number, fn: () => R): R
  runAsHost<R> (fn: () => R): R
  unscoped<R> (fn: () => R): R
}

/** One frame of the tenancy context. Immutable: a switch makes a new frame. */
export interface TenancyContext {
  /** The tenancy the frame belongs to; only its own filter, routing and transaction guard read it. */
  readonly tenancy: ContextOwner
  readonly kind: ContextKind
  /** The instance of the frame; `undefined` in host context and in `unscoped` entered from host or nothing. */
  readonly instance: Instance | undefined
  /** @internal The frame this one was entered from, of any tenancy. */
  readonly outer: TenancyContext | undefined
}

// One storage for every tenancy in the process. A frame names its tenancy, and
// the frames of other tenancies entered meanwhile are skipped by contextOf(),
// so tenancy A's unscoped() never turns off tenancy B's filter.
const storage = new AsyncLocalStorage<TenancyContext>()

/** The innermost frame of the current async context, of any tenancy, or `undefined` outside any. */
export function currentContext (): TenancyContext | undefined {
  return storage.getStore()
}

/**
 * @internal The innermost frame of `owner` in the current async context, or
 * `undefined`: another tenancy's frame is no context for `owner`.
 */
export function contextOf (owner: ContextOwner): TenancyContext | undefined {
  let frame = storage.getStore()
  while (frame !== undefined && frame.tenancy !== owner) frame = frame.outer
  return frame
}

/** @internal Runs `fn` in a new frame of `owner` entered from the current one; the current frame is back when `fn` returns or throws. */
export function enterContext<R> (owner: ContextOwner, kind: ContextKind, instance: Instance | undefined, fn: () => R): R {
  return storage.run({ tenancy: owner, kind, instance, outer: storage.getStore() }, fn)
}

/** @internal Runs `fn` outside every frame: where a request starts, whatever code started the server. */
export function withoutContext<R> (fn: () => R): R {
  return storage.exit(fn)
}

function owner (name: 'runAsInstance' | 'runAsHost' | 'unscoped'): ContextOwner {
  const frame = storage.getStore()
  if (frame === undefined) throw new NoTenancyError(name, name)
  return frame.tenancy
}

/**
 * Runs `fn` as the instance named or numbered `nameOrId`, on the tenancy of
 * the current context (a request of the plugin, a job inside
 * `tenancy.runAsInstance`). Outside every context it throws
 * `TENANCY_NO_TENANCY`: call `tenancy.runAsInstance()` there. The outer context
 * is restored when `fn` returns or throws.
 *
 * ```ts
 * app.post('/copy', async () => runAsInstance('shareTest', () => db.selectFrom('student').selectAll().execute()))
 * // select * from "student" where "student"."iid" = $1   -- [2]
 * ```
 */
export function runAsInstance<R> (nameOrId: InstanceName | number, fn: () => R): R {
  return owner('runAsInstance').runAsInstance(nameOrId, fn)
}

/** Runs `fn` in host context on the tenancy of the current context; `TENANCY_NO_TENANCY` outside every context. */
export function runAsHost<R> (fn: () => R): R {
  return owner('runAsHost').runAsHost(fn)
}

/** Runs `fn` with the tenant filter off on the tenancy of the current context; `TENANCY_NO_TENANCY` outside every context. */
export function unscoped<R> (fn: () => R): R {
  return owner('unscoped').unscoped(fn)
}

/** The instance of the current context's innermost frame, or `undefined` (host context, or no context). */
export function currentInstance (): Instance | undefined {
  return storage.getStore()?.instance
}
