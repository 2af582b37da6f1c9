import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { PoolManager, type Lease } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'

const urls = {
  default: await createDatabase(t, 'pm_default'),
  a: await createDatabase(t, 'pm_a'),
  b: await createDatabase(t, 'pm_b'),
  c: await createDatabase(t, 'pm_c'),
}
const dbName = (url: string): string => new URL(url).pathname.slice(1)

async function database (lease: Lease): Promise<string> {
  return (await lease.client.query<{ d: string }>('select current_database() as d')).rows[0]!.d
}

async function until (condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 400 && !condition(); i++) await sleep(25)
  if (!condition()) throw new Error(`gave up waiting until ${what}`)
}

t.test('pools open lazily, one per datasource, on the right database', async (t) => {
  const pools = new PoolManager(urls)
  t.teardown(() => pools.close())
  t.same(pools.counts(), { pools: 0, open: 0, idle: 0, waiting: 0, leased: 0 }, 'nothing open before first use')
  for (const name of ['a', 'b', 'a'] as const) {
    const lease = await pools.acquire(name)
    t.equal(await database(lease), dbName(urls[name]))
    t.equal(pools.counts().leased, 1)
    pools.release(lease)
  }
  t.same(pools.counts(), { pools: 2, open: 2, idle: 2, waiting: 0, leased: 0 })
  t.same(pools.status().map((s) => [s.datasource, s.state]).sort(), [['a', 'open'], ['b', 'open']])
})

t.test('connects counts the connections opened, not the checkouts', async (t) => {
  const pools = new PoolManager(urls)
  t.teardown(() => pools.close())
  t.equal(pools.connects, 0, 'none before first use')
  for (const name of ['a', 'a', 'b'] as const) pools.release(await pools.acquire(name))
  t.equal(pools.connects, 2, 'an idle connection handed out again is no connect')
  pools.release(await pools.acquire('a'), true)
  t.equal(pools.connects, 2, 'destroying one opens nothing')
  pools.release(await pools.acquire('a'))
  t.equal(pools.connects, 3, 'the next checkout opens a connection again')
  await pools.close()
  t.equal(pools.connects, 3, 'closing keeps the count')
})

t.test('maxPools: the least recently used idle pool is closed, never one with a client checked out', async (t) => {
  const pools = new PoolManager(urls, { maxPools: 2 })
  t.teardown(() => pools.close())
  const held = await pools.acquire('a')
  pools.release(await pools.acquire('b'))
  const c = await pools.acquire('c')
  t.equal(await database(c), dbName(urls.c))
  t.same(pools.status().map((s) => s.datasource).sort(), ['a', 'c'], 'b (idle) was closed, a (older, but in use) kept')
  t.equal(pools.evictions, 1)
  t.equal(await database(held), dbName(urls.a), 'the held client still works')
  pools.release(c)
  pools.release(held)
  pools.release(await pools.acquire('b'))
  t.same(pools.status().map((s) => s.datasource).sort(), ['a', 'b'], 'c was the least recently used')
  t.ok(pools.counts().pools <= 2)
})

t.test('when every pool is busy a new datasource waits for a slot, and fails with 503 after the timeout', async (t) => {
  // Only b's wait is short: connecting a and c may take long on a loaded machine.
  const pools = new PoolManager({ ...urls, b: { connectionString: urls.b, connectionTimeoutMillis: 150 } }, { maxPools: 1, pool: { connectionTimeoutMillis: 20000 } })
  t.teardown(() => pools.close())
  const held = await pools.acquire('a', 'alpha')
  const err = await pools.acquire('b', 'beta').catch((err: unknown) => err)
  t.match(err, { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503, message: /"beta"/ })
  t.match((err as Error).cause, { message: /All 1 connection pools \(maxPools\) had clients checked out for 150 ms/ })
  const waiting = pools.acquire('c')
  await until(() => pools.counts().waiting === 1, 'the caller waits')
  pools.release(held)
  const c = await waiting
  t.equal(await database(c), dbName(urls.c), 'the freed slot went to the waiter')
  t.same(pools.status().map((s) => s.datasource), ['c'])
  pools.release(c)
})

t.test('removing a datasource fails the callers waiting for a pool slot for it', async (t) => {
  const pools = new PoolManager(urls, { maxPools: 2, pool: { connectionTimeoutMillis: 20000 } })
  t.teardown(() => pools.close())
  const a = await pools.acquire('a')
  const c = await pools.acquire('c')
  const removed = pools.acquire('b', 'beta').catch((err: unknown) => err)
  const other = pools.acquire('default')
  await until(() => pools.counts().waiting === 2, 'b and default wait for a slot')
  pools.removeDatasource('b')
  t.match(await removed, { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503, message: /"b"/ })
  t.equal(pools.counts().waiting, 1, 'the other datasource still waits')
  pools.release(a)
  const got = await other
  t.equal(await database(got), dbName(urls.default), 'and gets the next slot')
  for (const lease of [got, c]) pools.release(lease)
})

t.test('per-datasource max and connection timeout: an exhausted pool fails with 503', async (t) => {
  // Long enough for the first connect on a loaded machine; the second acquire waits it out.
  const pools = new PoolManager({ ...urls, a: { connectionString: urls.a, max: 1, connectionTimeoutMillis: 1000 } }, { pool: { max: 3 } })
  t.teardown(() => pools.close())
  const first = await pools.acquire('a')
  await t.rejects(pools.acquire('a'), { code: 'TENANCY_DATASOURCE_UNAVAILABLE' }, 'a has max 1')
  const others = await Promise.all([pools.acquire('b'), pools.acquire('b'), pools.acquire('b')])
  t.equal(others.length, 3, 'b has the default max 3')
  for (const lease of others) pools.release(lease)
  pools.release(first)
  pools.release(await pools.acquire('a'))
  t.equal(pools.counts().leased, 0)
})

t.test('idle pools close after poolIdleTimeoutMillis', async (t) => {
  const pools = new PoolManager(urls, { poolIdleTimeoutMillis: 100 })
  t.teardown(() => pools.close())
  pools.release(await pools.acquire('a'))
  const held = await pools.acquire('b')
  await until(() => pools.counts().pools === 1, 'the idle pool closes')
  t.same(pools.status().map((s) => s.datasource), ['b'], 'the pool in use stays')
  pools.release(held)
  await until(() => pools.counts().pools === 0, 'the other one closes too')
  const again = await pools.acquire('a')
  t.equal(await database(again), dbName(urls.a), 'and reopens on demand')
  pools.release(again)
})

t.test('an idle client killed by the server does not crash the process; the pool recovers', async (t) => {
  const pools = new PoolManager(urls)
  t.teardown(() => pools.close())
  const lease = await pools.acquire('a')
  const pid = (lease.client as unknown as { processID: number }).processID
  pools.release(lease)
  await query(urls.default, 'select pg_terminate_backend($1)', [pid])
  await until(() => pools.counts().open === 0, 'pg-pool drops the dead client')
  const next = await pools.acquire('a')
  t.equal(await database(next), dbName(urls.a))
  pools.release(next)
})

t.test('close() ends every pool and refuses new work', async (t) => {
  const pools = new PoolManager(urls, { maxPools: 5 })
  const leases = await Promise.all((['a', 'b', 'c'] as const).map(async (name) => await pools.acquire(name)))
  for (const lease of leases) pools.release(lease)
  t.equal(pools.state, 'open')
  await pools.close()
  t.equal(pools.state, 'ended')
  t.same(pools.counts(), { pools: 0, open: 0, idle: 0, waiting: 0, leased: 0 })
  await t.rejects(pools.acquire('a'), { code: 'TENANCY_CLOSED', message: 'The tenancy has been closed: its connection pools cannot be used any more.' })
  await pools.close()
})

t.test('close() fails the callers waiting for a pool slot with TENANCY_CLOSED', async (t) => {
  const pools = new PoolManager(urls, { maxPools: 1, pool: { connectionTimeoutMillis: 10000 } })
  const held = await pools.acquire('a')
  const waiting = pools.acquire('b')
  await until(() => pools.counts().waiting === 1, 'the caller waits')
  const closing = pools.close()
  await t.rejects(waiting, { code: 'TENANCY_CLOSED', message: /this query was waiting for a connection pool/ })
  pools.release(held)
  await closing
})

async function pid (lease: Lease): Promise<number> {
  return (await lease.client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid
}
/** Whether the server ends backend `pid` within 5 s (far less than the pools' idle timeout). */
async function backendGone (pid: number): Promise<boolean> {
  const deadline = Date.now() + 5000
  do {
    if ((await query(urls.default, 'select 1 from pg_stat_activity where pid = $1', [pid])).length === 0) return true
    await sleep(25)
  } while (Date.now() < deadline)
  return false
}

t.test('release: a client is pooled again, unless destroy says its session is broken or a transaction is open on it', async (t) => {
  // Idle clients stay open far longer than backendGone waits, so a closed backend was closed by release.
  const pools = new PoolManager({ ...urls, a: { connectionString: urls.a, max: 1, idleTimeoutMillis: 60000 } })
  t.teardown(() => pools.close())
  await query(urls.a, 'create table if not exists note (body text)')
  let lease = await pools.acquire('a')
  const first = await pid(lease)
  pools.release(lease)
  lease = await pools.acquire('a')
  t.equal(await pid(lease), first, 'released: the same connection comes back')

  pools.release(lease, true)
  t.ok(await backendGone(first), 'released with destroy: the connection is closed')
  lease = await pools.acquire('a')
  const second = await pid(lease)
  t.not(second, first, 'and the next client is a new one')

  await lease.client.query('begin')
  await lease.client.query('insert into note values (\'left open\')')
  pools.release(lease)
  t.ok(await backendGone(second), 'released inside a transaction: closed, not pooled')
  lease = await pools.acquire('a')
  t.not(await pid(lease), second)
  t.equal(lease.client.getTransactionStatus(), 'I', 'the next client is idle, not in the transaction')
  t.same(await query(urls.a, 'select body from note'), [], 'and the transaction was rolled back')

  pools.release(lease)
  pools.release(lease)
  t.equal(pools.counts().leased, 0, 'a lease given back twice counts once')
  const again = await pools.acquire('a')
  t.equal(pools.counts().leased, 1)
  pools.release(again)
})

t.test('a checkout that an idle connection will serve arms no checkout timer; one that has to wait still times out', async (t) => {
  const pools = new PoolManager(urls, { pool: { max: 1, connectionTimeoutMillis: 300 } })
  t.teardown(() => pools.close())
  pools.release(await pools.acquire('a'))
  // pg-pool arms its checkout timer (unref'd, so not an active resource) synchronously, inside acquire().
  const armedBy = <T>(fn: () => T): { value: T, armed: number } => {
    const real = globalThis.setTimeout
    let armed = 0
    globalThis.setTimeout = ((callback: () => void, ms?: number) => {
      if (ms === 300) armed++
      return real(callback, ms)
    }) as typeof setTimeout
    try {
      return { value: fn(), armed }
    } finally {
      globalThis.setTimeout = real
    }
  }
  const served = armedBy(() => pools.acquire('a'))
  t.equal(served.armed, 0, 'no timer for a checkout an idle connection is promised to')
  const lease = await served.value
  const behind = armedBy(() => pools.acquire('a'))
  t.equal(behind.armed, 1, 'a checkout of the busy pool has its timer')
  const waiting = behind.value
  await t.rejects(waiting, { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 }, 'and fails after connectionTimeoutMillis')
  pools.release(lease)
})

t.test('a checkout still queued when its pool closes fails at once: removed in the same tick, removed while it waits, or the manager closed', async (t) => {
  // Long enough that a stranded checkout would outlive the test's own timeout.
  const pools = new PoolManager(urls, { pool: { max: 1, connectionTimeoutMillis: 600_000 } })
  pools.release(await pools.acquire('a'))
  const sameTick = pools.acquire('a')
  pools.removeDatasource('a')
  await t.rejects(sameTick, { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 }, 'promised an idle connection, then the datasource removed')

  pools.addDatasource('a', urls.a)
  const held = await pools.acquire('a')
  const behind = pools.acquire('a')
  await until(() => pools.counts().waiting === 1, 'the second checkout waits in the pool')
  pools.removeDatasource('a')
  await t.rejects(behind, { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 }, 'waiting for a busy pool, then the datasource removed')
  pools.release(held)

  const b = await pools.acquire('b')
  const queued = pools.acquire('b')
  await until(() => pools.counts().waiting === 1, 'a checkout of b waits')
  const closing = pools.close()
  await t.rejects(queued, { code: 'TENANCY_CLOSED' }, 'the manager closed')
  pools.release(b)
  await closing
})

t.test('evictions is read-only', async (t) => {
  const pools = new PoolManager(urls)
  t.teardown(() => pools.close())
  t.throws(() => { (pools as unknown as { evictions: number }).evictions = 5 }, TypeError)
  t.equal(pools.evictions, 0)
})

t.test('options are validated with a sentence', async (t) => {
  t.throws(() => new PoolManager(urls, { maxPools: 0 }), { code: 'TENANCY_INVALID_OPTIONS', message: /maxPools must be a positive integer/ })
  t.throws(() => new PoolManager(urls, { poolIdleTimeoutMillis: -1 }), { code: 'TENANCY_INVALID_OPTIONS' })
  t.throws(() => new PoolManager(urls, { pool: { max: 1.5 } }), { message: /pool: max must be a positive integer/ })
  t.throws(() => new PoolManager({ ...urls, a: { max: -1 } }), { message: /datasource "a": max must be a positive integer/ })
  t.throws(() => new PoolManager({ ...urls, a: { connectionTimeoutMillis: 'soon' as unknown as number } }), { message: /connectionTimeoutMillis must be a whole number/ })
  t.throws(() => new PoolManager({ a: urls.a }), { message: /must include "default"/ })
  t.throws(() => new PoolManager({ default: 42 as unknown as string }), { message: /connection string or a pg PoolConfig/ })
  await t.rejects(new PoolManager(urls).acquire('nope'), { code: 'TENANCY_INVALID_OPTIONS', message: /"nope" is not configured/ })
})

t.test('the options objects themselves, and datasources added or removed at run time, are checked', async (t) => {
  t.throws(() => new PoolManager(null as never), { code: 'TENANCY_INVALID_OPTIONS', message: /datasources must be an object/ })
  t.throws(() => new PoolManager(urls, null as never), { code: 'TENANCY_INVALID_OPTIONS', message: /the pool options must be an object/ })
  t.throws(() => new PoolManager(urls, { pool: null as never }), { code: 'TENANCY_INVALID_OPTIONS', message: /pool must be an object of pool settings/ })
  const pools = new PoolManager({ default: urls.default })
  pools.addDatasource('a', { connectionString: urls.a, max: 1 })
  t.throws(() => { pools.addDatasource('a', urls.a) }, { code: 'TENANCY_INVALID_OPTIONS', message: /datasource "a" is already configured/ })
  t.throws(() => { pools.addDatasource('b', 42 as never) }, { code: 'TENANCY_INVALID_OPTIONS', message: /datasource "b" must be a connection string or a pg PoolConfig/ })
  t.throws(() => { pools.addDatasource('c', { connectionString: urls.c, max: 0 }) }, { message: /datasource "c": max must be a positive integer/ })
  t.throws(() => { pools.removeDatasource('default') }, { code: 'TENANCY_INVALID_OPTIONS', message: /default datasource cannot be removed/ })
  const lease = await pools.acquire('a')
  t.equal(await database(lease), dbName(urls.a), 'a datasource added at run time is used with its own settings')
  pools.release(lease)
  pools.removeDatasource('a')
  pools.removeDatasource('never-configured')
  await t.rejects(pools.acquire('a'), { code: 'TENANCY_INVALID_OPTIONS', message: /"a" is not configured/ }, 'a removed datasource is gone')
  await pools.close()
  t.throws(() => { pools.addDatasource('d', urls.b) }, { code: 'TENANCY_CLOSED' }, 'nothing is added after close')
})
