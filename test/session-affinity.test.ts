// Affinity: a checkout is handed the connection whose session already is what
// it needs (schema, role, settings), so switching instances on one pool does
// not cost a round trip per checkout: an idle one, or one given back while it
// waits. pg-pool alone hands out the connection taken back last, to the
// checkout that waited longest, whatever it carries: each test fails then.
import t, { type Test } from 'tap'
import fc from 'fast-check'
import { sql, Kysely, PostgresDialect, type Generated } from 'kysely'
import { createTenancy, RoutingPool, SessionState, type SessionTarget, type Tenancy } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'

interface DB { note: { id: Generated<number>, iid: number, body: string } }

const url = await createDatabase(t, 'idle_preference')
await query(url, `
  create table public.note (id serial primary key, iid int not null, body text not null);
  insert into public.note (iid, body) values (1, 'shared 1'), (5, 'shared 5'), (6, 'shared 6');
  create schema tenant_a; create table tenant_a.note (id serial primary key, iid int not null, body text not null);
  create schema tenant_b; create table tenant_b.note (id serial primary key, iid int not null, body text not null);
  create schema tenant_c; create table tenant_c.note (id serial primary key, iid int not null, body text not null);
  insert into tenant_a.note (iid, body) values (2, 'a note'); insert into tenant_b.note (iid, body) values (3, 'b note');
  insert into tenant_c.note (iid, body) values (4, 'c note');
`)
const instances = [
  { name: '', id: 1 },
  { name: 'a', id: 2, schema: 'tenant_a' },
  { name: 'b', id: 3, schema: 'tenant_b' },
  { name: 'c', id: 4, schema: 'tenant_c' },
  { name: 'e', id: 5 },
  { name: 'f', id: 6 },
]
// No tenant tables here (only the routing is under test): a shared instance reads all of public.note.
const BODIES: Record<string, string[]> = { '': ['shared 1', 'shared 5', 'shared 6'], a: ['a note'], b: ['b note'], c: ['c note'] }

interface Routed { tenancy: Tenancy, routing: RoutingPool, db: Kysely<DB> }

async function routed (t: Test, max: number, extra: { maxConnections?: number, settings?: boolean } = {}): Promise<Routed> {
  // Idle connections outlive the test, so none is replaced by a fresh one between checkouts.
  const tenancy = await createTenancy({ instances, datasources: { default: url }, tables: {}, pool: { max, idleTimeoutMillis: 60000 }, maxConnections: extra.maxConnections, doctor: false })
  t.teardown(() => tenancy.close())
  // A routing pool of its own over the tenancy's pools, for its counters.
  const routing = new RoutingPool(tenancy.pools, extra.settings === true ? { settings: (context) => ({ 'tenancy.iid': String(context?.instance?.id ?? '') }) } : {})
  return { tenancy, routing, db: new Kysely<DB>({ dialect: new PostgresDialect({ pool: routing }) }) }
}

/** Holds one connection for each name at once, so that the pool has one connection per name, each set up for it. */
async function holdAtOnce ({ tenancy, db }: Routed, names: string[]): Promise<Map<string, number>> {
  const pids = new Map<string, number>()
  let arrived = 0
  let go!: () => void
  const all = new Promise<void>((resolve) => { go = resolve })
  await Promise.all(names.map(async (name) => await tenancy.runAsInstance(name, async () => {
    await db.connection().execute(async (connection) => {
      const { rows } = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(connection)
      pids.set(name, rows[0]!.pid)
      if (++arrived === names.length) go()
      await all
    })
  })))
  return pids
}

/** One checkout as `name`: what it read, and on which backend. */
async function readAs ({ tenancy, db }: Routed, name: string): Promise<{ pid: number, schema: string, bodies: string[] }> {
  return await tenancy.runAsInstance(name, async () => await db.connection().execute(async (connection) => {
    const { rows } = await sql<{ pid: number, schema: string }>`select pg_backend_pid() as pid, current_schema() as schema`.execute(connection)
    const notes = await connection.selectFrom('note').select('body').orderBy('id').execute()
    return { pid: rows[0]!.pid, schema: rows[0]!.schema, bodies: notes.map((note) => note.body) }
  }))
}

// Every order of three names: whichever connection pg-pool took back last, the checkout skips it when another is the instance's.
const ORDER = ['a', 'b', 'c', 'a', 'c', 'b', 'b', 'a', 'c', 'c', 'a', 'b', 'a']

t.test('schema instances on one pool: each checkout gets the connection that carries its schema, and no SET search_path is sent', async (t) => {
  const r = await routed(t, 3)
  const pids = await holdAtOnce(r, ['a', 'b', 'c'])
  t.equal(new Set(pids.values()).size, 3, 'three connections, one per schema')
  const before = r.routing.stats
  for (const name of ORDER) {
    const read = await readAs(r, name)
    t.equal(read.pid, pids.get(name), `${name}: the connection that carries tenant_${name}`)
    t.equal(read.schema, `tenant_${name}`, `${name}: its schema`)
    t.same(read.bodies, BODIES[name], `${name}: its schema's rows only`)
  }
  const after = r.routing.stats
  t.equal(after.checkouts - before.checkouts, ORDER.length, 'one checkout per read')
  t.equal(after.sessionChanges - before.sessionChanges, 0, 'no checkout needed a round trip to switch schema')
})

t.test('a shared instance prefers a connection at the server\'s defaults; a schema nobody carries still switches one connection', async (t) => {
  const r = await routed(t, 2)
  const pids = await holdAtOnce(r, ['', 'a'])
  const before = r.routing.stats
  for (const name of ['', 'a', '', '', 'a', 'a', '']) {
    const read = await readAs(r, name)
    t.equal(read.pid, pids.get(name), `${JSON.stringify(name)}: the connection that carries its session`)
    t.same(read.bodies, BODIES[name], `${JSON.stringify(name)}: the rows of its schema`)
  }
  t.equal(r.routing.stats.sessionChanges - before.sessionChanges, 0, 'no switch')
  const b = await readAs(r, 'b')
  t.equal(b.schema, 'tenant_b', 'b: no idle connection carries tenant_b, so one is switched')
  t.same(b.bodies, ['b note'], 'b: its own rows')
  t.equal(r.routing.stats.sessionChanges - before.sessionChanges, 1, 'one switch, for b')
  const again = await readAs(r, 'b')
  t.equal(again.pid, b.pid, 'b again: the connection now carrying tenant_b')
  t.equal(r.routing.stats.sessionChanges - before.sessionChanges, 1, 'and no second switch')
})

t.test('session settings (what rls sets): each instance gets the connection whose setting is already its own', async (t) => {
  const r = await routed(t, 3, { settings: true })
  const pids = await holdAtOnce(r, ['', 'e', 'f'])
  const before = r.routing.stats
  for (const name of ['e', 'f', '', 'f', 'e', 'e', '', 'f']) {
    const seen = await r.tenancy.runAsInstance(name, async () => await r.db.connection().execute(async (connection) => {
      const { rows } = await sql<{ pid: number, iid: string }>`select pg_backend_pid() as pid, current_setting('tenancy.iid') as iid`.execute(connection)
      return rows[0]!
    }))
    t.equal(seen.pid, pids.get(name), `${JSON.stringify(name)}: the connection that carries its setting`)
    t.equal(seen.iid, String(instances.find((instance) => instance.name === name)!.id), `${JSON.stringify(name)}: its own tenancy.iid`)
  }
  t.equal(r.routing.stats.sessionChanges - before.sessionChanges, 0, 'no set_config round trip')
})

t.test('with a connection budget (maxConnections) the preference holds too', async (t) => {
  const r = await routed(t, 3, { maxConnections: 3 })
  const pids = await holdAtOnce(r, ['a', 'b', 'c'])
  const before = r.routing.stats
  for (const name of ORDER) {
    const read = await readAs(r, name)
    t.equal(read.pid, pids.get(name), `${name}: the connection that carries tenant_${name}`)
    t.same(read.bodies, BODIES[name], `${name}: its schema's rows only`)
  }
  t.equal(r.routing.stats.sessionChanges - before.sessionChanges, 0, 'no switch')
  t.equal(r.tenancy.pools.counts().open, 3, 'three connections, as the budget allows')
})

t.test('PoolManager.acquire() prefers a connection at the server\'s defaults, so it needs no reset', async (t) => {
  const r = await routed(t, 2)
  const pids = await holdAtOnce(r, ['', 'a'])
  // pg-pool alone would hand out the one taken back last: make that a's.
  await readAs(r, 'a')
  const lease = await r.tenancy.pools.acquire('default')
  try {
    const { rows } = await lease.client.query<{ pid: number }>('select pg_backend_pid() as pid')
    t.equal(rows[0]!.pid, pids.get(''), 'the connection that was at the defaults')
  } finally {
    r.tenancy.pools.release(lease)
  }
  const a = await readAs(r, 'a')
  t.equal(a.pid, pids.get('a'), 'a\'s connection still carries tenant_a, unreset')
  t.same(a.bodies, ['a note'])
})

/** Checks out a connection as `name` and keeps it until `release()`. */
async function hold ({ tenancy, db }: Routed, name: string): Promise<{ pid: number, release: () => Promise<void> }> {
  let release!: () => void
  const released = new Promise<void>((resolve) => { release = resolve })
  let pid!: (value: number) => void
  const gotPid = new Promise<number>((resolve) => { pid = resolve })
  const done = tenancy.runAsInstance(name, async () => {
    await db.connection().execute(async (connection) => {
      pid((await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(connection)).rows[0]!.pid)
      await released
    })
  })
  return { pid: await gotPid, release: async () => { release(); await done } }
}

/** Until `ready()`: the checkouts queue inside pg-pool in the order they were started, and this waits for that without a timer. */
async function until (ready: () => boolean): Promise<void> {
  while (!ready()) await new Promise((resolve) => setImmediate(resolve))
}

// Under a budget the checkouts wait in the budget's queue, not in pg-pool's: the same order is asked of both.
for (const [where, extra] of [['pg-pool\'s queue', {}], ['the budget\'s queue (maxConnections)', { maxConnections: 2 }]] as const) {
t.test(`a connection given back goes to a waiting checkout that wants its session, past one that does not, at most 8 times: ${where}`, async (t) => {
  const r = await routed(t, 2, extra)
  const a = await hold(r, 'a')
  const b = await hold(r, 'b')
  const waitingInPool = (): number => r.tenancy.pools.counts().waiting
  const served: string[] = []
  const seen: Array<{ name: string, pid: number, schema: string }> = []
  const checkout = async (name: string): Promise<void> => {
    const read = await readAs(r, name)
    served.push(name)
    seen.push({ name, pid: read.pid, schema: read.schema })
  }
  // b waits first, then twelve checkouts of a behind it; b's connection stays held throughout.
  const waiters = [checkout('b')]
  await until(() => waitingInPool() === 1)
  for (let i = 0; i < 12; i++) {
    waiters.push(checkout('a'))
    await until(() => waitingInPool() === i + 2)
  }
  const before = r.routing.stats
  await a.release()
  await Promise.all(waiters)
  t.same(served, ['a', 'a', 'a', 'a', 'a', 'a', 'a', 'a', 'b', 'a', 'a', 'a', 'a'], 'eight checkouts of a pass b, which then gets the connection; the rest of a follow')
  t.ok(seen.every((read) => read.pid === a.pid), 'all on the connection a gave back (b\'s is held)')
  t.ok(seen.every((read) => read.schema === `tenant_${read.name}`), 'each in its own schema')
  t.equal(r.routing.stats.sessionChanges - before.sessionChanges, 2, 'two switches: to tenant_b for b, and back for the a after it')
  await b.release()
})

t.test(`without a waiter that wants its session, a connection given back goes to the one that waited longest: ${where}`, async (t) => {
  const r = await routed(t, 2, extra)
  const a = await hold(r, 'a')
  const b = await hold(r, 'b')
  const served: string[] = []
  const waiters: Array<Promise<void>> = []
  for (const [i, name] of ['c', 'b', 'c'].entries()) {
    waiters.push(readAs(r, name).then((read) => { served.push(`${name} in ${read.schema}`) }))
    await until(() => r.tenancy.pools.counts().waiting === i + 1)
  }
  await a.release()
  await Promise.all(waiters)
  t.same(served, ['c in tenant_c', 'c in tenant_c', 'b in tenant_b'], 'c waited longest and gets the connection a gave back; the next c keeps it, before b')
  await b.release()
})
}

t.test('holds(target) is true exactly when changesTo(target) has nothing to send, whatever the session went through', async (t) => {
  const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31)
  t.comment(`fast-check seed ${seed} (FC_SEED=${seed} replays this run)`)
  const name = fc.constantFrom(null, 'tenant_a', 'tenant_b')
  const settings = fc.dictionary(fc.constantFrom('tenancy.iid', 'app.user'), fc.constantFrom('', '1', '2'), { maxKeys: 2 })
  const target: fc.Arbitrary<SessionTarget> = fc.record({ schema: name, role: name, settings })
  let runs = 0
  try {
    fc.assert(fc.property(fc.array(target, { maxLength: 6 }), target, (history, wanted) => {
      runs++
      const state = new SessionState()
      for (const applied of history) state.applied(applied)
      return state.holds(wanted) === (state.changesTo(wanted) === '')
    }), { seed, numRuns: 2000 })
  } catch (err) {
    t.comment(`failed with fast-check seed ${seed} (rerun with FC_SEED=${seed})`)
    throw err
  }
  t.equal(runs, 2000, `2,000 random histories (seed ${seed})`)
})
