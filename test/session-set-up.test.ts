// A checkout's session statements (search_path, SET ROLE, settings) go out in
// the round trip of its first statement when that is one data statement. The
// risks of sending both before either is answered: a statement that runs
// after its set-up failed (with the previous instance's session), and a
// record of the session that says the set-up holds after the server rolled it
// back with a failed statement. Every test below uses one connection (pool
// max 1) that the previous instance left with its own session, and proves
// with rows read directly what the server really did.
import t from 'tap'
import fc from 'fast-check'
import { randomBytes } from 'node:crypto'
import { Kysely, PostgresDialect, sql, type Generated } from 'kysely'
import { createTenancy, RoutingPool } from '../lib/index.js'
import { WholeCursor } from './helpers/whole-cursor.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'

interface DB { note: { id: Generated<number>, body: string, tag: string | null } }

const url = await createDatabase(t, 'session_set_up')
const suffix = randomBytes(3).toString('hex')
const roleB = `sb_${suffix}`
await adminQuery(`create role ${roleB}`)
t.teardown(async () => { await adminQuery(`drop role if exists ${roleB}`).catch(() => {}) })
const schemas = ['tenant_a', 'tenant_b', 'tenant_c']
await query(url, `
  create table public.note (id serial primary key, body text not null unique, tag text);
  ${schemas.map((s) => `create schema ${s}; create table ${s}.note (id serial primary key, body text not null unique, tag text);`).join('\n')}
  alter table tenant_b.note add column only_b int;
  grant usage on schema tenant_b to ${roleB}; grant select, insert on tenant_b.note to ${roleB}; grant usage on all sequences in schema tenant_b to ${roleB};
`)

const instances = [
  { name: '', id: 1 },
  { name: 'a', id: 2, schema: 'tenant_a' },
  { name: 'b', id: 3, schema: 'tenant_b', role: roleB },
  { name: 'c', id: 4, schema: 'tenant_c' },
  // Its SET ROLE fails: the role does not exist.
  { name: 'ghost', id: 5, schema: 'tenant_c', role: `nobody_${suffix}` },
]
type Name = '' | 'a' | 'b' | 'c' | 'ghost'
const tableOf: Record<Exclude<Name, 'ghost'>, string> = { '': 'public.note', a: 'tenant_a.note', b: 'tenant_b.note', c: 'tenant_c.note' }

const ten = await createTenancy({ instances, datasources: { default: url }, pool: { max: 1, idleTimeoutMillis: 60000 } })
t.teardown(() => ten.close())
const db = ten.kysely<DB>()
const prepared = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(ten.pools, { context: () => ten.context(), preparedStatements: true }) }) })
const streaming = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(ten.pools, { context: () => ten.context() }), cursor: WholeCursor }) })

// The server's ready-for-query ends each round trip: counted on the one
// connection the tenancy's pool holds, whichever routing pool checks it out.
let readies = 0
let pid = 0
async function watch (): Promise<void> {
  const lease = await ten.pools.acquire('default')
  const connection = (lease.client as unknown as { connection: { on (event: string, fn: () => void): void } }).connection
  connection.on('readyForQuery', () => { readies++ })
  pid = (await lease.client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid
  ten.pools.release(lease)
}
await watch()

async function roundTrips (fn: () => Promise<unknown>): Promise<number> {
  const before = readies
  await fn()
  return readies - before
}

async function bodies (name: Exclude<Name, 'ghost'>): Promise<string[]> {
  return (await query<{ body: string }>(url, `select body from ${tableOf[name]} order by id`)).map((row) => row.body)
}
async function all (): Promise<Record<string, string[]>> {
  return { '': await bodies(''), a: await bodies('a'), b: await bodies('b'), c: await bodies('c') }
}
async function currentPid (): Promise<number> {
  return (await ten.runAsHost(async () => await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db))).rows[0]!.pid
}
/** The connection's session as the server has it, read as `as` (whose checkout may change it first). */
async function sessionAs (as: Name): Promise<{ path: string, user: string }> {
  return await ten.runAsInstance(as, async () => (await sql<{ path: string, user: string }>`select current_setting('search_path') as path, current_user as user`.execute(db)).rows[0]!)
}

t.test('the set-up goes in the round trip of a single data statement, with and without parameters', async (t) => {
  await sessionAs('a')
  t.equal(await roundTrips(() => ten.runAsInstance('c', () => db.selectFrom('note').select('body').where('id', '=', 1).execute())), 1, 'a switch to c and a read with a parameter: one round trip')
  t.equal(await roundTrips(() => ten.runAsInstance('a', () => sql`select body from note`.execute(db))), 1, 'a switch to a and a read without one: one round trip')
  t.equal(await roundTrips(() => ten.runAsInstance('b', () => db.insertInto('note').values({ body: 'b one' }).execute())), 1, 'a switch to b (schema and role) and an insert: one round trip')
  t.equal(await roundTrips(() => ten.runAsInstance('b', () => db.selectFrom('note').select('body').execute())), 1, 'no switch: one round trip')
  t.same(await bodies('b'), ['b one'], 'the insert landed in b\'s table')
  t.same(await bodies('c'), [], 'and nowhere else')
  t.equal(await roundTrips(() => ten.runAsInstance('c', () => db.transaction().execute(async (trx) => await trx.selectFrom('note').select('body').execute()))), 4,
    'a transaction: the set-up alone, then BEGIN, the read and COMMIT (a BEGIN cannot carry it)')
  t.same(await sessionAs('c'), { path: 'tenant_c', user: 'postgres' })
  t.equal(await currentPid(), pid, 'all on the one connection')
})

t.test('a set-up that fails: the statement does not run, the connection is destroyed, the next checkout is clean', async (t) => {
  const writes: Array<[string, () => Promise<unknown>]> = [
    ['an insert with parameters', () => db.insertInto('note').values({ body: 'ghost wrote this' }).execute()],
    ['an insert without parameters', () => sql`insert into note (body) values ('ghost wrote this')`.execute(db)],
  ]
  for (const [what, write] of writes) {
    await sessionAs('c')
    const before = await currentPid()
    const rows = await all()
    await t.rejects(ten.runAsInstance('ghost', write), { code: 'TENANCY_SESSION_FAILED', statusCode: 500, cause: { code: '22023' } }, `${what}: fails with the set-up`)
    t.same(await all(), rows, `${what}: no row written, in c's table (the session the connection had) or any other`)
    const after = await currentPid()
    t.not(after, before, `${what}: the next checkout has a new connection`)
    t.same(await sessionAs(''), { path: '"$user", public', user: 'postgres' }, `${what}: at the server's defaults`)
  }
  await watch()
})

t.test('a statement that fails after its set-up: the server rolls the set-up back, and the next checkout of that instance sets it again', async (t) => {
  const failures: Array<[string, () => Promise<unknown>]> = [
    ['a unique violation with parameters', () => db.insertInto('note').values({ body: 'twice' }).execute()],
    ['a division by zero without parameters', () => sql`select 1 / 0`.execute(db)],
    ['a missing column', () => sql`select only_b from note where id = ${1}`.execute(db)],
  ]
  for (const [what, fail] of failures) {
    await query(url, 'truncate tenant_a.note, tenant_c.note; insert into tenant_a.note (body) values (\'twice\'), (\'a row\'); insert into tenant_c.note (body) values (\'twice\'), (\'c row\')')
    await sessionAs('a')
    await t.rejects(ten.runAsInstance('c', fail), `${what}: the statement fails`)
    t.same(await sessionAs('a'), { path: 'tenant_a', user: 'postgres' }, `${what}: an a checkout finds the session as a left it (the failed round trip's SET was rolled back)`)
    await t.rejects(ten.runAsInstance('c', fail), `${what}: again`)
    const read = await ten.runAsInstance('c', () => db.selectFrom('note').select('body').orderBy('id').execute())
    t.same(read, [{ body: 'twice' }, { body: 'c row' }], `${what}: c then reads its own rows, not a's`)
    t.same(await bodies('a'), ['twice', 'a row'], `${what}: a's rows untouched`)
  }
  // A failed statement may cost its connection (when the server's ready-for-query comes in a later packet): watch the one there is now.
  await watch()
})

t.test('statements sent together on one checkout wait for the set-up round trip, and get the set-up again when it was rolled back', async (t) => {
  // Kysely sends one statement at a time on a connection; a client of the routing pool used directly need not.
  const pool = new RoutingPool(ten.pools, { context: () => ten.context() })
  await query(url, 'truncate tenant_a.note, tenant_c.note; insert into tenant_a.note (body) values (\'a secret\'); insert into tenant_c.note (body) values (\'c note\')')
  await sessionAs('a')
  const [failed, read, written] = await ten.runAsInstance('c', async () => {
    const client = await pool.connect()
    try {
      return await Promise.allSettled([
        client.query('select 1 / $1', [0]),
        client.query<{ body: string }>('select body from note', []),
        client.query('insert into note (body) values (\'c wrote this\')', []),
      ])
    } finally {
      client.release()
    }
  })
  t.equal(failed.status, 'rejected', 'the first fails (and its SET is rolled back)')
  t.same(read.status === 'fulfilled' && read.value.rows, [{ body: 'c note' }], 'the second reads c\'s row, not a\'s')
  t.equal(written.status, 'fulfilled')
  t.same(await bodies('c'), ['c note', 'c wrote this'], 'the third wrote into c')
  t.same(await bodies('a'), ['a secret'], 'a untouched')

  await sessionAs('a')
  const results = await ten.runAsInstance('ghost', async () => {
    const client = await pool.connect()
    try {
      return await Promise.allSettled([
        client.query('select body from note', []),
        client.query('insert into note (body) values ($1)', ['ghost wrote this']),
        client.query('insert into note (body) values (\'ghost wrote this too\')', []),
      ])
    } finally {
      client.release()
    }
  })
  t.same(results.map((r) => r.status === 'rejected' && (r.reason as { code?: string }).code), ['TENANCY_SESSION_FAILED', 'TENANCY_SESSION_FAILED', 'TENANCY_SESSION_FAILED'],
    'a failed set-up fails every statement of the checkout, with its error')
  t.same(await all(), { '': [], a: ['a secret'], b: ['b one'], c: ['c note', 'c wrote this'] }, 'no row written anywhere')

  // Through Kysely (which sends them one after another) the same.
  await sessionAs('a')
  const kysely = await ten.runAsInstance('ghost', async () => await db.connection().execute(async (conn) => await Promise.allSettled([
    conn.selectFrom('note').select('body').execute(),
    conn.insertInto('note').values({ body: 'ghost wrote this' }).execute(),
  ])))
  t.same(kysely.map((r) => r.status === 'rejected' && (r.reason as { code?: string }).code), ['TENANCY_SESSION_FAILED', 'TENANCY_SESSION_FAILED'])
  t.same(await all(), { '': [], a: ['a secret'], b: ['b one'], c: ['c note', 'c wrote this'] }, 'still no row written')
  await watch()
})

t.test('prepared statements: a name whose first Parse failed in a set-up round trip is parsed again', async (t) => {
  // tenant_b.note has only_b, tenant_c.note has not: the same text fails to parse for c and works for b.
  const text = (id: number) => sql<{ only_b: number | null }>`select only_b from note where id = ${id}`
  let kept = 0
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = (await sessionAs('b')) && await currentPid()
    await t.rejects(ten.runAsInstance('c', () => text(-1 - attempt).execute(prepared)), { code: '42703' }, 'c has no such column')
    const rows = await ten.runAsInstance('b', () => text(-1 - attempt).execute(prepared))
    t.same(rows.rows, [], 'b runs the same text afterwards (not "prepared statement does not exist")')
    if (await currentPid() === before) kept++
  }
  t.comment(`${kept} of 5 attempts on the connection the failure was on`)
  await watch()
})

t.test('prepared statements: a plan that no longer fits is sent again unnamed with its set-up, not with the session the connection had', async (t) => {
  await query(url, 'truncate tenant_b.note, tenant_c.note; insert into tenant_b.note (body) values (\'b row\'); insert into tenant_c.note (body) values (\'c row\')')
  // tenant_b.note has one more column than tenant_c.note: prepared for c, the name's result type no longer fits for b (0A000 at Bind).
  const star = (id: number) => sql<{ body: string }>`select * from note where id > ${id}`
  t.same((await ten.runAsInstance('c', () => star(0).execute(prepared))).rows.map((row) => row.body), ['c row'], 'prepared for c')
  t.same((await ten.runAsInstance('b', () => star(0).execute(prepared))).rows.map((row) => row.body), ['b row'], 'b, on the same connection, reads its own row')
  t.same(await sessionAs('b'), { path: 'tenant_b', user: roleB }, 'and the session is b\'s')
  await watch()
})

t.test('a cursor behind a set-up: sent after it succeeds, not at all when it fails', async (t) => {
  await query(url, 'truncate tenant_a.note, tenant_c.note; insert into tenant_a.note (body) values (\'a secret\'); insert into tenant_c.note (body) values (\'c note\')')
  await sessionAs('a')
  const streamed = await ten.runAsInstance('c', async () => {
    const rows = []
    for await (const row of streaming.selectFrom('note').select('body').stream()) rows.push(row)
    return rows
  })
  t.same(streamed, [{ body: 'c note' }], 'c streams its own row')
  await sessionAs('a')
  await t.rejects(ten.runAsInstance('ghost', async () => {
    const rows = []
    for await (const row of streaming.selectFrom('note').select('body').stream()) rows.push(row)
    return rows
  }), { code: 'TENANCY_SESSION_FAILED' }, 'ghost\'s stream fails with its set-up, and reads nothing of a\'s')
  t.same(await sessionAs(''), { path: '"$user", public', user: 'postgres' })
  await watch()
})

t.test('settings (what rls sends): set in the round trip with and without parameters; a setting the server refuses fails the set-up and writes nothing', async (t) => {
  // Instance c's checkouts get a setting the server refuses (statement_timeout takes a number).
  const settings = new Kysely<DB>({
    dialect: new PostgresDialect({
      pool: new RoutingPool(ten.pools, { context: () => ten.context(), settings: (context): Record<string, string> => context?.instance?.name === 'c' ? { statement_timeout: 'not a number' } : { 'tenancy.iid': String(context?.instance?.id ?? '') } }),
    }),
  })
  const iid = async (as: Name, withParameter: boolean): Promise<string> => await ten.runAsInstance(as, async () => withParameter
    ? (await sql<{ iid: string }>`select current_setting('tenancy.iid') as iid where ${1} = 1`.execute(settings)).rows[0]!.iid
    : (await sql<{ iid: string }>`select current_setting('tenancy.iid') as iid`.execute(settings)).rows[0]!.iid)
  t.equal(await roundTrips(async () => { t.equal(await iid('a', false), '2', 'a\'s id, without parameters') }), 1, 'one round trip')
  t.equal(await roundTrips(async () => { t.equal(await iid('b', true), '3', 'b\'s id, with one') }), 1, 'one round trip')
  t.equal(await iid('a', true), '2')
  t.equal(await iid('', false), '1')
  const rows = await all()
  await t.rejects(ten.runAsInstance('c', () => settings.insertInto('note').values({ body: 'c wrote this' }).execute()), { code: 'TENANCY_SESSION_FAILED', cause: { code: '22023' } })
  t.same(await all(), rows, 'nothing written')
  t.equal(await iid('b', false), '3', 'the next checkout is clean')
  await watch()
})

t.test('a parameter pg cannot serialize: the statement is not sent, the connection is destroyed, the next checkout is clean', async (t) => {
  await sessionAs('a')
  const before = await currentPid()
  const rows = await all()
  const unserializable = { toPostgres: () => { throw new Error('no text for this value') } }
  await t.rejects(ten.runAsInstance('c', () => sql`insert into note (body) values (${unserializable})`.execute(db)), { message: 'no text for this value' }, 'the error is pg\'s')
  t.same(await all(), rows, 'nothing written')
  t.not(await currentPid(), before, 'another connection: the first one\'s session was not known')
  t.same(await sessionAs('c'), { path: 'tenant_c', user: 'postgres' })
  t.same(await sessionAs('a'), { path: 'tenant_a', user: 'postgres' })
  await watch()
})

t.test('generated interleavings of instances, failures and statement kinds: every read is its own instance\'s, every write lands in its own table', async (t) => {
  const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31)
  t.comment(`fast-check seed ${seed} (FC_SEED=${seed} replays this run)`)
  const step = fc.record({
    as: fc.constantFrom<Name>('', 'a', 'b', 'c', 'ghost'),
    kind: fc.constantFrom('read', 'read-raw', 'write', 'fail', 'transaction', 'prepared', 'stream'),
  })
  let n = 0
  try {
    await fc.assert(fc.asyncProperty(fc.array(fc.array(step, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 6 }), async (batches) => {
      await query(url, `truncate ${Object.values(tableOf).join(', ')}; ${Object.entries(tableOf).map(([name, table]) => `insert into ${table} (body, tag) values ('row of ${name}', '${name}')`).join('; ')}`)
      const written: Record<string, string[]> = { '': [], a: [], b: [], c: [] }
      for (const batch of batches) {
        // One batch's steps run at once: their checkouts queue for the one connection in turn.
        const outcomes = await Promise.allSettled(batch.map(async ({ as, kind }) => await ten.runAsInstance(as, async () => {
          const body = `w${n++}`
          switch (kind) {
            case 'read': return (await db.selectFrom('note').select('tag').where('id', '>', 0).execute()).map((row) => row.tag)
            case 'read-raw': return (await sql<{ tag: string }>`select tag from note`.execute(db)).rows.map((row) => row.tag)
            case 'prepared': return (await prepared.selectFrom('note').select('tag').where('id', '>', 0).execute()).map((row) => row.tag)
            case 'stream': {
              const tags = []
              for await (const row of streaming.selectFrom('note').select('tag').stream()) tags.push(row.tag)
              return tags
            }
            case 'write':
              await db.insertInto('note').values({ body, tag: 'written' }).execute()
              written[as]?.push(body)
              return null
            case 'fail': return await sql`select 1 / ${0}`.execute(db)
            case 'transaction': return await db.transaction().execute(async (trx) => (await trx.selectFrom('note').select('tag').execute()).map((row) => row.tag))
          }
        })))
        batch.forEach(({ as, kind }, i) => {
          const outcome = outcomes[i]!
          if (as === 'ghost') {
            if (outcome.status !== 'rejected' || (outcome.reason as { code?: string }).code !== 'TENANCY_SESSION_FAILED') throw new Error(`ghost's ${kind} did not fail with its set-up: ${JSON.stringify(outcome)}`)
            return
          }
          if (kind === 'fail') {
            if (outcome.status !== 'rejected' || (outcome.reason as { code?: string }).code !== '22012') throw new Error(`${as}'s failing statement: ${JSON.stringify(outcome)}`)
            return
          }
          if (outcome.status === 'rejected') throw new Error(`${as}'s ${kind} failed: ${String(outcome.reason)}`)
          if (Array.isArray(outcome.value) && !outcome.value.every((tag) => tag === as || tag === 'written')) throw new Error(`${as}'s ${kind} read ${JSON.stringify(outcome.value)}`)
        })
      }
      for (const [name, table] of Object.entries(tableOf)) {
        const rows = (await query<{ body: string }>(url, `select body from ${table} where tag = 'written' order by id`)).map((row) => row.body)
        if (JSON.stringify(rows.sort()) !== JSON.stringify([...written[name]!].sort())) throw new Error(`${table} holds ${JSON.stringify(rows)}, written as ${name}: ${JSON.stringify(written[name])}`)
      }
    }), { seed, numRuns: 40 })
    t.pass('every interleaving kept reads and writes to their instance')
  } catch (err) {
    t.comment(`failed with fast-check seed ${seed} (rerun with FC_SEED=${seed})`)
    throw err
  }
  t.equal(ten.pools.counts().leased, 0, 'nothing left checked out')
})
