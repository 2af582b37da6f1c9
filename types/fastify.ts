import type { Instance } from '../lib/instances/instance.js'
import type { Tenancy } from '../lib/tenancy.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The tenancy the plugin serves: `fastify.tenancy.kysely()`, `runAsInstance()`, … */
    tenancy: Tenancy
  }
  interface FastifyRequest {
    /** The instance the request was resolved to; `null` in host context. */
    instance: Instance | null
    /** Its name; `null` in host context. */
    instanceName: string | null
  }
}
