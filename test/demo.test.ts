// The demo as its users see it, over HTTP: each instance sees and writes only
// its own students, and each row lands in its instance's database.
import t from 'tap'
import { buildDemo } from '../examples/demo-app.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'

const server = await createDatabase(t, 'demo')
const { app, defaultUrl, isolateUrl, migrations } = await buildDemo(server)
t.teardown(async () => {
  await app.close()
  await adminQuery(`drop database if exists "${new URL(isolateUrl).pathname.slice(1)}" with (force)`)
})

const names = async (instance: string | undefined): Promise<string[]> => {
  const res = await app.inject({ url: '/students', headers: instance === undefined ? {} : { 'x-instance-name': instance } })
  t.equal(res.statusCode, 200)
  return res.json().map((row: { name: string }) => row.name)
}

t.test('the tables come from migrations: once on the shared tables, once in the isolated database', async (t) => {
  t.same(migrations.targets.map((target) => [target.target, target.instances, target.status, target.results.map((result) => result.migrationName)]), [
    ['shared:default', ['', 'shareTest'], 'success', ['001_student']],
    ['isolated:isolateTest', ['isolateTest'], 'success', ['001_student']],
  ])
  for (const url of [defaultUrl, isolateUrl]) t.same(await query(url, 'select name from kysely_migration'), [{ name: '001_student' }])
  const again = await buildDemo(server)
  t.teardown(() => again.app.close())
  t.same(again.migrations.targets.map((target) => [target.target, target.status, target.results]), [['shared:default', 'success', []], ['isolated:isolateTest', 'success', []]], 'a restart finds nothing to do')
})

t.test('each instance lists only its own students', async (t) => {
  t.same(await names(undefined), ['Ada', 'Grace'])
  t.same(await names('shareTest'), ['Linus', 'Ken'])
  t.same(await names('isolateTest'), ['Barbara', 'Edsger'])
  const byHost = await app.inject({ url: '/students', headers: { host: 'sharetest.localhost:3000' } })
  t.same(byHost.json().map((row: { name: string }) => row.name), ['Linus', 'Ken'], 'by host name')
  const byQuery = await app.inject({ url: '/students?x-instance-name=isolateTest' })
  t.same(byQuery.json().map((row: { name: string }) => row.name), ['Barbara', 'Edsger'], 'by query field')
})

t.test('a new student lands in its instance, in its database', async (t) => {
  const res = await app.inject({ method: 'POST', url: '/students', headers: { 'x-instance-name': 'shareTest' }, payload: { name: 'Alan' } })
  t.equal(res.statusCode, 201)
  const iso = await app.inject({ method: 'POST', url: '/students', headers: { 'x-instance-name': 'isolateTest' }, payload: { name: 'Frances' } })
  t.equal(iso.statusCode, 201)
  t.same(await names('shareTest'), ['Linus', 'Ken', 'Alan'])
  t.same(await names(undefined), ['Ada', 'Grace'], 'the default instance is untouched')
  t.same(await query(defaultUrl, 'select iid, name from student order by id'),
    [{ iid: 1, name: 'Ada' }, { iid: 1, name: 'Grace' }, { iid: 2, name: 'Linus' }, { iid: 2, name: 'Ken' }, { iid: 2, name: 'Alan' }])
  t.same(await query(isolateUrl, 'select iid, name from student order by id'),
    [{ iid: 1000, name: 'Barbara' }, { iid: 1000, name: 'Edsger' }, { iid: 1000, name: 'Frances' }])
})

t.test('bad requests are refused with their codes', async (t) => {
  const unknown = await app.inject({ url: '/students', headers: { 'x-instance-name': 'nobody' } })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'TENANCY_UNKNOWN_INSTANCE')
  const bad = await app.inject({ url: '/students', headers: { 'x-instance-name': '../etc' } })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'TENANCY_INVALID_INSTANCE_NAME')
  const empty = await app.inject({ method: 'POST', url: '/students', headers: { 'x-instance-name': 'shareTest' }, payload: { name: '' } })
  t.equal(empty.statusCode, 400)
  t.same(await names('shareTest'), ['Linus', 'Ken', 'Alan'], 'nothing was written')
})
