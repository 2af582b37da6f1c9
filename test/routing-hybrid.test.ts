import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { sql, type Generated } from 'kysely'
import tenancy from '../plugin/index.js'
import { createTenancy } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'

// Shared, isolated and schema instances in one process. The tables carry iid
// and every write names it, so nothing here depends on the iid rewrite plugin.
type Tap = Test
interface DB { student: { id: Generated<number>, iid: number, name: string } }

const table = 'create table student (id serial primary key, iid int not null, name text not null)'
const defaultUrl = await createDatabase(t, 'hybrid_default')
const isoAUrl = await createDatabase(t, 'hybrid_iso_a')
const isoBUrl = await createDatabase(t, 'hybrid_iso_b')
await query(defaultUrl, `${table}; create schema tenant_acme; create schema tenant_globex;
  create table tenant_acme.student (id serial primary key, iid int not null, name text not null);
  create table tenant_globex.student (id serial primary key, iid int not null, name text not null)`)
await query(isoAUrl, table)
await query(isoBUrl, table)

const instances = [
  { name: '', id: 1 },
  { name: 'shareTest', id: 2 },
  { name: 'isoA', id: 1000, isolate: true, isolateClient: 'isoA' },
  { name: 'isoB', id: 1001, isolate: true, isolateClient: 'isoB' },
  { name: 'acme', id: 3, schema: 'tenant_acme' },
  { name: 'globex', id: 4, schema: 'tenant_globex' },
]
// Where each instance's rows must be, seen through a direct connection.
const homes: Record<string, { url: string, table: string, database: string, schema: string }> = {
  '': { url: defaultUrl, table: 'public.student', database: new URL(defaultUrl).pathname.slice(1), schema: 'public' },
  shareTest: { url: defaultUrl, table: 'public.student', database: new URL(defaultUrl).pathname.slice(1), schema: 'public' },
  isoA: { url: isoAUrl, table: 'public.student', database: new URL(isoAUrl).pathname.slice(1), schema: 'public' },
  isoB: { url: isoBUrl, table: 'public.student', database: new URL(isoBUrl).pathname.slice(1), schema: 'public' },
  acme: { url: defaultUrl, table: 'tenant_acme.student', database: new URL(defaultUrl).pathname.slice(1), schema: 'tenant_acme' },
  globex: { url: defaultUrl, table: 'tenant_globex.student', database: new URL(defaultUrl).pathname.slice(1), schema: 'tenant_globex' },
}
const places = [
  { url: defaultUrl, table: 'public.student' },
  { url: defaultUrl, table: 'tenant_acme.student' },
  { url: defaultUrl, table: 'tenant_globex.student' },
  { url: isoAUrl, table: 'public.student' },
  { url: isoBUrl, table: 'public.student' },
]

const ten = await createTenancy({
  instances,
  datasources: { default: defaultUrl, isoA: isoAUrl, isoB: { connectionString: isoBUrl, max: 1 } },
  pool: { max: 2 },
})
t.teardown(() => ten.close())
const db = ten.kysely<DB>()

async function whereAmI (): Promise<{ database: string, schema: string }> {
  const { rows } = await sql<{ database: string, schema: string }>`select current_database() as database, current_schema() as schema`.execute(db)
  return rows[0]!
}

/** Every place's rows, by name prefix: a row belongs where its instance lives and nowhere else. */
async function checkPlacement (t: Tap, expected: Record<string, number>): Promise<void> {
  for (const place of places) {
    const rows = await query<{ iid: number, name: string }>(place.url, `select iid, name from ${place.table}`)
    const owners = instances.filter((i) => homes[i.name]!.url === place.url && homes[i.name]!.table === place.table)
    const ids = new Set(owners.map((i) => i.id))
    const stray = rows.filter((row) => !ids.has(row.iid))
    t.same(stray, [], `no foreign rows in ${place.table} of ${new URL(place.url).pathname}`)
    for (const owner of owners) {
      const mine = rows.filter((row) => row.iid === owner.id)
      t.equal(mine.length, expected[owner.name] ?? 0, `${JSON.stringify(owner.name)} has its ${expected[owner.name] ?? 0} rows in ${place.table}`)
      t.ok(mine.every((row) => row.name.startsWith(`${owner.name}:`)), `the rows of ${JSON.stringify(owner.name)} are its own`)
    }
  }
}

t.test('each instance runs on its own database and schema', async (t) => {
  for (const instance of instances) {
    await ten.runAsInstance(instance.name, async () => {
      t.same(await whereAmI(), { database: homes[instance.name]!.database, schema: homes[instance.name]!.schema }, `${JSON.stringify(instance.name)} runs where it lives`)
    })
  }
  await ten.runAsHost(async () => {
    t.same(await whereAmI(), { database: homes['']!.database, schema: 'public' }, 'host context runs on the default datasource')
  })
  t.same(await whereAmI(), { database: homes['']!.database, schema: 'public' }, 'no context runs on the default datasource')
})

t.test('writes through runAsInstance land where each instance lives, and nowhere else', async (t) => {
  const written: Record<string, number> = {}
  await Promise.all(Array.from({ length: 60 }, async (_, n) => {
    const instance = instances[n % instances.length]!
    await ten.runAsInstance(instance.name, async () => {
      await db.insertInto('student').values({ iid: instance.id, name: `${instance.name}:job${n}` }).execute()
      written[instance.name] = (written[instance.name] ?? 0) + 1
      const rows = await db.selectFrom('student').select(['iid', 'name']).where('iid', '=', instance.id).execute()
      t.ok(rows.some((row) => row.name === `${instance.name}:job${n}`), 'reads its own write back')
    })
  }))
  await checkPlacement(t, written)
})

t.test('nested runAsInstance outside a transaction switches pools and schemas and restores them', async (t) => {
  await ten.runAsInstance('acme', async () => {
    t.equal((await whereAmI()).schema, 'tenant_acme')
    await ten.runAsInstance('isoA', async () => {
      t.same(await whereAmI(), { database: homes.isoA!.database, schema: 'public' })
      await ten.runAsInstance('globex', async () => {
        t.same(await whereAmI(), { database: homes['']!.database, schema: 'tenant_globex' })
      })
      t.same(await whereAmI(), { database: homes.isoA!.database, schema: 'public' }, 'back on isoA')
    })
    t.same(await whereAmI(), { database: homes['']!.database, schema: 'tenant_acme' }, 'back on acme')
    await ten.runAsInstance('shareTest', async () => {
      t.equal((await whereAmI()).schema, 'public', 'a shared instance on the same pool gets the default search_path')
    })
    t.equal((await whereAmI()).schema, 'tenant_acme')
  })
})

t.test('interleaved work on a two-client default pool never sees another instance\'s schema', async (t) => {
  let wrong = 0
  await Promise.all(Array.from({ length: 300 }, async (_, n) => {
    const instance = instances[(n * 7) % instances.length]!
    await ten.runAsInstance(instance.name, async () => {
      const here = await whereAmI()
      if (here.database !== homes[instance.name]!.database || here.schema !== homes[instance.name]!.schema) wrong++
    })
  }))
  t.equal(wrong, 0, 'every query ran on its instance\'s database and schema')
  t.ok(ten.pools.counts().open <= 2 + 2 + 1, 'pool sizes held')
})

t.test('through HTTP: the plugin resolves x-instance-name and rows land where they belong', async (t) => {
  for (const place of places) await query(place.url, `truncate ${place.table}`)
  const app = Fastify()
  await app.register(tenancy, { tenancy: ten, resolve: { headerField: 'x-instance-name' }, closeOnShutdown: false })
  app.post<{ Body: { name: string } }>('/students', async (request) => {
    const id = request.instance!.id
    await db.insertInto('student').values({ iid: id, name: `${request.instanceName}:${request.body.name}` }).execute()
    return await whereAmI()
  })
  app.get('/students', async (request) => {
    return await db.selectFrom('student').select(['iid', 'name']).where('iid', '=', request.instance!.id).orderBy('id').execute()
  })
  t.teardown(() => app.close())

  const written: Record<string, number> = {}
  const responses = await Promise.all(Array.from({ length: 48 }, async (_, n) => {
    const instance = instances[(n * 5) % instances.length]!
    written[instance.name] = (written[instance.name] ?? 0) + 1
    const response = await app.inject({ method: 'POST', url: '/students', headers: { 'x-instance-name': instance.name }, payload: { name: `req${n}` } })
    return { instance, response }
  }))
  for (const { instance, response } of responses) {
    t.equal(response.statusCode, 200)
    t.same(response.json(), { database: homes[instance.name]!.database, schema: homes[instance.name]!.schema }, `POST as ${JSON.stringify(instance.name)} ran where it lives`)
  }
  for (const instance of instances) {
    const response = await app.inject({ method: 'GET', url: '/students', headers: { 'x-instance-name': instance.name } })
    const rows = response.json() as Array<{ iid: number, name: string }>
    t.equal(rows.length, written[instance.name] ?? 0, `GET as ${JSON.stringify(instance.name)} sees its rows`)
    t.ok(rows.every((row) => row.iid === instance.id && row.name.startsWith(`${instance.name}:`)))
  }
  await checkPlacement(t, written)
})
