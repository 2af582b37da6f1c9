// Option validation at start-up: bad plugin, resolve and instance options fail
// with TENANCY_INVALID_OPTIONS and a clear message, at createTenancy() or at
// register/ready time, never later on a request.
import t from 'tap'
import Fastify from 'fastify'
import tenancy, { createTenancy, runAsInstance, currentInstance, TenancyError } from '../plugin/index.js'
import { createDatabase, query } from './helpers/database.js'

const url = await createDatabase(t, 'options')
const datasources = { default: url }

const badInstances: Array<[string, unknown[], RegExp]> = [
  ['duplicate names', [{ name: 'a', id: 1 }, { name: 'a', id: 2 }], /two instances are named "a"/],
  ['duplicate default', [{ name: '', id: 1 }, { name: '', id: 2 }], /two instances are named ""/],
  ['duplicate ids', [{ name: 'a', id: 1 }, { name: 'b', id: 1 }], /instances "a" and "b" have the same id 1/],
  ['id 0', [{ name: 'a', id: 0 }], /id must be a positive integer, not 0/],
  ['negative id', [{ name: 'a', id: -3 }], /id must be a positive integer/],
  ['fractional id', [{ name: 'a', id: 1.5 }], /id must be a positive integer/],
  ['id as a string', [{ name: 'a', id: '2' }], /id must be a positive integer, not "2"/],
  ['missing id', [{ name: 'a' }], /id must be a positive integer/],
  ['unsafe id', [{ name: 'a', id: 2 ** 53 }], /id must be a positive integer/],
  ['name of 64 characters', [{ name: 'n'.repeat(64), id: 1 }], /the name must be at most 63 of \[A-Za-z0-9._-\]/],
  ['name with a space', [{ name: 'a b', id: 1 }], /the name must be/],
  ['name with a slash', [{ name: '../x', id: 1 }], /the name must be/],
  ['non-ASCII name', [{ name: 'caf\u00e9', id: 1 }], /the name must be/],
  ['name not a string', [{ name: 7, id: 1 }], /the name must be/],
  ['instance not an object', [null], /an instance must be an object/],
  ['isolate without isolateClient', [{ name: 'a', id: 1, isolate: true }], /isolate needs isolateClient/],
  ['isolateClient without isolate', [{ name: 'a', id: 1, isolateClient: 'default' }], /isolateClient is only for isolate: true/],
  ['isolate and schema', [{ name: 'a', id: 1, isolate: true, isolateClient: 'default', schema: 'tenant_a' }], /choose isolate or schema/],
  ['unknown isolateClient', [{ name: 'a', id: 1, isolate: true, isolateClient: 'nowhere' }], /datasource "nowhere" is not configured/],
  ['unknown datasource', [{ name: 'a', id: 1, datasource: 'nowhere' }], /datasource "nowhere" is not configured/],
  ['upper-case schema', [{ name: 'a', id: 1, schema: 'Tenant_A' }], /schema "Tenant_A" is not a safe identifier/],
  ['schema with a quote', [{ name: 'a', id: 1, schema: 'x"; drop schema public; --' }], /is not a safe identifier/],
  ['schema with a dash', [{ name: 'a', id: 1, schema: 'tenant-a' }], /is not a safe identifier/],
  ['schema of 64 characters', [{ name: 'a', id: 1, schema: 's'.repeat(64) }], /is not a safe identifier/],
  ['unsafe role', [{ name: 'a', id: 1, role: 'Admin Role' }], /role "Admin Role" is not a safe identifier/],
  ['config not an object', [{ name: 'a', id: 1, config: 'x' }], /config must be an object/],
]

t.test('createTenancy refuses bad instance configs', async (t) => {
  for (const [label, list, message] of badInstances) {
    await t.rejects(createTenancy({ instances: list as any, datasources }), { code: 'TENANCY_INVALID_OPTIONS', statusCode: 500, message }, label)
  }
  await t.rejects(createTenancy({ instances: 'x' as any, datasources }), { code: 'TENANCY_INVALID_OPTIONS', message: /instances must be an array/ })
  await t.rejects(createTenancy({ instances: [], datasources: { other: url } }), { code: 'TENANCY_INVALID_OPTIONS', message: /datasources must include "default"/ })
  await t.rejects(createTenancy({ instances: [], datasources: { default: 42 as any } }), { code: 'TENANCY_INVALID_OPTIONS', message: /datasource "default" must be a connection string or a pg PoolConfig/ })
  await t.rejects(createTenancy({ instances: [], datasources: null as any }), { code: 'TENANCY_INVALID_OPTIONS' })
  await t.rejects(createTenancy({ instances: [], datasources, tenantColumn: 'iid; drop' }), { code: 'TENANCY_INVALID_OPTIONS', message: /tenantColumn "iid; drop" is not a safe column name/ })
  await t.rejects(createTenancy(null as any), { code: 'TENANCY_INVALID_OPTIONS' })
  const err = await createTenancy({ instances: [{ name: 'a', id: 0 }], datasources }).catch((e: unknown) => e)
  t.ok(err instanceof TenancyError, 'a TenancyError')
  t.match((err as Error).message, /^Invalid tenancy options: instance "a": id/, 'the message says which instance and why')
})

/** Registers the plugin with `options` and returns what ready() rejects with. */
async function registerError (options: unknown): Promise<unknown> {
  const app = Fastify()
  try {
    await app.register(tenancy, options as any)
    await app.ready()
    return undefined
  } catch (err) {
    return err
  } finally {
    await app.close().catch(() => {})
  }
}

t.test('register refuses bad instance configs', async (t) => {
  for (const [label, list, message] of badInstances) {
    t.match(await registerError({ instances: list, datasources }), { code: 'TENANCY_INVALID_OPTIONS', message }, label)
  }
})

t.test('register refuses bad plugin and resolve options', async (t) => {
  const instances = [{ name: '', id: 1 }, { name: 'a', id: 2 }]
  const cases: Array<[string, unknown, RegExp]> = [
    ['a tenancy not made by createTenancy', { tenancy: {} }, /tenancy must be made by createTenancy\(\)/],
    ['getInstanceName not a function', { instances, datasources, resolve: { getInstanceName: 'x' } }, /resolve\.getInstanceName must be a function/],
    ['empty headerField', { instances, datasources, resolve: { headerField: '' } }, /resolve\.headerField must be a non-empty string or false/],
    ['subdomainOffset -1', { instances, datasources, resolve: { subdomainOffset: -1 } }, /resolve\.subdomainOffset/],
    ['a port mapped to a bad name', { instances, datasources, resolve: { ports: { 3000: '../a' } } }, /resolve\.ports: "\.\.\/a" is not an instance name/],
    ['a bad fallback', { instances, datasources, resolve: { fallback: 'maybe' } }, /resolve\.fallback must be 'default', 'host' or 'reject', not "maybe"/],
    ['an unknown resolver in order', { instances, datasources, resolve: { order: ['header', 'jwt'] } }, /resolve\.order: "jwt" is not a resolver/],
    ['resolve not an object', { instances, datasources, resolve: 'header' }, /resolve/],
  ]
  for (const [label, options, message] of cases) {
    t.match(await registerError(options), { code: 'TENANCY_INVALID_OPTIONS', message }, label)
  }
  const own = await createTenancy({ instances, datasources })
  t.teardown(() => own.close())
  t.match(await registerError({ tenancy: own, resolve: { queryField: 7 } }), { code: 'TENANCY_INVALID_OPTIONS', message: /resolve\.queryField/ }, 'with a ready-made tenancy too')
  t.equal(await registerError({ tenancy: own, resolve: { headerField: 'x-tenant', fallback: 'reject' } }), undefined, 'good options register')
})

t.test('a plugin whose options fail closes the tenancy it made', async (t) => {
  const database = new URL(datasources.default).pathname.slice(1)
  const backends = async (): Promise<number> => (await query(url, 'select count(*)::int as n from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [database]))[0].n
  const before = await backends()
  const err = await registerError({ instances: [{ name: 'orphan', id: 1 }], datasources, resolve: { fallback: 'maybe' } })
  t.match(err, { code: 'TENANCY_INVALID_OPTIONS' })
  t.equal(await backends(), before, 'the connection its table discovery opened is closed again')
  t.throws(() => runAsInstance('orphan', () => currentInstance()), { code: 'TENANCY_NO_TENANCY' }, 'and no named export can reach it')
})
