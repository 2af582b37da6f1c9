import { AsyncLocalStorage } from 'node:async_hooks'
import type { Instance, InstanceName } from './instances/instance.js'
import type { Tenancy } from './tenancy.js'

/**
 * What the current async context runs as:
 * - `instance`: queries are confined to `instance`;
 * - `host`: the operator context; only host rows of `may` tables are visible;
 * - `unscoped`: the tenant filter is off (cross-instance admin work). Routing
 *   still follows `instance` when one is set.
 */
export type ContextKind = 'instance' | 'host' | 'unscoped'

/** One frame of the tenancy context. Immutable: a switch makes a new frame. */
export interface TenancyContext {
  readonly tenancy: Tenancy
  readonly kind: ContextKind
  /** The instance of the frame; `undefined` in host context and in `unscoped` entered from host or nothing. */
  readonly instance: Instance | undefined
}

// One storage for every tenancy in the process, so that a frame always says
// which tenancy it belongs to and named exports can find it.
const storage = new AsyncLocalStorage<TenancyContext>()
let lastCreated: Tenancy | undefined

/** The frame of the current async context, or `undefined` outside any. */
export function currentContext (): TenancyContext | undefined {
  return storage.getStore()
}

/** Runs `fn` in `frame`; the previous frame is back when `fn` returns or throws. */
export function runInContext<R> (frame: TenancyContext, fn: () => R): R {
  return storage.run(frame, fn)
}

/** @internal Remembers the tenancy created last, for named exports used outside any context. */
export function setLastCreated (tenancy: Tenancy | undefined): void {
  lastCreated = tenancy
}

/** @internal Forgets `tenancy` if it was the one created last (it was closed). */
export function forgetTenancy (tenancy: Tenancy): void {
  if (lastCreated === tenancy) lastCreated = undefined
}

function activeTenancy (): Tenancy {
  const tenancy = storage.getStore()?.tenancy ?? lastCreated
  if (tenancy === undefined) throw new Error('No tenancy exists yet: call createTenancy() or register the plugin first.')
  return tenancy
}

/**
 * Runs `fn` as the instance named or numbered `nameOrId`, on the current
 * context's tenancy (or the one created last). The outer context is restored
 * when `fn` returns or throws.
 *
 * ```ts
 * await runAsInstance('shareTest', () => db.selectFrom('student').selectAll().execute())
 * // select * from "student" where "student"."iid" = $1   -- [2]
 * ```
 */
export function runAsInstance<R> (nameOrId: InstanceName | number, fn: () => R): R {
  return activeTenancy().runAsInstance(nameOrId, fn)
}

/** Runs `fn` in host context on the current (or last created) tenancy. */
export function runAsHost<R> (fn: () => R): R {
  return activeTenancy().runAsHost(fn)
}

/** Runs `fn` with the tenant filter off on the current (or last created) tenancy. */
export function unscoped<R> (fn: () => R): R {
  return activeTenancy().unscoped(fn)
}

/** The instance of the current context, or `undefined` (host context, or no context). */
export function currentInstance (): Instance | undefined {
  return storage.getStore()?.instance
}
