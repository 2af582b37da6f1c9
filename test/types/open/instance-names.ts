// Without declared names any string is an instance name.
import { runAsInstance, runAsHost, unscoped, type InstanceName, type Tenancy } from 'fastify-tenancy'
import { createTenancy } from 'fastify-tenancy/lib'

runAsInstance('anything', () => 1)
runAsInstance(3, () => 1)
const name: InstanceName = 'whatever'
const host: string = runAsHost(() => 'x')
const off: Promise<void> = unscoped(async () => {})
const made: Promise<Tenancy> = createTenancy({ instances: [], datasources: { default: 'postgres://localhost/x' } })
// @ts-expect-error: an instance is named by a string or a number
runAsInstance({ name: 'x' }, () => 1)
export { name, host, off, made }
