// instanceLogMixin: every pino line written inside an instance's context
// carries the instance, whoever writes it (a request, a pg-boss job, a script),
// once per line.
import t from 'tap'
import Fastify from 'fastify'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { PgBoss } from 'pg-boss'
import tenancyPlugin, { createTenancy } from '../plugin/index.js'
import { instanceLogMixin } from '../lib/log-mixin.js'
import { createDatabase } from './helpers/database.js'

const url = await createDatabase(t, 'log_mixin')
const tenancy = await createTenancy({ instances: [{ name: '', id: 1 }, { name: 'acme', id: 2 }, { name: 'beta', id: 3 }], datasources: { default: url }, tables: {} })
t.teardown(() => tenancy.close())

const lines: string[] = []
const stream = new Writable({ write (chunk, _encoding, done) { lines.push(...String(chunk).split('\n').filter(Boolean)); done() } })
const app = Fastify({ logger: { level: 'info', stream, mixin: instanceLogMixin() } })
await app.register(tenancyPlugin, { tenancy, closeOnShutdown: false })
app.get('/hello', async (request) => {
  request.log.info('in the handler')
  tenancy.runAsInstance('beta', () => request.log.info('switched'))
  return 'hi'
})
await app.ready()
t.teardown(() => app.close())

/** The lines logged while `fn` ran, raw and parsed. */
async function logged (fn: () => Promise<unknown> | unknown): Promise<Array<{ raw: string, line: any }>> {
  const from = lines.length
  await fn()
  return lines.slice(from).map((raw) => ({ raw, line: JSON.parse(raw) }))
}
const times = (raw: string, key: string): number => raw.split(`"${key}":`).length - 1

t.test('lines written inside an instance, in host context, unscoped and outside', async (t) => {
  const [inside] = await logged(() => tenancy.runAsInstance('acme', async () => { await sleep(1); app.log.info('work') }))
  t.match(inside!.line, { instance: 'acme', msg: 'work' })
  const [host] = await logged(() => tenancy.runAsHost(() => app.log.info('operator')))
  t.match(host!.line, { host: true, msg: 'operator' })
  t.notOk('instance' in host!.line)
  const [unscoped] = await logged(() => tenancy.runAsInstance('beta', () => tenancy.unscoped(() => app.log.warn({ rows: 3 }, 'cross-instance'))))
  t.match(unscoped!.line, { instance: 'beta', unscoped: true, rows: 3 })
  const [outside] = await logged(() => app.log.info('start-up'))
  t.notOk('instance' in outside!.line || 'host' in outside!.line, 'nothing outside any context')
  const [child] = await logged(() => tenancy.runAsInstance('acme', () => app.log.child({ part: 'x' }).info({ instance: 'mine' }, 'own field')))
  t.equal(child!.line.instance, 'mine', 'a line\'s own field wins')
})

t.test('request lines: the instance once, and the inner instance after a switch', async (t) => {
  const found = await logged(async () => {
    const res = await app.inject({ url: '/hello', headers: { 'x-instance-name': 'acme' } })
    t.equal(res.statusCode, 200)
  })
  const handler = found.find((entry) => entry.line.msg === 'in the handler')!
  t.equal(handler.line.instance, 'acme')
  t.equal(times(handler.raw, 'instance'), 1, 'the request logger\'s binding is not repeated')
  const done = found.find((entry) => entry.line.msg === 'request completed')!
  t.equal(done.line.instance, 'acme')
  t.equal(times(done.raw, 'instance'), 1)
  const switched = found.find((entry) => entry.line.msg === 'switched')!
  t.equal(switched.line.instance, 'beta', 'the current instance is the value a parser keeps')
})

t.test('a pg-boss job\'s lines carry the instance it runs as', async (t) => {
  const boss = new PgBoss({ connectionString: url, schedule: false, supervise: false })
  boss.on('error', () => {})
  await boss.start()
  t.teardown(() => boss.stop({ graceful: false }))
  await boss.createQueue('export')
  const jobs = tenancy.jobs(boss)
  let ran = 0
  const found = await logged(async () => {
    await jobs.work<{ n: number }>('export', { pollingIntervalSeconds: 0.5 }, async ([job]) => {
      app.log.info({ n: job!.data.n }, 'exporting')
      ran++
    })
    await tenancy.runAsInstance('acme', () => jobs.send('export', { n: 1 }))
    await tenancy.runAsInstance('beta', () => jobs.send('export', { n: 2 }))
    const deadline = Date.now() + 20000
    while (ran < 2 && Date.now() < deadline) await sleep(50)
  })
  const exports = found.filter((entry) => entry.line.msg === 'exporting').map((entry) => [entry.line.n, entry.line.instance]).sort()
  t.same(exports, [[1, 'acme'], [2, 'beta']])
})
