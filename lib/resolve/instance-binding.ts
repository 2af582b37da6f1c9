import { InstanceDisabledError, InstanceForbiddenError, InvalidOptionsError, UnknownInstanceError, quote } from '../errors.js'
import type { Instance } from '../instances/instance.js'
import { requireInstance, type InstanceStore } from '../instances/instance-registry.js'
import { createInstanceResolver, type ResolveOptions, type ResolveRequest, type Resolution } from './instance-resolver.js'

/** The value of the claim that marks a host token: an operator's token that belongs to no instance. */
export const HOST_CLAIM = 'host'

/** Whose token a request carries: none (no verified token), an instance's, or the host's. */
export type TokenOwner = { readonly kind: 'none' } | { readonly kind: 'host' } | { readonly kind: 'instance', readonly instance: Instance }

/** Where a bound request runs, and whether a host token took it into an instance (such requests are marked in the log). */
export interface BoundResolution {
  readonly resolution: Resolution
  readonly hostToken: boolean
}

/** May a host token act on `instance`? `true`, `false`, or a decision per instance. */
export type HostAccess = boolean | ((instance: Instance) => boolean)

const NONE: TokenOwner = Object.freeze({ kind: 'none' })
const HOST: TokenOwner = Object.freeze({ kind: 'host' })

/**
 * Whose token `claims` are: `undefined` or `null` (no verified token) is
 * nobody's; otherwise `field` must hold an instance id, or `'host'`. Throws
 * 403 `TENANCY_INSTANCE_FORBIDDEN` for a token whose claim is missing or not
 * an id (a binding that cannot be read is no binding to trust), 404 / 403 for
 * an instance that is unknown (removed) or disabled.
 *
 * ```ts
 * tokenOwner(store, { sub: 'u1', iid: 2 }, 'iid') // { kind: 'instance', instance: acme }
 * tokenOwner(store, { sub: 'ops', iid: 'host' }, 'iid') // { kind: 'host' }
 * ```
 */
export function tokenOwner (store: InstanceStore, claims: unknown, field: string): TokenOwner {
  if (claims === undefined || claims === null) return NONE
  const value = typeof claims === 'object' ? (claims as Record<string, unknown>)[field] : undefined
  if (value === HOST_CLAIM) return HOST
  if (value === undefined) throw new InstanceForbiddenError(`it has no ${field} claim, so it belongs to no instance.`)
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new InstanceForbiddenError(`its ${field} claim is ${quote(value)}, not an instance id.`)
  return { kind: 'instance', instance: requireInstance(store, value) }
}

/**
 * The binding check: a token belongs to its instance. Builds, once, a function
 * of a request and its token's verified claims that gives where the request
 * runs. Without a token the request resolves as usual. With an instance's
 * token, the request runs as that instance; asking (by query, header, cookie,
 * path, port or host name) for any other is 403 `TENANCY_INSTANCE_FORBIDDEN`,
 * also when the other does not exist or is disabled, so a token cannot probe
 * which instances exist. With a host token (claim `'host'`) the request runs
 * in host context, or, where `hostAccess` allows it, as the instance it asks
 * for (`hostToken: true`); asking for an instance where it does not is 403.
 * `options.claim` names the claim; the rest of `options` is the resolver
 * chain's.
 *
 * ```ts
 * const bind = createInstanceBinding(tenancy.instances, { claim: 'iid' })
 * bind({ headers: { 'x-instance-name': 'beta' }, url: '/' }, { iid: 2 }) // throws TENANCY_INSTANCE_FORBIDDEN
 * bind({ headers: {}, url: '/' }, { iid: 2 })                            // { resolution: acme, hostToken: false }
 * ```
 */
export function createInstanceBinding (store: InstanceStore, options: ResolveOptions = {}): (request: ResolveRequest, claims: unknown, hostAccess?: HostAccess) => BoundResolution | Promise<BoundResolution> {
  createInstanceResolver(store, options) // the checks of every resolve option, claim included
  const field = options?.claim
  if (typeof field !== 'string') throw new InvalidOptionsError('the instance binding needs resolve.claim, the claim that holds the instance id')
  // What the request asks for, without the token: `null` when it asks for nothing.
  const asked = createInstanceResolver(store, { ...options, claim: false, fallback: 'host' })
  // What it gets when it asks for nothing and has no token: the configured fallback.
  const fallback = createInstanceResolver(store, { ...options, claim: false, order: [] })

  const decide = (request: ResolveRequest, owner: TokenOwner, wanted: Resolution, hostAccess: HostAccess): BoundResolution | Promise<BoundResolution> => {
    if (owner.kind === 'none') {
      if (wanted !== null) return { resolution: wanted, hostToken: false }
      // With no resolver in its order, the fallback answers at once: it is never a promise.
      return { resolution: fallback(request) as Resolution, hostToken: false }
    }
    if (owner.kind === 'instance') {
      if (wanted === null || wanted.id === owner.instance.id) return { resolution: owner.instance, hostToken: false }
      throw forbidden(owner)
    }
    if (wanted === null) return { resolution: null, hostToken: false }
    if (hostAccess === true || (typeof hostAccess === 'function' && hostAccess(wanted) === true)) return { resolution: wanted, hostToken: true }
    throw new InstanceForbiddenError('it is a host token, and host tokens may not act on instances here.')
  }

  return (request, claims, hostAccess = false) => {
    const owner = tokenOwner(store, claims, field)
    // An instance's token learns nothing about other instances: unknown and disabled are forbidden too.
    const hide = (err: unknown): never => {
      throw owner.kind === 'instance' && (err instanceof UnknownInstanceError || err instanceof InstanceDisabledError) ? forbidden(owner) : err
    }
    let wanted: Resolution | Promise<Resolution>
    try {
      wanted = asked(request)
    } catch (err) {
      return hide(err)
    }
    if (wanted instanceof Promise) return wanted.then((found) => decide(request, owner, found, hostAccess), hide)
    return decide(request, owner, wanted, hostAccess)
  }
}

function forbidden (owner: TokenOwner & { kind: 'instance' }): Error {
  return new InstanceForbiddenError(`it belongs to instance ${quote(owner.instance.name)}.`)
}
