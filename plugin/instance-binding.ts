import type { FastifyRequest } from 'fastify'
import { InvalidOptionsError } from '../lib/errors.js'
import type { Instance } from '../lib/instances/instance.js'
import type { InstanceStore } from '../lib/instances/instance-registry.js'
import { createInstanceBinding } from '../lib/resolve/instance-binding.js'
import { createInstanceResolver, type ResolveOptions, type Resolution } from '../lib/resolve/instance-resolver.js'

/** How the plugin reads tokens when `resolve.claim` is set: the plugin's `tokens` option. */
export interface TokenOptions {
  /**
   * Gives the verified claims of the request's token, or `undefined` when it
   * carries none. A rejection (no token, a forged or expired one) counts as no
   * token: the request resolves as an anonymous one, and the route's own
   * authentication answers 401. Defaults to `request.user` when an earlier
   * hook verified the token, else `request.jwtVerify()` of `@fastify/jwt`.
   */
  verify?: (request: FastifyRequest) => unknown
  /**
   * Whether a host token (claim `'host'`) may act on the instance a request
   * asks for; such requests are logged with `hostToken: true` on every line.
   * `false`: host tokens run in host context, and asking for an instance is
   * 403. Defaults to `false`.
   */
  hostAccess?: boolean | ((request: FastifyRequest, instance: Instance) => boolean)
}

/** What the plugin calls for each request in `onRequest`. */
export type RequestResolver = (request: FastifyRequest) => Resolution | Promise<Resolution>

async function defaultVerify (request: FastifyRequest): Promise<unknown> {
  const claims = (request as { user?: unknown }).user
  if (claims !== undefined && claims !== null) return claims
  const verify = (request as { jwtVerify?: () => Promise<unknown> }).jwtVerify
  return typeof verify === 'function' ? await verify.call(request) : undefined
}

/**
 * The plugin's resolution: the resolver chain, or, when `resolve.claim` is
 * set, the chain bound to the request's verified token (a token of instance A
 * asking for B is 403 before any handler runs).
 */
export function requestResolver (store: InstanceStore, options: { resolve?: ResolveOptions, tokens?: TokenOptions }): RequestResolver {
  const { resolve, tokens } = options
  if (resolve?.claim === undefined || resolve.claim === false) {
    if (tokens !== undefined) throw new InvalidOptionsError('tokens needs resolve.claim, the claim of the token that holds the instance id')
    return createInstanceResolver(store, resolve)
  }
  if (tokens !== undefined && (tokens === null || typeof tokens !== 'object')) throw new InvalidOptionsError('tokens must be an object')
  const verify = tokens?.verify ?? defaultVerify
  if (typeof verify !== 'function') throw new InvalidOptionsError('tokens.verify must be a function')
  const hostAccess = tokens?.hostAccess ?? false
  if (typeof hostAccess !== 'boolean' && typeof hostAccess !== 'function') throw new InvalidOptionsError('tokens.hostAccess must be true, false or a function of the request and the instance')
  const bind = createInstanceBinding(store, resolve)

  return async (request) => {
    let claims: unknown
    try {
      claims = await verify(request)
    } catch {
      // Not ours to answer: without a verified token the request is anonymous, and authentication says 401.
      claims = undefined
    }
    const access = typeof hostAccess === 'function' ? (instance: Instance) => hostAccess(request, instance) : hostAccess
    const { resolution, hostToken } = await bind(request, claims, access)
    if (hostToken) request.log = request.log.child({ hostToken: true })
    return resolution
  }
}
