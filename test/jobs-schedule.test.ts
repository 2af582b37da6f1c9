// Per-instance schedules on a real pg-boss, driven by pg-boss's TestClock (its
// cron has minute resolution: the clock moves pg-boss's timers and the time
// its SQL reads, so minutes pass in milliseconds). Two PgBoss objects play two
// processes of one application sharing the scheduler.
import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { PgBoss, TestClock } from 'pg-boss'
import type { Generated } from 'kysely'
import { createTenancy, databaseStore, type Instance, type InstanceConfig, type InstanceStore, type Tenancy } from '../lib/index.js'
import { toInstance } from '../lib/instances/instance.js'
import { JOB_CONTEXT_KEY } from '../lib/jobs/job-context.js'
import { createDatabase, query } from './helpers/database.js'
import { eventually } from './fixtures/store-helpers.js'

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

interface DB { fired: { iid: Generated<number>, job: string, at: string } }

const url = await createDatabase(t, 'jobs_schedule')
await query(url, 'create table fired (iid int not null, job text not null, at timestamptz not null)')
const store = new MutableStore([{ name: 'a', id: 1 }, { name: 'b', id: 2 }, { name: 'c', id: 3 }])
const tenancy: Tenancy = await createTenancy({ instances: store, datasources: { default: url }, tables: { fired: 'must' } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<DB>()

let inflight = 0
/** Two processes on one clock, each working the queue through the layer. */
async function fleet (t: Test, clock: TestClock): Promise<PgBoss[]> {
  const bosses: PgBoss[] = []
  for (let i = 0; i < 2; i++) {
    const boss = new PgBoss({ connectionString: url, clock, supervise: false })
    boss.on('error', () => {})
    await boss.start()
    t.teardown(() => boss.stop({ graceful: false }))
    bosses.push(boss)
  }
  await bosses[0]!.createQueue('tick')
  for (const boss of bosses) {
    await tenancy.jobs(boss).work('tick', { pollingIntervalSeconds: 2 }, async ([job]) => {
      inflight++
      try {
        await db.insertInto('fired').values({ job: job!.id, at: new Date(clock.now()).toISOString() }).execute()
      } finally { inflight-- }
    })
  }
  return bosses
}

/** Moves the clock in steps of `step` ms for `ms` ms, letting handlers finish between steps. */
async function advance (clock: TestClock, ms: number, step = 2000): Promise<void> {
  for (let passed = 0; passed < ms; passed += step) {
    await clock.tick(step)
    while (inflight > 0) await sleep(5)
  }
}

async function counts (): Promise<Map<number, number>> {
  const rows = await query<{ iid: number, n: number }>(url, 'select iid, count(*)::int as n from fired group by iid')
  return new Map(rows.map((row) => [row.iid, row.n]))
}

async function keys (boss: PgBoss, name: string): Promise<string[]> {
  return (await boss.getSchedules(name)).map((schedule) => schedule.key).sort()
}

t.test('instances: \'all\': one cron entry per instance, each firing runs as its instance, and refresh() follows the store', async (t) => {
  const clock = new TestClock(Date.parse('2030-01-01T00:00:10Z'))
  const [one, two] = await fleet(t, clock)
  // Both processes schedule at start-up, as every process of an application does.
  t.same(await tenancy.jobs(one!).schedule('tick', '* * * * *', { kind: 'tick' }, { instances: 'all' }), { scheduled: 3, unscheduled: 0 })
  t.same(await tenancy.jobs(two!).schedule('tick', '* * * * *', { kind: 'tick' }, { instances: 'all' }), { scheduled: 3, unscheduled: 0 })
  t.same(await keys(one!, 'tick'), ['instance/1', 'instance/2', 'instance/3'], 'one entry per instance, not one per process')
  const stored = await one!.getSchedule('tick', 'instance/2')
  t.same(stored?.data, { kind: 'tick', [JOB_CONTEXT_KEY]: { instance: 2 } }, 'each entry carries its instance')

  await advance(clock, 60_000)
  const first = await counts()
  t.same([...first.keys()].sort(), [1, 2, 3], 'every instance fired')

  store.put({ name: 'late', id: 4 })
  t.same(await tenancy.jobs(one!).refresh(), { scheduled: 1, unscheduled: 0 }, 'an instance created after start-up gets its entry')
  t.same(await tenancy.jobs(two!).refresh(), { scheduled: 0, unscheduled: 0 }, 'the other process finds nothing left to do')
  await advance(clock, 60_000)
  t.ok(((await counts()).get(4) ?? 0) >= 1, 'and fires as that instance')

  store.remove(2)
  store.put({ name: 'c', id: 3, disabled: true })
  t.same(await tenancy.jobs(two!).refresh(), { scheduled: 0, unscheduled: 2 }, 'a removed and a disabled instance lose their entries')
  t.same(await keys(one!, 'tick'), ['instance/1', 'instance/4'])
  const before = await counts()
  await advance(clock, 150_000)
  const after = await counts()
  t.equal(after.get(2), before.get(2), 'the removed instance fires no more')
  t.equal(after.get(3), before.get(3), 'the disabled instance fires no more')
  t.ok(after.get(1)! >= before.get(1)! + 2 && after.get(4)! >= before.get(4)! + 2, 'the others go on firing')

  // Each row was written in the context of the job that wrote it: its iid is the instance the entry recorded.
  const sources = new Map<string, number>()
  for (const boss of [one!]) {
    for (const job of await boss.findJobs<any>('tick')) sources.set(job.id, job.data[JOB_CONTEXT_KEY].instance)
  }
  const rows = await query<{ iid: number, job: string, at: Date }>(url, 'select iid, job, at from fired')
  t.ok(rows.length >= 10)
  t.same(rows.filter((row) => sources.get(row.job) !== row.iid), [], 'every firing ran as its own instance')
  // One scheduler for the fleet: two processes, one firing per instance and minute.
  const perMinute = new Map<string, number>()
  for (const row of rows) {
    const slot = `${row.iid}@${new Date(row.at).toISOString().slice(0, 16)}`
    perMinute.set(slot, (perMinute.get(slot) ?? 0) + 1)
  }
  t.same([...perMinute.values()].filter((n) => n > 1), [], 'no instance fired twice in one minute')
  t.same(await tenancy.jobs(one!).unschedule('tick', { instances: 'all' }), { scheduled: 0, unscheduled: 2 })
  t.same(await tenancy.jobs(two!).unschedule('tick', { instances: 'all' }), { scheduled: 0, unscheduled: 0 })
  t.same(await tenancy.jobs(two!).refresh(), { scheduled: 0, unscheduled: 0 }, 'unschedule stopped following the store')
  store.put({ name: 'b', id: 2 })
  store.put({ name: 'c', id: 3 })
  store.remove(4)
  await query(url, 'truncate fired')
})

t.test('a list of instances, the current context, keys, unschedule', async (t) => {
  const clock = new TestClock(Date.parse('2030-02-01T00:00:10Z'))
  const [boss] = await fleet(t, clock)
  const jobs = tenancy.jobs(boss!)
  t.same(await jobs.schedule('tick', '*/5 * * * *', null, { instances: ['a', 3], key: 'report' }), { scheduled: 2, unscheduled: 0 })
  await tenancy.runAsInstance('b', () => jobs.schedule('tick', '0 * * * *', { only: 'b' }))
  await tenancy.runAsHost(() => jobs.schedule('tick', '0 0 * * *', { host: 'yes' }))
  t.same(await keys(boss!, 'tick'), ['host', 'instance/2', 'report/instance/1', 'report/instance/3'])
  t.same((await boss!.getSchedule('tick', 'host'))?.data, { host: 'yes', [JOB_CONTEXT_KEY]: { host: true } })
  await t.rejects(jobs.schedule('tick', '* * * * *', {}), { code: 'TENANCY_NO_CONTEXT' }, 'no instances and no context: nothing is scheduled')
  await t.rejects(jobs.schedule('tick', '* * * * *', {}, { instances: ['a', 'nope'] }), { code: 'TENANCY_UNKNOWN_INSTANCE' })
  await t.rejects(jobs.schedule('tick', '* * * * *', {}, { instances: 'some' as any }), { code: 'TENANCY_INVALID_OPTIONS' })
  t.same(await keys(boss!, 'tick'), ['host', 'instance/2', 'report/instance/1', 'report/instance/3'], 'a refused call scheduled nothing')

  await advance(clock, 60_000)
  const fired = await counts()
  t.ok(fired.get(1)! >= 1 && fired.get(3)! >= 1 && fired.get(2)! >= 1, 'the listed instances and the context\'s fired')

  t.same(await jobs.unschedule('tick', { key: 'report', instances: 'all' }), { scheduled: 0, unscheduled: 2 })
  t.same(await tenancy.runAsInstance('b', () => jobs.unschedule('tick')), { scheduled: 0, unscheduled: 1 })
  t.same(await keys(boss!, 'tick'), ['host'], 'only the host entry is left')
  await tenancy.runAsHost(() => jobs.unschedule('tick'))
  t.same(await keys(boss!, 'tick'), [])
  await query(url, 'truncate fired')
})

/**
 * A databaseStore tenancy with instance `a` on a database of its own, a started
 * pg-boss with a `tick` queue on it, and the process warnings about schedules
 * collected, all ended with `t`.
 */
async function following (t: Test, label: string): Promise<{ url: string, live: Tenancy, boss: PgBoss, warnings: string[] }> {
  const followUrl = await createDatabase(t, label)
  const live = await createTenancy({ instances: databaseStore({ seed: [{ name: 'a', id: 1 }] }), datasources: { default: followUrl } })
  t.teardown(() => live.close())
  const boss = new PgBoss({ connectionString: followUrl, supervise: false })
  boss.on('error', () => {})
  await boss.start()
  // Safe after a test stopped it itself.
  t.teardown(() => boss.stop({ graceful: false }).catch(() => {}))
  await boss.createQueue('tick')
  const warnings: string[] = []
  const onWarning = (warning: Error): void => { if (warning.message.includes('schedules')) warnings.push(warning.message) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  return { url: followUrl, live, boss, warnings }
}

t.test('with databaseStore() the schedules of all instances follow createInstance, disabling and removeInstance by themselves', async (t) => {
  const { live, boss, warnings } = await following(t, 'jobs_follow')
  const jobs = live.jobs(boss)
  t.same(await jobs.schedule('tick', '0 3 * * *', { kind: 'tick' }, { instances: 'all' }), { scheduled: 1, unscheduled: 0 })
  t.same(await keys(boss, 'tick'), ['instance/1'])

  // No refresh() call below: each change of the store brings the entries in step.
  const { instance } = await live.createInstance({ name: 'late' })
  const both = ['instance/1', `instance/${instance.id}`].sort()
  t.same(await eventually(async () => { const now = await keys(boss, 'tick'); return now.length === 2 ? now : undefined }, 30_000), both, 'a created instance gets its entry')
  const entry = await boss.getSchedule('tick', `instance/${instance.id}`)
  t.same(entry?.data, { kind: 'tick', [JOB_CONTEXT_KEY]: { instance: instance.id } }, 'carrying that instance')
  await live.updateInstance('a', { disabled: true })
  t.same(await eventually(async () => { const now = await keys(boss, 'tick'); return now.length === 1 ? now : undefined }, 30_000), [`instance/${instance.id}`], 'a disabled instance loses its entry')
  await live.removeInstance('late')
  t.same(await eventually(async () => { const now = await keys(boss, 'tick'); return now.length === 0 ? now : undefined }, 30_000), [], 'a removed instance loses its entry')
  t.same(await jobs.refresh(), { scheduled: 0, unscheduled: 0 }, 'nothing was left for an explicit refresh')
  t.same(warnings, [], 'no refresh failed')
})

t.test('a failed follow-up refresh is a process warning and the next change tries again; boss.stop() ends the following', async (t) => {
  const { url: followUrl, live, boss, warnings } = await following(t, 'jobs_follow_fail')
  const jobs = live.jobs(boss)
  await jobs.schedule('tick', '0 3 * * *', { kind: 'tick' }, { instances: 'all' })
  const stored = async (): Promise<string[]> =>
    (await query<{ key: string }>(followUrl, 'select key from pgboss.schedule where name = \'tick\' order by key')).map((row) => row.key)

  // pg-boss's schedule table out of reach: the refresh after this change fails.
  await query(followUrl, 'alter table pgboss.schedule rename to schedule_away')
  const { instance: b } = await live.createInstance({ name: 'b' })
  t.match(await eventually(() => warnings[0], 30_000), /The schedules of all instances could not follow a change of the instances: /, 'the failure is a process warning')
  await query(followUrl, 'alter table pgboss.schedule_away rename to schedule')
  t.same(await stored(), ['instance/1'], 'nothing was scheduled by the failed refresh')
  const { instance: c } = await live.createInstance({ name: 'c' })
  const all = ['instance/1', `instance/${b.id}`, `instance/${c.id}`].sort()
  t.same(await eventually(async () => { const now = await stored(); return now.length === 3 ? now : undefined }, 30_000), all, 'the next change brings every entry in step, the missed one too')

  await boss.stop({ graceful: false })
  const created = new Promise<void>((resolve) => { live.on('instanceCreated', () => { resolve() }) })
  const { instance: d } = await live.createInstance({ name: 'd' })
  await created
  // A refresh would start at once after the event; give a follower time to act before looking.
  await sleep(500)
  t.same(await stored(), all, `a stopped boss gets no entry for ${d.name}`)
  t.equal(warnings.length, 1, 'and no refresh was tried on it')
})
