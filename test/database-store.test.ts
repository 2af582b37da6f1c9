import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import type { Generated } from 'kysely'
import tenancy from '../plugin/index.js'
import { createTenancy, databaseStore, type DatabaseStore, type DatabaseStoreOptions, type Instance, type Tenancy } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { CuttableProxy, eventually } from './fixtures/store-helpers.js'

// Two Tenancy objects on one store stand for two processes: every change is
// made through one and must reach the other through LISTEN/NOTIFY alone.
interface DB { student: { id: Generated<number>, iid: number, name: string } }
const STUDENT = 'create table student (id serial primary key, iid int not null, name text not null)'
const SEED = [{ name: '', id: 1, title: 'Default' }, { name: 'shareTest', id: 2 }]
// The requirement: seen by every process within a second.
const WITHIN = 1000
// For what is about reaching the other side at all (a reconnect, a cut proxy).
const PATIENCE = 15000

async function open (url: string, store: DatabaseStoreOptions = {}, datasource: Record<string, unknown> = {}): Promise<Tenancy> {
  return await createTenancy({
    instances: databaseStore({ seed: SEED, ...store }),
    datasources: { default: { connectionString: url, ...datasource } },
    tables: { student: 'must' },
    pool: { max: 3, connectionTimeoutMillis: 2000 },
  })
}

async function serve (ten: Tenancy): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(tenancy, { tenancy: ten, resolve: { headerField: 'x-instance-name' }, closeOnShutdown: false })
  app.get('/students', async () => await ten.kysely<DB>().selectFrom('student').select(['iid', 'name']).orderBy('name').execute())
  return app
}

async function hit (app: FastifyInstance, name: string): Promise<{ status: number, code?: string, rows?: Array<{ iid: number, name: string }> }> {
  const response = await app.inject({ url: '/students', headers: { 'x-instance-name': name } })
  const body = response.json() as { code?: string } | Array<{ iid: number, name: string }>
  return Array.isArray(body) ? { status: response.statusCode, rows: body } : { status: response.statusCode, code: body.code }
}

function store (ten: Tenancy): DatabaseStore {
  return ten.instances as DatabaseStore
}

t.test('a create in one tenancy is served by the other within a second, with only its rows', async (t) => {
  const url = await createDatabase(t, 'store_two')
  await query(url, STUDENT)
  const a = await open(url)
  const b = await open(url)
  t.teardown(async () => { await a.close(); await b.close() })
  const app = await serve(b)
  t.teardown(() => app.close())
  const created: string[] = []
  b.on('instanceCreated', (instance) => { created.push(instance.name) })

  t.match(await hit(app, 'acme'), { status: 404, code: 'TENANCY_UNKNOWN_INSTANCE' }, 'unknown before')
  const { instance, password } = await a.createInstance({ name: 'acme', title: 'Acme' })
  t.match(instance, { name: 'acme', title: 'Acme', mode: 'shared', state: 'ready', disabled: false })
  t.ok(instance.id > 2, 'the id comes from the sequence, past the seeds')
  t.match(password, /^[A-Za-z0-9_-]{32}$/, 'a random password, returned once')
  await query(url, 'insert into student (iid, name) values ($1, $2), ($1, $3), (2, $4), (1, $5)', [instance.id, 'acme 1', 'acme 2', 'share 1', 'default 1'])

  const seen = await eventually(() => b.instances.byName('acme')?.state === 'ready' && b.instances.byName('acme')?.id, WITHIN)
  t.equal(seen, instance.id, 'the other tenancy holds it, ready, within a second')
  t.same(await hit(app, 'acme'), { status: 200, rows: [{ iid: instance.id, name: 'acme 1' }, { iid: instance.id, name: 'acme 2' }] }, 'served there, its rows only')
  t.same(await hit(app, 'shareTest'), { status: 200, rows: [{ iid: 2, name: 'share 1' }] }, 'a seed, served with its own rows')
  t.same(created, ['acme'], 'instanceCreated fired in the other tenancy')
  const rows = await query(url, 'select id, name, state from tenancy_instance order by id')
  t.same(rows, [{ id: 1, name: '', state: 'ready' }, { id: 2, name: 'shareTest', state: 'ready' }, { id: instance.id, name: 'acme', state: 'ready' }])
  const [text] = await query<{ row: string }>(url, 'select string_agg(t::text, \' \') as row from tenancy_instance t')
  t.notOk(text!.row.includes(password), 'the password is stored nowhere in the store')
})

t.test('updates, disabling and removal reach the other tenancy, with their events', async (t) => {
  const url = await createDatabase(t, 'store_changes')
  await query(url, STUDENT)
  const a = await open(url)
  const b = await open(url)
  t.teardown(async () => { await a.close(); await b.close() })
  const app = await serve(b)
  t.teardown(() => app.close())
  const events: string[] = []
  b.on('instanceCreated', (i) => { events.push(`created ${i.name}`) })
  b.on('instanceUpdated', (i, previous) => { events.push(`updated ${i.name} ${previous.title}->${i.title} disabled=${i.disabled}`) })
  b.on('instanceRemoved', (i) => { events.push(`removed ${i.name}`) })

  const { instance } = await a.createInstance({ name: 'globex', title: 'Globex', config: { plan: 'free' } })
  await eventually(() => b.instances.byName('globex')?.state === 'ready' && b.instances.byName('globex'), WITHIN)
  const updated = await a.updateInstance('globex', { title: 'Globex Inc', config: { plan: 'pro' } })
  t.match(updated, { title: 'Globex Inc', config: { plan: 'pro' } })
  t.equal((await eventually(() => b.instances.byName('globex')?.title === 'Globex Inc', WITHIN)), true, 'title seen within a second')
  t.same(b.instances.byName('globex')!.config, { plan: 'pro' }, 'config replaced whole')

  await a.updateInstance(instance.id, { disabled: true })
  t.equal(await eventually(() => b.instances.byId(instance.id)?.disabled, WITHIN), true, 'disabled seen within a second')
  t.match(await hit(app, 'globex'), { status: 403, code: 'TENANCY_INSTANCE_DISABLED' })
  await a.updateInstance('globex', { disabled: false })
  t.equal(await eventually(() => b.instances.byId(instance.id)?.disabled === false, WITHIN), true)
  t.match(await hit(app, 'globex'), { status: 200, rows: [] })

  await a.removeInstance('globex')
  t.equal(await eventually(() => b.instances.byName('globex') === undefined, WITHIN), true, 'removal seen within a second')
  t.match(await hit(app, 'globex'), { status: 404, code: 'TENANCY_UNKNOWN_INSTANCE' })
  t.same(await query(url, 'select state, disabled from tenancy_instance where id = $1', [instance.id]), [{ state: 'removed', disabled: true }], 'without drop the record stays, marked removed')
  await t.rejects(a.createInstance({ name: 'globex' }), { code: 'TENANCY_INSTANCE_EXISTS' }, 'a removed instance keeps its name')
  await a.removeInstance('globex', { drop: true })
  t.same(await query(url, 'select id from tenancy_instance where id = $1', [instance.id]), [], 'with drop the record goes')
  const again = await a.createInstance({ name: 'globex' })
  t.ok(again.instance.id > instance.id, 'the name is free again; the id is new')

  await eventually(() => b.instances.byName('globex')?.id === again.instance.id && b.instances.byName('globex')?.state === 'ready', WITHIN)
  // A removal disables first, then marks the row removed, one right after the
  // other: when both notifications reach the other process in one reload, it
  // reads the row once, already removed, and fires only instanceRemoved.
  const removalDisable = 'updated globex Globex Inc->Globex Inc disabled=true'
  const seen = events[4] === removalDisable && events[5] === 'removed globex' ? [...events.slice(0, 4), ...events.slice(5)] : events
  t.same(seen, [
    'created globex',
    'updated globex Globex->Globex Inc disabled=false',
    'updated globex Globex Inc->Globex Inc disabled=true',
    'updated globex Globex Inc->Globex Inc disabled=false',
    'removed globex',
    'created globex',
  ], 'the other tenancy saw every change as one event (the removal\'s own disabling too, unless it came in the same reload)')
  await t.rejects(a.updateInstance('globex', { mode: 'schema' } as never), { code: 'TENANCY_INVALID_OPTIONS' }, 'the mode cannot change live')
  await t.rejects(a.updateInstance('nope', { title: 'x' }), { code: 'TENANCY_UNKNOWN_INSTANCE' })
})

t.test('the listening connection killed: it reconnects and changes made meanwhile are seen', async (t) => {
  const url = await createDatabase(t, 'store_kill')
  await query(url, STUDENT)
  const a = await open(url)
  const b = await open(url, { reconnectDelayMillis: 3000 })
  t.teardown(async () => { await a.close(); await b.close() })
  const events: string[] = []
  b.on('instanceCreated', (i) => { events.push(`created ${i.name}`) })
  b.on('instanceUpdated', (i) => { events.push(`updated ${i.name} ${i.title}`) })

  const pid = store(b).listenerProcessId
  t.type(pid, 'number')
  const [killed] = await query(url, 'select pg_terminate_backend($1) as ok', [pid])
  t.equal(killed!.ok, true)
  t.equal(await eventually(() => !store(b).listening, PATIENCE), true, 'the loss is noticed')
  await a.createInstance({ name: 'late' })
  await a.updateInstance('shareTest', { title: 'Share Test' })
  t.equal(store(b).listening, false, 'both changes were made while the other tenancy was not listening')
  t.equal(b.instances.byName('late'), undefined, 'and it could not see them yet')
  t.equal(b.instances.byName('shareTest')?.title, 'shareTest', 'lookups keep answering from the last rows')

  t.ok(await eventually(() => b.instances.byName('late')?.state === 'ready' && b.instances.byName('late'), PATIENCE), 'the reload after reconnecting brings the new instance')
  t.equal(b.instances.byName('shareTest')?.title, 'Share Test', 'and the update')
  t.equal(store(b).reconnects, 1)
  t.not(store(b).listenerProcessId, pid, 'on a new connection')
  t.same(events, ['updated shareTest Share Test', 'created late'], 'the changes found by the reload fire their events, in id order')
  await a.createInstance({ name: 'after' })
  t.ok(await eventually(() => b.instances.byName('after')?.state === 'ready' && b.instances.byName('after'), WITHIN), 'and notifications flow again')
})

t.test('the store\'s database down: lookups keep serving, writes are 503, and it catches up', async (t) => {
  const url = await createDatabase(t, 'store_down')
  await query(url, STUDENT)
  const proxy = new CuttableProxy(url)
  await proxy.start()
  t.teardown(() => proxy.cut())
  const a = await open(url)
  const b = await open(proxy.via(url), { reconnectDelayMillis: 50 })
  t.teardown(async () => { await a.close(); await b.close() })
  const { instance } = await a.createInstance({ name: 'acme' })
  await eventually(() => b.instances.byName('acme')?.state === 'ready' && b.instances.byName('acme'), WITHIN)

  await proxy.cut()
  t.equal(await eventually(() => !store(b).listening, PATIENCE), true, 'the listening connection is lost')
  t.equal(b.getInstance('acme').id, instance.id, 'lookups answer from memory')
  t.equal(b.runAsInstance('acme', () => b.currentInstance()?.name), 'acme', 'and the gate lets the instance in')
  await t.rejects(b.updateInstance('acme', { title: 'x' }), { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 }, 'an update is 503')
  await t.rejects(b.createInstance({ name: 'new' }), { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 }, 'a create is 503')
  await a.updateInstance('acme', { title: 'Acme while down' })
  await a.createInstance({ name: 'made-while-down' })
  t.same(await query(url, 'select name from tenancy_instance where name = $1', ['new']), [], 'nothing was written by the failed create')

  await proxy.start()
  t.ok(await eventually(() => b.instances.byName('made-while-down')?.state === 'ready' && b.instances.byName('made-while-down'), PATIENCE), 'back up: the new instance is seen')
  t.equal(b.instances.byName('acme')?.title, 'Acme while down', 'and the update')
  const { instance: fresh } = await b.createInstance({ name: 'new' })
  t.ok(await eventually(() => a.instances.byId(fresh.id)?.state === 'ready', WITHIN), 'writes work again')
})

t.test('seeds are created when absent and never overwritten; ids are never reused', async (t) => {
  const url = await createDatabase(t, 'store_seed')
  await query(url, STUDENT)
  const a = await open(url)
  t.teardown(() => a.close())
  t.same(a.instances.list().map((i) => [i.id, i.name, i.title, i.state]), [[1, '', 'Default', 'ready'], [2, 'shareTest', 'shareTest', 'ready']])
  await a.updateInstance('shareTest', { title: 'Renamed', config: { kept: true } })
  const first = await a.createInstance({ name: 'one' })
  await a.removeInstance('one', { drop: true })
  const b = await createTenancy({
    instances: databaseStore({ seed: [{ name: 'shareTest', id: 2, title: 'Seed title' }, { name: 'extra', id: 50 }] }),
    datasources: { default: url },
    tables: { student: 'must' },
  })
  t.teardown(() => b.close())
  t.match(b.instances.byName('shareTest'), { title: 'Renamed', config: { kept: true } }, 'an existing row is not overwritten')
  t.equal(b.instances.byName('extra')?.id, 50, 'an absent seed is created with its id')
  t.equal(await eventually(() => a.instances.byName('extra')?.id, WITHIN), 50, 'and the first tenancy sees it')
  const second = await a.createInstance({ name: 'two' })
  t.ok(second.instance.id > 50, 'the sequence moved past the seed')
  t.ok(second.instance.id > first.instance.id, 'a dropped instance\'s id is not handed out again')
  await b.removeInstance('extra', { drop: true })
  await b.close()
  const c = await createTenancy({
    instances: databaseStore({ seed: [{ name: 'shareTest', id: 2 }, { name: 'extra', id: 50 }] }),
    datasources: { default: url },
    tables: { student: 'must' },
  })
  t.teardown(() => c.close())
  t.equal(c.instances.byName('extra'), undefined, 'a seed removed with drop is not created again while it is still in seed')
  t.throws(() => c.getInstance('extra'), { code: 'TENANCY_UNKNOWN_INSTANCE' })
  t.same(await query(url, 'select id, name from tenancy_instance_removed where id = 50'), [{ id: 50, name: 'extra' }], 'its id is kept as removed')
  await c.close()
  await query(url, 'delete from tenancy_instance_removed where id = 50')
  const d = await createTenancy({
    instances: databaseStore({ seed: [{ name: 'shareTest', id: 2 }, { name: 'extra', id: 50 }] }),
    datasources: { default: url },
    tables: { student: 'must' },
  })
  t.teardown(() => d.close())
  t.equal(d.instances.byName('extra')?.id, 50, 'deleting its _removed row lets the seed create it afresh')
  await t.rejects(createTenancy({ instances: databaseStore({ seed: [{ name: 'x', id: 3 }, { name: 'X', id: 4 }] }), datasources: { default: url } }),
    { code: 'TENANCY_INVALID_OPTIONS', message: /differ only in case/ })
})

t.test('names: duplicates, case, colliding schema names; two creating one name at once', async (t) => {
  const url = await createDatabase(t, 'store_names')
  await query(url, STUDENT)
  const a = await open(url, { prefix: 'names_' })
  const b = await open(url, { prefix: 'names_' })
  t.teardown(async () => { await a.close(); await b.close() })
  const count = async (): Promise<number> => Number((await query(url, 'select count(*) as n from tenancy_instance'))[0].n)

  await a.createInstance({ name: 'acme' })
  const before = await count()
  await t.rejects(a.createInstance({ name: 'acme' }), { code: 'TENANCY_INSTANCE_EXISTS', statusCode: 409 })
  await t.rejects(a.createInstance({ name: 'ACME' }), { code: 'TENANCY_INVALID_INSTANCE_NAME', statusCode: 400, message: /only in case/ })
  await t.rejects(a.createInstance({ name: '.hidden' }), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(a.createInstance({ name: 'x'.repeat(64) }), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(a.createInstance({ name: 'ok', mode: 'bogus' as never }), { code: 'TENANCY_INVALID_OPTIONS' })
  await t.rejects(a.createInstance({ name: 'ok', drop: true } as never), { code: 'TENANCY_INVALID_OPTIONS', message: /"drop" is not an option/ })
  await t.rejects(a.createInstance({ name: 'ok', config: ['plan'] as never }), { code: 'TENANCY_INVALID_OPTIONS', message: /config must be an object/ })
  await t.rejects(a.createInstance({ name: 'ok', config: { seats: 10n } }), { code: 'TENANCY_INVALID_OPTIONS', message: /config must be JSON: / }, 'a config JSON cannot hold')
  await t.rejects(a.updateInstance('acme', { config: null as never }), { code: 'TENANCY_INVALID_OPTIONS', message: /config must be an object/ })
  await a.createInstance({ name: 'a-b', mode: 'schema' })
  await t.rejects(a.createInstance({ name: 'a_b', mode: 'schema' }), { code: 'TENANCY_INVALID_INSTANCE_NAME', message: /schema would be instance "a-b"/ })
  await t.rejects(a.createInstance({ name: 'A.b', mode: 'schema' }), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(a.createInstance({ name: 'x'.repeat(60), mode: 'schema' }), { code: 'TENANCY_INVALID_INSTANCE_NAME', message: /over 63/ })
  await t.rejects(a.createInstance({ name: 'other', mode: 'schema', schema: 'names_a_b' }), { code: 'TENANCY_INVALID_INSTANCE_NAME' }, 'an explicit schema another has')
  t.equal(await count(), before + 1, 'nothing was created but a-b')
  t.same(await query(url, 'select nspname from pg_namespace where nspname like \'names_%\' order by 1'), [{ nspname: 'names_a_b' }])

  // Another process's row that this one has not heard of yet is still a duplicate: the database decides.
  const racers = await Promise.allSettled([a.createInstance({ name: 'race' }), b.createInstance({ name: 'race' })])
  const won = racers.filter((r) => r.status === 'fulfilled')
  const lost = racers.filter((r) => r.status === 'rejected') as PromiseRejectedResult[]
  t.equal(won.length, 1, 'one wins')
  t.equal(lost.length, 1)
  t.equal((lost[0]!.reason as { code: string }).code, 'TENANCY_INSTANCE_EXISTS', 'the other gets the duplicate error')
  t.same(await query(url, 'select name, state from tenancy_instance where name_key = \'race\''), [{ name: 'race', state: 'ready' }])
  const cased = await Promise.allSettled([a.createInstance({ name: 'Case' }), b.createInstance({ name: 'case' })])
  t.equal(cased.filter((r) => r.status === 'fulfilled').length, 1, 'names differing in case, at once: one wins')
  t.match((cased.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason, { code: /^TENANCY_(INSTANCE_EXISTS|INVALID_INSTANCE_NAME)$/ })
})

t.test('a store serves one tenancy: a second createTenancy with it fails and leaves the first working', async (t) => {
  const url = await createDatabase(t, 'store_once')
  await query(url, STUDENT)
  const shared = databaseStore({ seed: SEED })
  const first = await createTenancy({ instances: shared, datasources: { default: url }, tables: { student: 'must' } })
  t.teardown(() => first.close())
  await t.rejects(createTenancy({ instances: shared, datasources: { default: url }, tables: { student: 'must' } }), { code: 'TENANCY_INVALID_OPTIONS', message: /serves one tenancy/ })
  t.equal(shared.listening, true, 'the first tenancy still listens')
  const { instance } = await first.createInstance({ name: 'still' })
  t.equal(instance.state, 'ready', 'and writes')
})

t.test('lookups are synchronous and list() is one array per change', async (t) => {
  const url = await createDatabase(t, 'store_lookup')
  await query(url, STUDENT)
  const a = await open(url)
  const b = await open(url)
  t.teardown(async () => { await a.close(); await b.close() })
  const list = b.instances.list()
  t.equal(b.instances.list(), list, 'the same array while nothing changes')
  t.ok(Object.isFrozen(list))
  const { instance } = await a.createInstance({ name: 'lookup' })
  await eventually(() => b.instances.byId(instance.id)?.state === 'ready', WITHIN)
  const after = b.instances.list()
  t.not(after, list, 'a new array after a change')
  t.equal(b.instances.list(), after, 'and then the same again')
  t.same(after.map((i) => i.name), ['', 'shareTest', 'lookup'])
  t.equal(b.instances.byName('lookup'), b.instances.byId(instance.id), 'one object by name and by id')
  t.equal(b.instances.byName('LOOKUP'), undefined, 'names are exact in lookups')
})
