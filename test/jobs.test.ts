// Jobs through a real pg-boss on a real PostgreSQL: a job runs as the instance
// it was sent from, every row its handler writes lands in that instance, and a
// job that cannot name a usable instance fails (retries, dead-letters) without
// ever running in any context.
import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { PgBoss } from 'pg-boss'
import type { Generated } from 'kysely'
import { createTenancy, type Instance, type InstanceConfig, type InstanceStore, type Tenancy } from '../lib/index.js'
import { toInstance } from '../lib/instances/instance.js'
import { JOB_CONTEXT_KEY, runWrappedJob, unwrapJobData, wrapJobData } from '../lib/jobs/job-context.js'
import { createDatabase, query } from './helpers/database.js'

/** A store whose instances change while the process runs, as a database-backed store's do. */
class MutableStore implements InstanceStore {
  readonly #byId = new Map<number, Instance>()
  #list: readonly Instance[] = []
  constructor (configs: InstanceConfig[]) { for (const config of configs) this.put(config) }
  put (config: InstanceConfig): void {
    const instance = toInstance(config, new Set(['default']))
    if (typeof instance === 'string') throw new Error(instance)
    this.#byId.set(instance.id, instance)
    this.#list = [...this.#byId.values()]
  }
  remove (id: number): void { this.#byId.delete(id); this.#list = [...this.#byId.values()] }
  byName (name: string): Instance | undefined { return this.#list.find((instance) => instance.name === name) }
  byId (id: number): Instance | undefined { return this.#byId.get(id) }
  list (): readonly Instance[] { return this.#list }
}

interface DB {
  event: { id: Generated<number>, iid: Generated<number>, n: number, job: string, attempt: Generated<number> }
  audit: { iid: Generated<number | null>, note: string }
}

const url = await createDatabase(t, 'jobs')
await query(url, `
  create table event (id serial primary key, iid int not null, n int not null, job text not null, attempt int not null default 0);
  create table audit (iid int, note text not null);
`)
const names = Array.from({ length: 20 }, (_, i) => `i${i + 1}`)
const store = new MutableStore(names.map((name, i) => ({ name, id: i + 1 })))
const tenancy: Tenancy = await createTenancy({ instances: store, datasources: { default: url }, tables: { event: 'must', audit: 'may' } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<DB>()

/** A started pg-boss on the test database, stopped when `t` ends. */
async function startBoss (t: Test, options: Record<string, unknown> = {}): Promise<PgBoss> {
  // pg-boss waits 10 s for one of its 10 connections by default: a loaded CI machine sending 1,000 jobs at once needs longer.
  const boss = new PgBoss({ connectionString: url, schedule: false, supervise: false, connectionTimeoutMillis: 120_000, ...options })
  boss.on('error', () => {})
  await boss.start()
  t.teardown(() => boss.stop({ graceful: false }))
  return boss
}

/** Polls `check` until it returns something other than `undefined`; fails the test with `what` after `ms`. */
async function until<T> (what: string, check: () => Promise<T | undefined>, ms = 30000): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`)
    await sleep(50)
  }
}

async function settled (boss: PgBoss, queue: string, count: number): Promise<Array<{ id: string, state: string, retryCount: number, output: any, data: any }>> {
  return await until(`${count} settled jobs in ${queue}`, async () => {
    const jobs = await boss.findJobs<any>(queue)
    const done = jobs.filter((job) => job.state === 'completed' || job.state === 'failed')
    return done.length >= count ? done : undefined
  })
}

t.test('1,000 jobs sent from 20 instances interleaved: every row lands in its own instance, none lost', async (t) => {
  const boss = await startBoss(t)
  await boss.createQueue('write')
  const jobs = tenancy.jobs(boss)
  t.equal(tenancy.jobs(boss), jobs, 'one layer per boss')
  const expected = new Map<number, number>()
  // Each send waits a random moment inside its instance's frame, so frames of
  // all twenty instances are open at once while jobs are sent.
  await Promise.all(Array.from({ length: 1000 }, async (_, n) => {
    const id = (n * 7) % 20 + 1
    expected.set(n, id)
    await tenancy.runAsInstance(id, async () => {
      await sleep(Math.floor(Math.random() * 5))
      await jobs.send('write', { n })
    })
  }))
  const calls: Array<{ instance: number | undefined, ns: number[] }> = []
  await jobs.work<{ n: number }>('write', { batchSize: 50, burstWhenBatchFull: true, localConcurrency: 4, pollingIntervalSeconds: 0.5 }, async (batch) => {
    calls.push({ instance: tenancy.currentInstance()?.id, ns: batch.map((job) => job.data.n) })
    await sleep(Math.floor(Math.random() * 3))
    // No iid anywhere: the filter fills it from the context the job runs in.
    await db.insertInto('event').values(batch.map((job) => ({ n: job.data.n, job: job.id }))).execute()
  })
  const rows = await until('1000 rows', async () => {
    const found = await query<{ iid: number, n: number }>(url, 'select iid, n from event order by n')
    return found.length >= 1000 ? found : undefined
  })
  t.equal(rows.length, 1000, 'no row twice')
  t.same(rows.map((row) => row.n), Array.from({ length: 1000 }, (_, n) => n), 'every job ran once, none lost')
  const wrong = rows.filter((row) => row.iid !== expected.get(row.n))
  t.same(wrong, [], 'every row is in the instance that sent its job')
  t.ok(calls.every((call) => call.ns.every((n) => expected.get(n) === call.instance)), 'every handler call got only jobs of the instance it ran as')
  const done = await settled(boss, 'write', 1000)
  t.ok(done.every((job) => job.state === 'completed'), 'pg-boss completed every job')
  t.ok(done.every((job) => job.data[JOB_CONTEXT_KEY].instance === expected.get(job.data.n)), 'each job records its instance id under __tenancy')
  await query(url, 'truncate event')
})

t.test('send outside any instance fails with TENANCY_NO_CONTEXT and sends nothing; from runAsHost the job runs in host context', async (t) => {
  const boss = await startBoss(t)
  await boss.createQueue('note')
  const jobs = tenancy.jobs(boss)
  await t.rejects(jobs.send('note', { note: 'nobody' }), { code: 'TENANCY_NO_CONTEXT', statusCode: 500, message: /outside any instance/ })
  await t.rejects(jobs.send({ name: 'note', data: { note: 'nobody' } }), { code: 'TENANCY_NO_CONTEXT' })
  await t.rejects(tenancy.runAsHost(() => tenancy.unscoped(() => jobs.send('note', { note: 'unscoped' }))), { code: 'TENANCY_NO_CONTEXT', message: /unscoped\(\) with no instance/ })
  t.same(await boss.findJobs('note'), [], 'nothing was queued')
  await t.rejects(tenancy.runAsInstance('i1', () => jobs.send('note', { [JOB_CONTEXT_KEY]: { instance: 2 } } as any)), { code: 'TENANCY_INVALID_JOB', message: /reserved/ }, 'a payload cannot name its own instance')
  await t.rejects(tenancy.runAsInstance('i1', () => jobs.send('note', [1, 2] as any)), { code: 'TENANCY_INVALID_JOB', message: /a list/ })

  await tenancy.runAsHost(() => jobs.send('note', { note: 'host' }))
  await tenancy.runAsInstance('i3', () => tenancy.unscoped(() => jobs.send('note', { note: 'unscoped i3' })))
  const seen: Array<{ kind: string | undefined, note: string, data: unknown }> = []
  await jobs.work<{ note: string }>('note', { pollingIntervalSeconds: 0.5 }, async ([job]) => {
    seen.push({ kind: tenancy.context()?.kind, note: job!.data.note, data: job!.data })
    await db.insertInto('audit').values({ note: job!.data.note }).execute()
  })
  await settled(boss, 'note', 2)
  t.same(seen.sort((a, b) => a.note.localeCompare(b.note)), [
    { kind: 'host', note: 'host', data: { note: 'host' } },
    { kind: 'instance', note: 'unscoped i3', data: { note: 'unscoped i3' } },
  ], 'the host job ran in host context, the job sent in unscoped() as its instance (scoped); handlers never see __tenancy')
  t.same(await query(url, 'select iid, note from audit order by note'), [{ iid: null, note: 'host' }, { iid: 3, note: 'unscoped i3' }])
  await query(url, 'truncate audit')
})

t.test('a job whose instance was removed or disabled fails with the tenancy error, is dead-lettered, and never runs', async (t) => {
  store.put({ name: 'gone', id: 30 })
  store.put({ name: 'off', id: 31 })
  t.teardown(() => { store.remove(30); store.remove(31) })
  const boss = await startBoss(t)
  await boss.createQueue('fragile_dead')
  await boss.createQueue('fragile', { retryLimit: 1, retryDelay: 0, deadLetter: 'fragile_dead' })
  const jobs = tenancy.jobs(boss)
  await tenancy.runAsInstance('gone', () => jobs.send('fragile', { n: 30 }))
  await tenancy.runAsInstance('off', () => jobs.send('fragile', { n: 31 }))
  await tenancy.runAsInstance('i2', () => jobs.send('fragile', { n: 2 }))
  store.remove(30)
  store.put({ name: 'off', id: 31, disabled: true })
  const ran: Array<{ n: number, instance: number | undefined }> = []
  await jobs.work<{ n: number }>('fragile', { pollingIntervalSeconds: 0.5 }, async ([job]) => {
    ran.push({ n: job!.data.n, instance: tenancy.currentInstance()?.id })
  })
  const done = await until('both refused jobs to exhaust their retries', async () => {
    const found = await boss.findJobs<{ n: number }>('fragile')
    return found.filter((job) => job.state === 'failed').length === 2 && found.some((job) => job.state === 'completed') ? found : undefined
  })
  const byN = new Map(done.map((job) => [(job.data as any).n as number, job]))
  t.same(ran, [{ n: 2, instance: 2 }], 'only the healthy instance\'s job ran, as its instance')
  t.match(byN.get(30), { state: 'failed', retryCount: 1, output: { code: 'TENANCY_UNKNOWN_INSTANCE', statusCode: 404 } }, 'removed: retried, then failed')
  t.match(byN.get(31), { state: 'failed', retryCount: 1, output: { code: 'TENANCY_INSTANCE_DISABLED', statusCode: 403 } }, 'disabled: retried, then failed')
  const dead = await until('two dead letters', async () => {
    const found = await boss.findJobs<any>('fragile_dead')
    return found.length === 2 ? found : undefined
  })
  t.same(dead.map((job) => job.data[JOB_CONTEXT_KEY].instance).sort(), [30, 31], 'the dead letters keep their instance, ready for a redrive')
  t.same(dead.map((job) => (job.sourceOutput as any).code).sort(), ['TENANCY_INSTANCE_DISABLED', 'TENANCY_UNKNOWN_INSTANCE'])
})

t.test('payloads with bad ids fail clearly and never run, alone and in a batch', async (t) => {
  const boss = await startBoss(t)
  const bad: Array<[string, unknown]> = [
    ['sql', { [JOB_CONTEXT_KEY]: { instance: '1 or 1=1' } }],
    ['negative', { [JOB_CONTEXT_KEY]: { instance: -1 } }],
    ['float', { [JOB_CONTEXT_KEY]: { instance: 1.5 } }],
    ['name', { [JOB_CONTEXT_KEY]: { instance: 'i1' } }],
    ['missing', { x: 1 }],
    ['string mark', { [JOB_CONTEXT_KEY]: 'i1' }],
    ['both', { [JOB_CONTEXT_KEY]: { instance: 1, host: true } }],
    ['host false', { [JOB_CONTEXT_KEY]: { host: false } }],
  ]
  for (const [queue, options] of [['bad_one', { pollingIntervalSeconds: 0.5 }], ['bad_batch', { batchSize: 20, pollingIntervalSeconds: 0.5 }]] as const) {
    await boss.createQueue(queue, { retryLimit: 0 })
    // Sent around the layer, as a hostile or mistaken producer would.
    for (const [label, data] of bad) await boss.send(queue, { label, ...(data as object) })
    const good = await tenancy.runAsInstance('i4', () => tenancy.jobs(boss).send(queue, { label: 'good' }))
    const ran: string[] = []
    await tenancy.jobs(boss).work<{ label: string }>(queue, options, async (batch) => {
      for (const job of batch) ran.push(`${job.data.label}@${tenancy.currentInstance()?.id}`)
    })
    const done = await settled(boss, queue, bad.length + 1)
    t.same(ran, ['good@4'], `${queue}: only the good job ran`)
    t.equal(done.find((job) => job.id === good)?.state, 'completed')
    for (const job of done.filter((job) => job.id !== good)) {
      t.match(job, { state: 'failed', output: { code: 'TENANCY_INVALID_JOB', statusCode: 500 } }, `${queue}: ${job.data.label}`)
    }
    const messages = new Map(done.map((job) => [job.data.label, String(job.output?.message)]))
    t.match(messages.get('sql'), /__tenancy\.instance is "1 or 1=1", not an instance id/)
    t.match(messages.get('negative'), /is "-1", not an instance id/)
    t.match(messages.get('float'), /is "1\.5", not an instance id/)
    t.match(messages.get('name'), /is "i1", not an instance id .*never its name/)
    t.match(messages.get('missing'), /has no __tenancy key/)
  }
})

t.test('batches: each instance\'s jobs run in their own context, a refused job fails alone', async (t) => {
  store.put({ name: 'paused', id: 32 })
  t.teardown(() => { store.remove(32) })
  const boss = await startBoss(t)
  await boss.createQueue('mixed', { retryLimit: 0 })
  const jobs = tenancy.jobs(boss)
  const expected = new Map<number, number | 'host'>()
  for (let n = 0; n < 40; n++) {
    const where = n % 5 === 4 ? 'host' : (n % 4) + 1
    expected.set(n, where)
    await (where === 'host' ? tenancy.runAsHost(() => jobs.send('mixed', { n })) : tenancy.runAsInstance(where, () => jobs.send('mixed', { n })))
  }
  await tenancy.runAsInstance('paused', () => jobs.send('mixed', { n: 100 }))
  store.put({ name: 'paused', id: 32, disabled: true })
  const calls: Array<{ where: number | 'host' | undefined, ns: number[] }> = []
  await jobs.work<{ n: number }>('mixed', { batchSize: 50, pollingIntervalSeconds: 0.5 }, async (batch) => {
    const context = tenancy.context()
    calls.push({ where: context?.kind === 'host' ? 'host' : context?.instance?.id, ns: batch.map((job) => job.data.n) })
    if (context?.instance?.id === 3) throw new Error('instance 3 fails')
    return { ok: true }
  })
  const done = await settled(boss, 'mixed', 41)
  t.ok(calls.length >= 5, 'one call per context in the batch')
  for (const call of calls) t.ok(call.ns.every((n) => expected.get(n) === call.where), `a call as ${call.where} got only its own jobs`)
  t.same(new Set(calls.flatMap((call) => call.ns)).size, 40, 'every job of a usable instance reached the handler once; the paused one never did')
  const state = (n: number): string | undefined => done.find((job) => job.data.n === n)?.state
  for (const [n, where] of expected) t.equal(state(n), where === 3 ? 'failed' : 'completed', `job ${n} of ${where}`)
  t.match(done.find((job) => job.data.n === 100), { state: 'failed', output: { code: 'TENANCY_INSTANCE_DISABLED' } })
  t.match(done.find((job) => job.data.n === 2), { state: 'failed', output: { message: 'instance 3 fails' } }, 'a failing instance fails only its own jobs, with its own error')

  await t.rejects(jobs.work('mixed', { batchSize: 5, transactional: true }, async () => {}), { code: 'TENANCY_INVALID_OPTIONS', message: /one job at a time/ })
  await t.rejects(jobs.work('mixed', { batchSize: 5 } as any, undefined as any), { code: 'TENANCY_INVALID_OPTIONS', message: /handler/ })
})

t.test('a handler that asks for perJobResults settles only its own instance\'s jobs', async (t) => {
  const boss = await startBoss(t)
  await boss.createQueue('per_job', { retryLimit: 0 })
  const jobs = tenancy.jobs(boss)
  for (let n = 0; n < 6; n++) await tenancy.runAsInstance((n % 2) + 1, () => jobs.send('per_job', { n }))
  const stolen = (await boss.findJobs<{ n: number }>('per_job')).find((job) => job.data.n === 1)!.id // a job of instance 2
  await jobs.work<{ n: number }>('per_job', { batchSize: 10, perJobResults: true, pollingIntervalSeconds: 0.5 }, async (batch) => {
    const mine = batch.map((job) => ({ id: job.id, status: job.data.n === 4 ? 'failed' as const : 'completed' as const, output: { by: tenancy.currentInstance()?.id } }))
    // A result for a job it was not given is ignored.
    if (tenancy.currentInstance()?.id === 1) mine.push({ id: stolen, status: 'failed', output: { by: 1 } })
    return mine
  })
  const done = await settled(boss, 'per_job', 6)
  for (const job of done) {
    const n = job.data.n
    t.match(job, { state: n === 4 ? 'failed' : 'completed', output: { by: (n % 2) + 1 } }, `job ${n}`)
  }
})

t.test('a worker that crashes mid-job: pg-boss retries the job, and it runs again as the same instance', async (t) => {
  const crashing = await startBoss(t)
  await crashing.createQueue('crash', { retryLimit: 2, retryDelay: 0, expireInSeconds: 2 })
  const sent = await tenancy.runAsInstance('i7', () => tenancy.jobs(crashing).send('crash', { n: 7 }))
  let started!: () => void
  const running = new Promise<void>((resolve) => { started = resolve })
  await tenancy.jobs(crashing).work<{ n: number }>('crash', { pollingIntervalSeconds: 0.5 }, async ([job]) => {
    await db.insertInto('event').values({ n: job!.data.n, job: job!.id, attempt: job!.retryCount }).execute()
    started()
    await new Promise(() => {}) // never returns: the process dies here
  })
  await running
  await crashing.stop({ graceful: false })
  // Another process picks the job up after it expired.
  const next = await startBoss(t, { supervise: true, superviseIntervalSeconds: 1, monitorIntervalSeconds: 1 })
  await tenancy.jobs(next).work<{ n: number }>('crash', { pollingIntervalSeconds: 0.5 }, async ([job]) => {
    await db.insertInto('event').values({ n: job!.data.n, job: job!.id, attempt: job!.retryCount }).execute()
  })
  const rows = await until('the retry\'s row', async () => {
    const found = await query<{ iid: number, attempt: number, job: string }>(url, 'select iid, attempt, job from event where n = 7 order by attempt')
    return found.length >= 2 ? found : undefined
  })
  t.same(rows, [{ iid: 7, attempt: 0, job: sent }, { iid: 7, attempt: 1, job: sent }], 'both attempts ran as instance 7')
  const [job] = await settled(next, 'crash', 1)
  t.match(job, { state: 'completed', retryCount: 1 })
  await query(url, 'truncate event')
})

t.test('wrapJobData and runWrappedJob: the same two steps for any other queue', async (t) => {
  t.throws(() => wrapJobData(tenancy, { a: 1 }), { code: 'TENANCY_NO_CONTEXT' })
  const wrapped = tenancy.runAsInstance('i5', () => wrapJobData(tenancy, { a: 1 }))
  t.same(wrapped, { a: 1, [JOB_CONTEXT_KEY]: { instance: 5 } })
  t.same(tenancy.runAsHost(() => wrapJobData(tenancy)), { [JOB_CONTEXT_KEY]: { host: true } })
  t.same(unwrapJobData(JSON.parse(JSON.stringify(wrapped))), { target: { instance: 5 }, data: { a: 1 } }, 'survives a JSON round trip')
  // As a queue's worker calls it: outside any frame, with the stored payload.
  const ran = await runWrappedJob(tenancy, JSON.parse(JSON.stringify(wrapped)), async (data: { a: number }) => {
    const rows = await db.selectFrom('event').select('iid').execute()
    return { data, instance: tenancy.currentInstance()?.name, rows: rows.length }
  })
  t.same(ran, { data: { a: 1 }, instance: 'i5', rows: 0 })
  let called = false
  for (const payload of [{ [JOB_CONTEXT_KEY]: { instance: 77 } }, null, 'x', { [JOB_CONTEXT_KEY]: { instance: 0 } }]) {
    await t.rejects(runWrappedJob(tenancy, payload, () => { called = true }), { code: /^TENANCY_(UNKNOWN_INSTANCE|INVALID_JOB)$/ })
  }
  t.notOk(called, 'the handler never ran')
  t.equal(tenancy.currentInstance(), undefined)
})

