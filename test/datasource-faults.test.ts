import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { createServer, type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import { rm } from 'node:fs/promises'
import path from 'node:path'
import type { Generated } from 'kysely'
import tenancy from '../plugin/index.js'
import { createTenancy } from '../lib/index.js'
import { startEmbeddedPostgres } from '../scripts/embedded-postgres.js'
import { createDatabase, query, withDatabase } from './helpers/database.js'

// Faults stay with their instance: a second PostgreSQL server holds the
// 'remote' instance's database; it is stopped and restarted under load.
interface DB { student: { id: Generated<number>, iid: number, name: string } }

const table = 'create table student (id serial primary key, iid int not null, name text not null)'
const dir = path.resolve('.data', `faults-${process.pid}-${randomBytes(3).toString('hex')}`)
// fresh: false from the start: a fresh server deletes its data when it stops, so it could not come back.
let server = await startEmbeddedPostgres({ dir, fresh: false })
const port = server.port
t.teardown(async () => {
  await server.stop().catch(() => {})
  await rm(dir, { recursive: true, force: true })
})
await query(server.url, 'create database remote')
const remoteUrl = withDatabase(server.url, 'remote')
await query(remoteUrl, `${table}; insert into student (iid, name) select 1000, 'remote ' || n from generate_series(1, 3) n`)

const defaultUrl = await createDatabase(t, 'faults_default')
const localUrl = await createDatabase(t, 'faults_local')
await query(defaultUrl, `${table}; insert into student (iid, name) values (1, 'default 1'), (2, 'share 1')`)
await query(localUrl, `${table}; insert into student (iid, name) values (1001, 'local 1'), (1001, 'local 2')`)

// A host that accepts TCP connections and never answers.
const sockets = new Set<Socket>()
const blackhole = createServer((socket) => { sockets.add(socket); socket.on('error', () => {}) })
await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve))
const blackholePort = (blackhole.address() as { port: number }).port
t.teardown(async () => {
  for (const socket of sockets) socket.destroy()
  await new Promise((resolve) => blackhole.close(resolve))
})

const instances = [
  { name: '', id: 1 },
  { name: 'shareTest', id: 2 },
  { name: 'remote', id: 1000, isolate: true, isolateClient: 'remote' },
  { name: 'local', id: 1001, isolate: true, isolateClient: 'local' },
  { name: 'void', id: 1002, isolate: true, isolateClient: 'void' },
]
const expected: Record<string, number> = { '': 1, shareTest: 1, remote: 3, local: 2 }
const ten = await createTenancy({
  instances,
  datasources: {
    default: defaultUrl,
    remote: remoteUrl,
    local: { connectionString: localUrl, max: 2 },
    void: { connectionString: `postgres://postgres:postgres@127.0.0.1:${blackholePort}/void`, connectionTimeoutMillis: 300 },
  },
  pool: { max: 3, connectionTimeoutMillis: 2000 },
})
const db = ten.kysely<DB>()
const app = Fastify()
await app.register(tenancy, { tenancy: ten, resolve: { headerField: 'x-instance-name' } })
app.get('/count', async (request) => {
  const rows = await db.selectFrom('student').select('name').where('iid', '=', request.instance!.id).execute()
  return { count: rows.length }
})
t.teardown(() => app.close())

interface Outcome { name: string, status: number, code?: string, count?: number }
async function hit (name: string): Promise<Outcome> {
  const response = await app.inject({ method: 'GET', url: '/count', headers: { 'x-instance-name': name } })
  const body = response.json() as { code?: string, count?: number }
  return { name, status: response.statusCode, code: body.code, count: body.count }
}
const healthy = ['', 'shareTest', 'local']

function checkHealthy (t: Test, outcomes: Outcome[], what: string): void {
  const bad = outcomes.filter((o) => healthy.includes(o.name) && (o.status !== 200 || o.count !== expected[o.name]))
  t.same(bad, [], `${what}: every other instance answered with its rows`)
  t.ok(outcomes.filter((o) => healthy.includes(o.name)).length >= healthy.length, `${what}: other instances were asked`)
}

t.test('an isolated instance\'s server stops and comes back under load; the others never notice', async (t) => {
  const before = await Promise.all(Array.from({ length: 40 }, async (_, n) => await hit([...healthy, 'remote'][n % 4]!)))
  t.same(before.filter((o) => o.status !== 200 || o.count !== expected[o.name]), [], 'all answer before the fault')

  // Load keeps running while the server stops.
  let running = true
  const during: Outcome[] = []
  const workers = Array.from({ length: 6 }, async (_, w) => {
    for (let n = 0; running; n++) during.push(await hit([...healthy, 'remote'][(n + w) % 4]!))
  })
  await server.stop()
  const afterStop = await Promise.all(Array.from({ length: 40 }, async (_, n) => await hit([...healthy, 'remote'][n % 4]!)))
  running = false
  await Promise.all(workers)

  const remoteAfter = afterStop.filter((o) => o.name === 'remote')
  t.ok(remoteAfter.length >= 10, 'the stopped instance was asked')
  t.same(remoteAfter.filter((o) => o.status !== 503 || o.code !== 'TENANCY_DATASOURCE_UNAVAILABLE'), [], 'its requests fail with 503 TENANCY_DATASOURCE_UNAVAILABLE')
  checkHealthy(t, afterStop, 'server down')
  checkHealthy(t, during, 'while stopping')
  t.same(during.filter((o) => o.name === 'remote' && !(o.status === 200 || (o.status === 503 && o.code === 'TENANCY_DATASOURCE_UNAVAILABLE'))), [],
    'requests caught by the stop answer 200 or 503, nothing else')

  server = await startEmbeddedPostgres({ dir, fresh: false, port })
  const afterRestart = await Promise.all(Array.from({ length: 40 }, async (_, n) => await hit([...healthy, 'remote'][n % 4]!)))
  t.same(afterRestart.filter((o) => o.status !== 200 || o.count !== expected[o.name]), [], 'after the restart every instance answers, remote included, without a restart of the app')
  t.same((await query(remoteUrl, 'select distinct iid from student')).map((r) => r.iid), [1000], 'the remote database holds only its rows')
})

t.test('a host that never answers fails its instance after the connection timeout; the others keep answering', async (t) => {
  const outcomes = await Promise.all([
    hit('void'), hit('void'),
    ...Array.from({ length: 30 }, async (_, n) => await hit([...healthy, 'remote'][n % 4]!)),
  ])
  t.same(outcomes.filter((o) => o.name === 'void').map((o) => [o.status, o.code]), [[503, 'TENANCY_DATASOURCE_UNAVAILABLE'], [503, 'TENANCY_DATASOURCE_UNAVAILABLE']])
  checkHealthy(t, outcomes, 'blackhole')
  t.same(outcomes.filter((o) => o.name === 'remote' && o.status !== 200), [], 'remote is fine again too')
})

t.test('one instance exhausting its pool does not hold up the others', async (t) => {
  let finish!: () => void
  const gate = new Promise<void>((resolve) => { finish = resolve })
  let opened = 0
  // Two transactions hold both of local's clients (max 2).
  const holders = Array.from({ length: 2 }, async () => await ten.runAsInstance('local', async () => {
    await db.transaction().execute(async (trx) => {
      await trx.selectFrom('student').select('id').execute()
      opened++
      await gate
    })
  }))
  while (opened < 2) await new Promise((resolve) => setImmediate(resolve))
  const outcomes = await Promise.all([
    hit('local'),
    ...Array.from({ length: 30 }, async (_, n) => await hit(['', 'shareTest', 'remote'][n % 3]!)),
  ])
  const local = outcomes[0]!
  t.same([local.status, local.code], [503, 'TENANCY_DATASOURCE_UNAVAILABLE'], 'the exhausted instance times out waiting for its own pool')
  t.same(outcomes.slice(1).filter((o) => o.status !== 200 || o.count !== expected[o.name]), [], 'every other instance answered meanwhile')
  finish()
  await Promise.all(holders)
  t.same(await hit('local'), { name: 'local', status: 200, code: undefined, count: 2 }, 'local works again once its clients are back')
})

