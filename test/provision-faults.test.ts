import t from 'tap'
import pg from 'pg'
import { query } from './helpers/database.js'
import { eventually } from './fixtures/store-helpers.js'
import { hit, leftovers, provisionSetup, rowsAt } from './fixtures/store-provision.js'
import { ensureRole, ensureSchema } from '../lib/lifecycle/provision.js'

// Provisioning that stops half-way, is retried, is refused, or races a
// removal; and what the statements sent to the server carry.
const setup = await provisionSetup(t, 'provision_faults')
const { a, b, app, url, prefix, failing, hooks } = setup
const WITHIN = 1000

t.test('a migration fails half-way: failed with the reason, 503 everywhere, then a retry resumes it', async (t) => {
  const failures: string[] = []
  b.on('provisionFailed', (instance, error) => { failures.push(`${instance.name}: ${error.message}`) })
  const schema = `${prefix}flaky`
  failing.add(schema)
  await t.rejects(a.createInstance({ name: 'flaky', mode: 'schema' }), { message: `migration 002 refused in ${schema} of ${new URL(url).pathname.slice(1)}` })
  const failed = a.instances.byName('flaky')!
  t.match(failed, { state: 'failed', error: /migration 002 refused/ })
  t.same(await query(url, 'select state, error from tenancy_instance where id = $1', [failed.id]), [{ state: 'failed', error: failed.error }])
  t.same(await query(url, `select name from ${schema}.kysely_migration order by name`), [{ name: '001_tables' }], 'the steps done stay done')
  t.equal(await eventually(() => b.instances.byName('flaky')?.state === 'failed', WITHIN), true)
  t.match(await hit(app, 'flaky'), { status: 503, code: 'TENANCY_INSTANCE_NOT_READY' }, 'requests get 503')
  t.throws(() => b.runAsInstance('flaky', () => {}), { code: 'TENANCY_INSTANCE_NOT_READY', statusCode: 503 }, 'so does work as the instance')
  t.match(failures, [/^flaky: migration 002 refused/], 'the other tenancy got provisionFailed')
  t.equal(setup.received.get('flaky'), undefined, 'onProvision did not run')

  failing.delete(schema)
  const { instance, password } = await a.createInstance({ name: 'flaky', mode: 'schema', title: 'Flaky' })
  t.equal(instance.id, failed.id, 'the retry resumed the same instance')
  t.match(instance, { state: 'ready', title: 'Flaky' })
  t.notOk('error' in instance, 'the reason is gone')
  t.same(await query(url, `select name from ${schema}.kysely_migration order by name`), [{ name: '001_tables' }, { name: '002_check' }])
  t.equal(setup.received.get('flaky'), password)
  t.equal(await eventually(() => b.instances.byName('flaky')?.state === 'ready', WITHIN), true)
  t.same(await hit(app, 'flaky'), { status: 200, code: undefined, body: [] })
  await t.rejects(a.createInstance({ name: 'flaky', mode: 'schema' }), { code: 'TENANCY_INSTANCE_EXISTS' }, 'a ready instance is not created twice')
  await a.removeInstance('flaky', { drop: true })
})

t.test('onProvision fails, then passes on the retry; a failed creation removed with drop leaves nothing', async (t) => {
  let attempts = 0
  hooks.set('fussy', async () => { if (++attempts === 1) throw new Error('no admin today') })
  await t.rejects(a.createInstance({ name: 'fussy', mode: 'schema', role: true, password: 'first secret' }), { message: 'no admin today' })
  t.match(a.instances.byName('fussy'), { state: 'failed', error: 'no admin today' })
  await t.rejects(a.createInstance({ name: 'fussy', mode: 'shared' }), { code: 'TENANCY_INSTANCE_EXISTS', message: /another mode/ }, 'a retry must ask for the same mode')
  const { instance, rolePassword } = await a.createInstance({ name: 'fussy', mode: 'schema', role: true, password: 'second secret' })
  t.equal(instance.state, 'ready')
  t.equal(attempts, 2)
  t.ok(rolePassword, 'the role gets a new password on the retry')
  t.same((await rowsAt(setup, instance, 'app_user')).map((r) => r.login), ['admin'], 'one administrator: onProvision is idempotent')

  failing.add(`${prefix}broken`)
  t.teardown(() => { failing.delete(`${prefix}broken`) })
  await t.rejects(a.createInstance({ name: 'broken', mode: 'schema', role: true }))
  t.same((await leftovers(setup)).schemas, [`${prefix}broken`, `${prefix}fussy`], 'the failed one left its schema')
  await a.removeInstance('broken', { drop: true })
  await a.removeInstance('fussy', { drop: true })
  t.same(await leftovers(setup), { schemas: [], roles: [], databases: [] }, 'removal cleans up after a failed creation too')
  t.equal(a.instances.byName('broken'), undefined)
})

t.test('not ready while provisioning: 503, and a removal meanwhile is refused', async (t) => {
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  let started!: () => void
  const inside = new Promise<void>((resolve) => { started = resolve })
  hooks.set('slow', async () => { started(); await held })
  const creating = a.createInstance({ name: 'slow', mode: 'isolated' })
  await inside
  t.equal(await eventually(() => b.instances.byName('slow')?.state === 'provisioning', WITHIN), true, 'the other tenancy sees it provisioning')
  t.match(await hit(app, 'slow'), { status: 503, code: 'TENANCY_INSTANCE_NOT_READY' })
  await t.rejects(b.removeInstance('slow', { drop: true }), { code: 'TENANCY_INSTANCE_NOT_READY' }, 'removal waits for the creation to end')
  await t.rejects(b.createInstance({ name: 'slow', mode: 'isolated' }), { code: 'TENANCY_INSTANCE_EXISTS', message: /being created/ }, 'a second creation is refused')
  release()
  const { instance } = await creating
  t.equal(instance.state, 'ready')
  t.equal(await eventually(() => b.instances.byName('slow')?.state === 'ready', WITHIN), true)
  t.same(await hit(app, 'slow'), { status: 200, code: undefined, body: [] })
  await b.removeInstance('slow', { drop: true })
  t.same((await leftovers(setup)).databases, [], 'removed from the other tenancy, its database dropped')
})

t.test('a schema or role of the same name that is not the instance\'s is neither taken nor dropped', async (t) => {
  await query(url, `create schema ${prefix}taken; create table ${prefix}taken.keep (id int); create role ${prefix}owned`)
  t.teardown(async () => { await query(url, `drop schema if exists ${prefix}taken cascade; drop role if exists ${prefix}owned`) })
  await t.rejects(a.createInstance({ name: 'taken', mode: 'schema' }), { code: 'TENANCY_INSTANCE_EXISTS', statusCode: 409, message: /schema "p[0-9a-f]+_taken" exists and was not made for instance "taken"/ })
  await a.removeInstance('taken', { drop: true })
  t.same(await query(url, `select count(*)::int as n from ${prefix}taken.keep`), [{ n: 0 }], 'the foreign schema and its table are still there')
  await t.rejects(a.createInstance({ name: 'owned', mode: 'schema', role: true }), { code: 'TENANCY_INSTANCE_EXISTS', message: /role "p[0-9a-f]+_owned" exists/ })
  await a.removeInstance('owned', { drop: true })
  t.same(await query(url, 'select rolname from pg_roles where rolname = $1', [`${prefix}owned`]), [{ rolname: `${prefix}owned` }], 'the foreign role stays')
  t.same((await leftovers(setup)).schemas, [`${prefix}taken`], 'the instance\'s own schema was dropped')
})

t.test('shared removal with drop follows foreign keys between tenant tables', async (t) => {
  await query(url, 'alter table public.app_user add column student_id int references public.student (id)')
  t.teardown(() => query(url, 'alter table public.app_user drop column student_id'))
  const { instance } = await a.createInstance({ name: 'linked' })
  await query(url, `insert into public.student (id, iid, name) values (9001, ${instance.id}, 'linked 1'), (9002, 2, 'share 9002');
    update public.app_user set student_id = 9001 where iid = ${instance.id}`)
  await a.removeInstance('linked', { drop: true })
  t.same(await query(url, 'select count(*)::int as n from public.student where iid = $1', [instance.id]), [{ n: 0 }])
  t.same(await query(url, 'select count(*)::int as n from public.app_user where iid = $1', [instance.id]), [{ n: 0 }])
  t.same(await query(url, 'select name from public.student where id = 9002'), [{ name: 'share 9002' }], 'another instance\'s row stays')
})

t.test('passwords never reach the server in a statement', async (t) => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end())
  const sent: string[] = []
  const original = client.query.bind(client) as (...args: unknown[]) => unknown
  ;(client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    sent.push(typeof args[0] === 'string' ? args[0] : JSON.stringify(args))
    return original(...args)
  }
  const role = `${prefix}secretive`
  const password = 'Plain-Text-Password-42'
  await client.query('begin')
  await ensureSchema(client, role, 'marker', 'secretive')
  await ensureRole(client, role, role, 'marker', password, 'secretive')
  await client.query('rollback')
  t.ok(sent.some((text) => /create role .* login password 'SCRAM-SHA-256\$4096:/.test(text)), 'the role is made with a SCRAM verifier')
  t.notOk(sent.some((text) => text.includes(password)), 'the password itself is in no statement')
})
