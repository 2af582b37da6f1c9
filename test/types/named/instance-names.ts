// Compiled against the built package (dist/), as a user's code would be.
import Fastify from 'fastify'
import tenancy, { createTenancy, runAsInstance, currentInstance, type Instance, type InstanceName } from 'fastify-tenancy'

declare module 'fastify-tenancy' {
  interface InstanceRecord {
    shareTest: never
    isolateTest: never
  }
}

const t = await createTenancy({ instances: [{ name: '', id: 1 }], datasources: { default: 'postgres://localhost/x' } })
runAsInstance('shareTest', () => 1)
runAsInstance('', () => 1)
runAsInstance(1000, () => 1)
t.runAsInstance('isolateTest', () => 1)
// @ts-expect-error: not a declared instance name
runAsInstance('typo', () => 1)
// @ts-expect-error: not a declared instance name
t.runAsInstance('sharetest', () => 1)
const name: InstanceName = 'shareTest'
// @ts-expect-error: not a declared instance name
const wrong: InstanceName = 'other'

const result: Promise<number> = runAsInstance('shareTest', async () => 1)
const instance: Instance | undefined = currentInstance()

const app = Fastify()
await app.register(tenancy, { tenancy: t, resolve: { headerField: 'x-tenant', fallback: 'reject' } })
app.get('/', async (request) => {
  const current: Instance | null = request.instance
  const currentName: string | null = request.instanceName
  // @ts-expect-error: the instance may be null (host context)
  const id: number = request.instance.id
  return { current, currentName, id, tenancy: app.tenancy.instances.list().length }
})
// @ts-expect-error: unknown resolve option value
await app.register(tenancy, { tenancy: t, resolve: { fallback: 'nobody' } })
export { name, wrong, result, instance }
