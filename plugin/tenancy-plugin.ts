import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { withoutContext } from '../lib/context.js'
import { InvalidOptionsError } from '../lib/errors.js'
import type { ResolveOptions, Resolution } from '../lib/resolve/instance-resolver.js'
import { requestResolver, type RequestResolver, type TokenOptions } from './instance-binding.js'

import { createTenancy, Tenancy, type TenancyOptions } from '../lib/tenancy.js'
import '../types/fastify.js'

/**
 * Options of the Fastify plugin: either a tenancy made earlier with
 * `createTenancy`, or the options to make one; plus how requests are resolved.
 */
export type TenancyPluginOptions = ({ tenancy: Tenancy } | TenancyOptions) & {
  /** How a request's instance is found. Defaults to the chain in the README. */
  resolve?: ResolveOptions
  /** With `resolve.claim`: how tokens are read, and whether host tokens may act on instances. Defaults to `request.jwtVerify()`, no host access. */
  tokens?: TokenOptions
  /** Close the tenancy (and every pool it opened) when Fastify closes. Defaults to `true`. */
  closeOnShutdown?: boolean
}

async function tenancyPlugin (fastify: FastifyInstance, options: TenancyPluginOptions): Promise<void> {
  if (options === null || typeof options !== 'object') throw new InvalidOptionsError('the plugin needs an options object')
  let tenancy: Tenancy
  let resolve: RequestResolver
  if ('tenancy' in options) {
    if (!(options.tenancy instanceof Tenancy)) throw new InvalidOptionsError('tenancy must be made by createTenancy()')
    tenancy = options.tenancy
    resolve = requestResolver(tenancy.instances, options)
  } else {
    tenancy = await createTenancy(options)
    try {
      resolve = requestResolver(tenancy.instances, options)
    } catch (err) {
      // The tenancy made here would otherwise keep its pools open.
      await tenancy.close()
      throw err
    }
  }
  fastify.decorate('tenancy', tenancy)
  fastify.decorateRequest('instance', null)
  fastify.decorateRequest('instanceName', null)

  function enter (request: FastifyRequest, reply: FastifyReply, resolution: Resolution, done: HookHandlerDoneFunction): void {
    if (resolution === null) {
      tenancy.runAsHost(done)
      return
    }
    request.instance = resolution
    request.instanceName = resolution.name
    // reply.log is a separate reference to the same child logger: Fastify logs
    // "request completed" and handled errors through it.
    reply.log = request.log = request.log.child({ instance: resolution.name })
    // run() rather than enterWith(): the frame holds for everything Fastify
    // does after done() is called inside it, and ends with it; enterWith()
    // would leak into the next request on a keep-alive socket. By id, so the
    // request passes the same gate (unknown, disabled) as every other switch.
    tenancy.runAsInstance(resolution.id, done)
  }

  function resolveAndEnter (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    let resolution: Resolution | Promise<Resolution>
    try {
      resolution = resolve(request)
    } catch (err) {
      done(err as Error)
      return
    }
    if (resolution instanceof Promise) {
      resolution.then((found) => { enter(request, reply, found, done) }, done)
      return
    }
    enter(request, reply, resolution, done)
  }

  // Resolution starts from no frame at all: a request must never inherit the
  // context of the code that started the server or injected the request.
  fastify.addHook('onRequest', function tenancyOnRequest (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
    withoutContext(() => { resolveAndEnter(request, reply, done) })
  })

  // Node's HTTP server runs every connection in the async context that
  // listen() was called in, so start-up code inside runAsInstance() would make
  // the hooks before ours, onRequestAbort and onTimeout run as that instance.
  // Listening from no frame gives every request and socket event a clean start.
  const listen = fastify.listen
  fastify.listen = function tenancyListen (this: FastifyInstance, ...args: unknown[]) {
    return withoutContext(() => (listen as (...a: unknown[]) => unknown).apply(this, args))
  } as typeof fastify.listen

  if (options.closeOnShutdown !== false) {
    fastify.addHook('onClose', async function tenancyOnClose () {
      await tenancy.close()
    })
  }
}

/**
 * The Fastify plugin: resolves each request's instance in `onRequest` and runs
 * the rest of the request (hooks, handler, async work it starts, the response)
 * as that instance.
 *
 * ```ts
 * await app.register(tenancy, { instances, datasources, resolve: { headerField: 'x-instance-name' } })
 * app.get('/students', () => app.tenancy.kysely<DB>().selectFrom('student').selectAll().execute())
 * ```
 */
export const tenancy = fp(tenancyPlugin, { fastify: '5.x', name: 'fastify-tenancy' })

