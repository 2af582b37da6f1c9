// The connection budget (maxConnections) over several databases: the server
// never sees more of our connections than the budget, an idle connection of
// the least recently used datasource makes room for another (a second one of
// a datasource before a last one), a datasource with connections waits for
// its own before closing another's (growAfterMillis), a saturated
// datasource cannot starve a quiet one, and waiters fail with 503 (never hang)
// when nothing frees up. Connections are counted by the server itself
// (pg_stat_activity, by application_name), not by the code under test.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { sql } from 'kysely'
import { createTenancy, PoolManager, type Lease, type PoolCounts, type Tenancy } from '../lib/index.js'
import { createDatabase, query, serverUrl } from './helpers/database.js'

const names = ['default', 'a', 'b', 'c', 'd', 'e'] as const
const urls: Record<string, string> = {}
for (const name of names) urls[name] = await createDatabase(t, `budget_${name}`)

/** Datasources tagged with an application_name of their own, so the server can count this manager's connections. */
function tagged (): { app: string, datasources: Record<string, { connectionString: string, application_name: string }> } {
  const app = `budget_${randomBytes(4).toString('hex')}`
  return { app, datasources: Object.fromEntries(names.map((name) => [name, { connectionString: urls[name]!, application_name: app }])) }
}

// A connection the pool has closed keeps its row in pg_stat_activity until its
// server process has exited, a moment later: a count above `atMost` is read
// again for up to 2 s. A connection really open stays counted and fails the test.
async function serverCount (app: string, atMost: number): Promise<number> {
  for (let tries = 0; ; tries++) {
    const rows = await query<{ n: number }>(serverUrl(), 'select count(*)::int as n from pg_stat_activity where application_name = $1', [app])
    if (rows[0]!.n <= atMost || tries >= 100) return rows[0]!.n
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function run (pools: PoolManager, datasource: string, text: string, values: unknown[] = []): Promise<any[]> {
  const lease = await pools.acquire(datasource)
  try {
    return (await lease.client.query(text, values)).rows
  } finally {
    pools.release(lease)
  }
}

t.test('maxConnections is validated at start-up', async (t) => {
  for (const bad of [0, -1, 1.5, '4', null]) {
    t.throws(() => new PoolManager(urls, { maxConnections: bad as number }), { code: 'TENANCY_INVALID_OPTIONS', message: /maxConnections must be a positive integer/ }, JSON.stringify(bad))
  }
})

t.test('the server never sees more connections than the budget, under load over six databases', async (t) => {
  const { app, datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 4, pool: { max: 3 } })
  t.teardown(() => pools.close())
  let most = 0
  let done = 0
  const wrong: string[] = []
  // Each statement counts this manager's connections on the server while it runs.
  const statement = 'select (select count(*)::int from pg_stat_activity where application_name = $1) as n, current_database() as db, pg_sleep(0.005)'
  await Promise.all(Array.from({ length: 90 }, async (_, i) => {
    const datasource = names[i % names.length]!
    const [row] = await run(pools, datasource, statement, [app])
    if (row.db !== new URL(urls[datasource]!).pathname.slice(1)) wrong.push(`${datasource} ran on ${row.db}`)
    most = Math.max(most, row.n)
    done++
  }))
  t.equal(done, 90, 'every statement ran')
  t.same(wrong, [], 'each on its own database')
  t.ok(most <= 4, `at most 4 connections seen by the server at once (seen ${most})`)
  t.ok(most >= 2, `and more than one was used (seen ${most})`)
  const counts = pools.counts()
  t.ok(counts.budget!.evictions > 0, `idle connections were closed to make room (${counts.budget!.evictions})`)
  t.ok(counts.open <= 4 && counts.budget!.waiting === 0, 'nothing is left waiting')
  t.ok(await serverCount(app, 4) <= 4)
})

t.test('an idle connection of the least recently used datasource makes room', async (t) => {
  const { app, datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 2, pool: { max: 2 } })
  t.teardown(() => pools.close())
  const held: Lease[] = [await pools.acquire('a'), await pools.acquire('b')]
  for (const lease of held) pools.release(lease)
  await run(pools, 'a', 'select 1') // a is now the more recently used
  t.equal(await serverCount(app, 2), 2, 'a and b hold one idle connection each')
  const [row] = await run(pools, 'c', 'select current_database() as db')
  t.equal(row.db, new URL(urls.c!).pathname.slice(1), 'c got a connection')
  const open = Object.fromEntries(pools.status().map((s) => [s.datasource, s.open]))
  t.same({ a: open.a, b: open.b ?? 0, c: open.c }, { a: 1, b: 0, c: 1 }, 'b, used least recently, gave up its connection; a kept its own')
  t.equal(await serverCount(app, 2), 2, 'the server sees two connections still')
  t.equal(pools.counts().budget!.evictions, 1)
})

t.test('a datasource\'s second idle connection is closed before another datasource\'s last one, however recently used', async (t) => {
  const { app, datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 3, pool: { max: 2 } })
  t.teardown(() => pools.close())
  const onB = await pools.acquire('b')
  const bPid = (await onB.client.query('select pg_backend_pid() as pid')).rows[0].pid
  pools.release(onB)
  // a is used after b, with two connections at once.
  const onA = [await pools.acquire('a'), await pools.acquire('a')]
  for (const lease of onA) pools.release(lease)
  t.equal(await serverCount(app, 3), 3, 'a holds two idle connections, b one')
  const [row] = await run(pools, 'c', 'select current_database() as db')
  t.equal(row.db, new URL(urls.c!).pathname.slice(1), 'c got a connection')
  const open = Object.fromEntries(pools.status().map((s) => [s.datasource, s.open]))
  t.same({ a: open.a, b: open.b, c: open.c }, { a: 1, b: 1, c: 1 }, 'a gave up its second connection; b, used less recently, kept its only one')
  const [again] = await run(pools, 'b', 'select pg_backend_pid() as pid')
  t.equal(again.pid, bPid, 'b\'s next checkout needs no connect')
  t.equal(pools.counts().budget!.evictions, 1)
})

t.test('while a datasource waits for room, one behind it reuses its own idle connection instead of losing it', async (t) => {
  const { app, datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 2, pool: { max: 1 } })
  t.teardown(() => pools.close())
  const onA = await pools.acquire('a')
  const onB = await pools.acquire('b')
  const pid = (lease: Lease): number => (lease.client as unknown as { processID: number }).processID
  const firstPid = pid(onA)
  // c asks first and must wait for the budget; a's next checkout queues behind it.
  const forC = pools.acquire('c')
  const forA = pools.acquire('a')
  pools.release(onA)
  const again = await forA
  t.equal(pid(again), firstPid, 'a\'s waiter got a\'s own connection back, not a new one')
  t.equal(pools.counts().budget!.evictions, 0, 'nothing was closed to make room')
  t.equal(pools.counts().budget!.waiting, 1, 'c still waits')
  pools.release(onB)
  const onC = await forC
  t.equal(pools.counts().budget!.evictions, 1, 'b\'s idle connection was closed for c')
  t.equal(await serverCount(app, 2), 2, 'the server never saw more than the budget')
  pools.release(again)
  pools.release(onC)
})

t.test('growAfterMillis is validated at start-up; counts() gives it, or the measured connect time', async (t) => {
  for (const bad of [-1, 1.5, '5', null]) {
    t.throws(() => new PoolManager(urls, { maxConnections: 2, growAfterMillis: bad as number }), { code: 'TENANCY_INVALID_OPTIONS', message: /growAfterMillis must be a whole number of milliseconds/ }, JSON.stringify(bad))
  }
  const given = new PoolManager(urls, { maxConnections: 2, growAfterMillis: 250 })
  t.teardown(() => given.close())
  t.equal(given.counts().budget!.growAfterMillis, 250)
  const measured = new PoolManager(urls, { maxConnections: 2 })
  t.teardown(() => measured.close())
  t.equal(measured.counts().budget!.growAfterMillis, 0, 'nothing measured yet: no waiting for one\'s own')
  await run(measured, 'a', 'select 1')
  await new Promise(setImmediate)
  t.ok(measured.counts().budget!.growAfterMillis > 0, `after one connect: ${measured.counts().budget!.growAfterMillis} ms`)
})

t.test('with every connection open, a datasource that has connections waits for its own instead of closing another\'s idle one', async (t) => {
  const { app, datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 2, growAfterMillis: 60_000, pool: { max: 2, connectionTimeoutMillis: 5000 } })
  t.teardown(() => pools.close())
  const pid = (lease: Lease): number => (lease.client as unknown as { processID: number }).processID
  const onA = await pools.acquire('a')
  const onB = await pools.acquire('b')
  const bPid = pid(onB)
  pools.release(onB)
  const secondOnA = pools.acquire('a')
  await new Promise(setImmediate)
  t.equal(pools.counts().budget!.waiting, 1, 'a\'s second checkout waits')
  t.equal(pools.counts().budget!.evictions, 0, 'b\'s idle connection was not closed for it')
  // A datasource with no connection of its own does not wait: b's idle one is closed for c.
  const [row] = await run(pools, 'c', 'select current_database() as db')
  t.equal(row.db, new URL(urls.c!).pathname.slice(1), 'c got a connection at once')
  t.equal(pools.counts().budget!.evictions, 1, 'by closing b\'s idle connection')
  const aPid = pid(onA)
  pools.release(onA)
  const again = await secondOnA
  t.equal(pid(again), aPid, 'a\'s waiter got a\'s own connection back')
  t.equal(pools.counts().budget!.evictions, 1, 'and nothing more was closed')
  t.ok(await serverCount(app, 2) <= 2, 'the server never saw more than the budget')
  pools.release(again)
  const [onB2] = await run(pools, 'b', 'select pg_backend_pid() as pid')
  t.not(onB2.pid, bPid, 'b reconnects: its old connection is gone')
})

t.test('a datasource that waits for its own connections takes room that nobody else wants', async (t) => {
  const { app, datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 2, growAfterMillis: 60_000, pool: { max: 2, connectionTimeoutMillis: 5000 } })
  t.teardown(() => pools.close())
  const onA = await pools.acquire('a')
  const onB = await pools.acquire('b')
  const second = pools.acquire('a')
  await new Promise(setImmediate)
  t.equal(pools.counts().budget!.waiting, 1, 'a\'s second checkout waits: nothing is idle, nothing is free')
  // b's connection closes: room, and no datasource without connections wants it.
  pools.release(onB, true)
  const lease = await second
  t.equal((await lease.client.query('select current_database() as db')).rows[0].db, new URL(urls.a!).pathname.slice(1), 'a got a second connection while its first was held')
  t.equal(pools.counts().budget!.evictions, 0, 'nothing was closed for it')
  t.ok(await serverCount(app, 2) <= 2, 'the server never saw more than the budget')
  pools.release(lease)
  pools.release(onA)
})

t.test('growAfterMillis 0 closes another datasource\'s idle connection at once; a waiter past growAfterMillis gets one too', async (t) => {
  for (const growAfterMillis of [0, 30]) {
    const { app, datasources } = tagged()
    const pools = new PoolManager(datasources, { maxConnections: 2, growAfterMillis, pool: { max: 2, connectionTimeoutMillis: 30_000 } })
    const onA = await pools.acquire('a')
    pools.release(await pools.acquire('b'))
    // a's first connection stays checked out: only growing serves the second.
    const second = await pools.acquire('a')
    t.equal((await second.client.query('select current_database() as db')).rows[0].db, new URL(urls.a!).pathname.slice(1), `growAfterMillis ${growAfterMillis}: a's second checkout was served while its first was held`)
    t.equal(pools.counts().budget!.evictions, 1, 'by closing b\'s idle connection')
    t.equal(await serverCount(app, 2), 2, 'the server sees two connections, both a\'s')
    pools.release(second)
    pools.release(onA)
    await pools.close()
  }
})

t.test('a saturated datasource does not starve a quiet one: the waiters are served one datasource after the other', async (t) => {
  const { datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 3, pool: { max: 3 } })
  t.teardown(() => pools.close())
  // b's pool counts its connection the moment the budget gives b its turn,
  // before the connection is made, and keeps it until b's query is done (a
  // may then close it to get room back): checkouts that a asked for after b
  // did and got before b's turn went ahead of b, however long connecting takes.
  const bOpen = (): number => pools.status().find((pool) => pool.datasource === 'b')?.open ?? 0
  let bAsked = false
  let bServed = false
  let aheadOfB = 0
  let finishedOnA = 0
  let stop = false
  // Twelve workers keep every connection of the budget busy on a, each with queries queued behind.
  const workers = Array.from({ length: 12 }, async () => {
    while (!stop) {
      const askedAfterB = bAsked
      const lease = await pools.acquire('a')
      if (bOpen() > 0) bServed = true
      if (askedAfterB && !bServed) aheadOfB++
      try { await lease.client.query('select pg_sleep(0.01)') } finally { pools.release(lease) }
      finishedOnA++
    }
  })
  while (finishedOnA < 12) await run(pools, 'default', 'select 1').catch(() => {})
  bAsked = true
  const [row] = await run(pools, 'b', 'select current_database() as db')
  bServed = true
  stop = true
  await Promise.all(workers)
  t.equal(row.db, new URL(urls.b!).pathname.slice(1), 'b was served while a stayed saturated')
  // At most 1 while a was still ahead of b in the round, and the 8 reuses of a's own idle
  // connections that the budget allows before closing one for b. Starvation would be b never
  // getting in, or a's checkouts granted without end.
  t.ok(aheadOfB <= 1 + 8, `b went behind ${aheadOfB} of the checkouts a asked for after it (at most 9)`)
})

t.test('a waiter that gets no room fails with 503 after connectionTimeoutMillis; a removed datasource and close fail theirs', async (t) => {
  const { datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 1, pool: { max: 2, connectionTimeoutMillis: 300 } })
  t.teardown(() => pools.close())
  const held = await pools.acquire('a')
  await t.rejects(pools.acquire('b', 'acme'), { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503, message: /acme/ }, 'the one connection is checked out: b times out')
  t.equal(pools.counts().budget!.waiting, 0, 'the timed-out waiter left the queue')
  const waiting = pools.acquire('c')
  const removed = t.rejects(waiting, { code: 'TENANCY_DATASOURCE_UNAVAILABLE' }, 'the waiter of a removed datasource fails')
  pools.removeDatasource('c')
  await removed
  pools.release(held)
})

t.test('close() fails the checkouts waiting for room', async (t) => {
  const { datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 1, pool: { max: 2, connectionTimeoutMillis: 10_000 } })
  const held = await pools.acquire('a')
  const waiting = pools.acquire('d')
  const closing = pools.close()
  await t.rejects(waiting, { code: 'TENANCY_CLOSED' })
  pools.release(held)
  await closing
  t.equal(pools.state, 'ended')
})

t.test('removing a datasource nobody waits for leaves the waiters of the others in place', async (t) => {
  const { datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 1, pool: { max: 1, connectionTimeoutMillis: 10_000 } })
  t.teardown(() => pools.close())
  const held = await pools.acquire('a')
  const waiting = pools.acquire('b')
  pools.removeDatasource('c')
  t.equal(pools.counts().budget!.waiting, 1, 'b still waits')
  pools.release(held)
  const lease = await waiting
  t.equal((await lease.client.query('select current_database() as db')).rows[0].db, new URL(urls.b!).pathname.slice(1), 'and is served once a gives its connection back')
  pools.release(lease)
})

t.test('connections still checked out of a removed datasource count against the budget until they are given back', async (t) => {
  const { app, datasources } = tagged()
  const pools = new PoolManager(datasources, { maxConnections: 2, pool: { max: 2, connectionTimeoutMillis: 10_000 } })
  t.teardown(() => pools.close())
  const held = [await pools.acquire('a'), await pools.acquire('a')]
  pools.removeDatasource('a')
  const waiting = pools.acquire('b')
  await new Promise(setImmediate)
  t.equal(pools.counts().budget!.waiting, 1, 'b waits: both connections of the budget are still a\'s')
  t.equal(await serverCount(app, 2), 2, 'the server sees a\'s two connections and no third')
  pools.release(held[0]!)
  const lease = await waiting
  t.equal((await lease.client.query('select current_database() as db')).rows[0].db, new URL(urls.b!).pathname.slice(1), 'b is served once one of them is given back')
  t.ok(await serverCount(app, 2) <= 2, 'still at most 2 on the server')
  pools.release(lease)
  pools.release(held[1]!)
})

t.test('maxPools defaults to no limit with maxConnections: more isolated datasources than the default 10 are checked out at once; idle pools still close', async (t) => {
  // Twelve datasources over the six databases: each datasource has a pool of its own.
  const isolated = Array.from({ length: 12 }, (_, i) => ({ name: `iso${i}`, id: 100 + i, isolate: true as const, isolateClient: `ds${i}` }))
  const datasources = { default: urls.default!, ...Object.fromEntries(isolated.map((instance, i) => [instance.isolateClient, urls[names[i % names.length]!]!])) }
  const databases = isolated.map((_, i) => new URL(urls[names[i % names.length]!]!).pathname.slice(1))
  /** Every instance opens a transaction at once; they all stay open until `together` are inside theirs, whose counters are taken then. */
  const holdAll = async (tenancy: Tenancy, together: number): Promise<{ settled: unknown[], held: PoolCounts | undefined }> => {
    const db = tenancy.kysely<any>()
    let letGo!: () => void
    const allInside = new Promise<void>((resolve) => { letGo = resolve })
    let inside = 0
    let held: PoolCounts | undefined
    const settled = await Promise.allSettled(isolated.map(async (instance) => {
      try {
        return await tenancy.runAsInstance(instance.name, () => db.transaction().execute(async (trx) => {
          const { rows } = await sql<{ db: string }>`select current_database() as db`.execute(trx)
          if (++inside === together) { held = tenancy.pools.counts(); letGo() }
          await allInside
          return rows[0]!.db
        }))
      } finally {
        // One that fails lets the others end too.
        letGo()
      }
    }))
    return { settled: settled.map((result) => result.status === 'fulfilled' ? result.value : (result.reason as { code?: string }).code), held }
  }

  const budgeted = await createTenancy({ instances: isolated, datasources, tables: {}, maxConnections: 12, poolIdleTimeoutMillis: 200, pool: { max: 1 }, doctor: false })
  t.teardown(() => budgeted.close())
  const { settled, held } = await holdAll(budgeted, 12)
  t.same(settled, databases, 'all twelve checkouts succeed, each on its own datasource\'s database')
  t.match(held, { pools: 12, leased: 12, waiting: 0 }, 'twelve pools were open and checked out at once')
  t.equal(budgeted.pools.evictions, 0, 'no pool was closed to make room')
  const deadline = Date.now() + 10_000
  while (budgeted.pools.counts().pools > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(budgeted.pools.counts().pools, 0, 'pools unused for poolIdleTimeoutMillis still close')

  // The same without maxConnections: the default of 10 pools.
  const unbudgeted = await createTenancy({ instances: isolated, datasources, tables: {}, pool: { max: 1 }, doctor: false })
  t.teardown(() => unbudgeted.close())
  const without = await holdAll(unbudgeted, 10)
  t.match(without.held, { pools: 10, leased: 10, waiting: 2 }, 'without maxConnections, ten pools are open and two datasources wait for a slot')
  t.same(without.settled, databases, 'they get one when the others are done')
  t.equal(unbudgeted.pools.evictions, 2, 'by closing two pools')
})
