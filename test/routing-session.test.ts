import t from 'tap'
import { randomBytes } from 'node:crypto'
import { AbortedTransactionError, sql, type Generated, type Kysely, type Transaction } from 'kysely'
import { createTenancy, RoutingPool, SessionState } from '../lib/index.js'
import { changesSession, transactionControl } from '../lib/routing/session-state.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'

// Before PostgreSQL's parser is loaded no text can be read: each may change the session.
t.equal(changesSession('select 1'), true, 'before the parser is loaded, even select 1 may change the session')

// Schema mode: search_path and SET ROLE per checkout, applied only when they
// differ, never left behind for the next user. The default pool has one
// client, so every instance below shares the same physical connection.
interface DB { note: { id: Generated<number>, body: string } }

const url = await createDatabase(t, 'routing_session')
const suffix = randomBytes(3).toString('hex')
const roleA = `ra_${suffix}`
const roleB = `rb_${suffix}`
await adminQuery(`create role ${roleA}; create role ${roleB}`)
t.teardown(async () => {
  // The database is dropped first (createDatabase's teardown), which removes the grants.
  await adminQuery(`drop role if exists ${roleA}; drop role if exists ${roleB}`).catch(() => {})
})
await query(url, `
  create table public.note (id serial primary key, body text not null);
  create schema tenant_a; create table tenant_a.note (id serial primary key, body text not null);
  create schema tenant_b; create table tenant_b.note (id serial primary key, body text not null);
  create schema tenant_c; create table tenant_c.note (id serial primary key, body text not null);
  grant usage on schema tenant_a to ${roleA}; grant select, insert on tenant_a.note to ${roleA}; grant usage on all sequences in schema tenant_a to ${roleA};
  grant usage on schema tenant_b to ${roleB}; grant select, insert on tenant_b.note to ${roleB}; grant usage on all sequences in schema tenant_b to ${roleB};
  insert into tenant_a.note (body) values ('a secret'); insert into tenant_b.note (body) values ('b secret');
  insert into tenant_c.note (body) values ('c note'); insert into public.note (body) values ('public note');
`)

const instances = [
  { name: '', id: 1 },
  { name: 'a', id: 2, schema: 'tenant_a', role: roleA },
  { name: 'b', id: 3, schema: 'tenant_b', role: roleB },
  { name: 'c', id: 4, schema: 'tenant_c' },
  { name: 'ghost', id: 5, schema: 'tenant_c', role: `nobody_${suffix}` },
]
// Idle connections stay open far longer than backendGone waits, so a closed backend was closed on release.
const ten = await createTenancy({ instances, datasources: { default: url }, pool: { max: 1, idleTimeoutMillis: 60000 } })
t.teardown(() => ten.close())
// CALL is one of the statements that must cost its connection (below).
await query(url, `create procedure public.leak_path() language plpgsql as $$ begin perform set_config('search_path', 'tenant_b', false); end $$`)
const db = ten.kysely<DB>()

async function session (): Promise<{ schema: string, user: string, path: string }> {
  const { rows } = await sql<{ schema: string, user: string, path: string }>`select current_schema() as schema, current_user as user, current_setting('search_path') as path`.execute(db)
  return rows[0]!
}

t.test('each schema instance reads its own schema through the same connection', async (t) => {
  for (const [name, body] of [['a', 'a secret'], ['b', 'b secret'], ['c', 'c note'], ['', 'public note'], ['a', 'a secret']] as const) {
    await ten.runAsInstance(name, async () => {
      const rows = await db.selectFrom('note').select('body').execute()
      t.same(rows, [{ body }], `${JSON.stringify(name)} sees only its note`)
    })
  }
})

t.test('SET ROLE: the database itself refuses another schema', async (t) => {
  await ten.runAsInstance('a', async () => {
    const here = await session()
    t.same({ schema: here.schema, user: here.user }, { schema: 'tenant_a', user: roleA })
    t.equal(here.path, 'tenant_a', 'search_path is the schema alone')
    await t.rejects(sql`select * from tenant_b.note`.execute(db), { code: '42501' }, 'permission denied for the other schema')
    await t.rejects(sql`select * from public.note`.execute(db), { code: '42501' }, 'and for the shared tables')
    await db.insertInto('note').values({ body: 'a second' }).execute()
  })
  t.same((await query(url, 'select body from tenant_a.note order by id')).map((r) => r.body), ['a secret', 'a second'])
  t.same((await query(url, 'select body from tenant_b.note')).map((r) => r.body), ['b secret'], 'b untouched')
  await ten.runAsInstance('', async () => {
    const here = await session()
    t.same({ schema: here.schema, user: here.user }, { schema: 'public', user: 'postgres' }, 'the next user gets the login role and default path back')
  })
  await ten.runAsHost(async () => {
    t.same((await session()).user, 'postgres', 'host context too')
  })
})

t.test('the session is set only when it differs, and the shared path costs no round trip', async (t) => {
  const pool = new RoutingPool(ten.pools)
  const { Kysely, PostgresDialect } = await import('kysely')
  const own = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
  // Not destroyed: it would close the tenancy's pools.
  const run = async (name: string, times: number): Promise<void> => {
    await ten.runAsInstance(name, async () => {
      for (let i = 0; i < times; i++) await own.selectFrom('note').select('body').execute()
    })
  }
  await run('', 1)
  const start = { ...pool.stats }
  await run('', 5)
  await ten.runAsHost(async () => { await sql`select 1`.execute(own) })
  t.equal(pool.stats.sessionChanges - start.sessionChanges, 0, 'six shared and host checkouts, no session statement')
  await run('c', 5)
  t.equal(pool.stats.sessionChanges - start.sessionChanges, 1, 'the schema is set once for five checkouts')
  await run('a', 3)
  t.equal(pool.stats.sessionChanges - start.sessionChanges, 2, 'switching to a schema with a role: one more round trip')
  await run('', 2)
  t.equal(pool.stats.sessionChanges - start.sessionChanges, 3, 'back to shared: one reset')
  t.equal(pool.stats.checkouts - start.checkouts, 16)
  t.same(pool.stats.destroyed, { session: 0, transaction: 0, lost: 0, asked: 0 }, 'and every connection was pooled again')
  await ten.runAsInstance('c', async () => {
    await sql`reset search_path`.execute(own)
    await own.connection().execute(async (conn) => { await sql`begin`.execute(conn) })
  })
  t.same(pool.stats.destroyed, { session: 1, transaction: 1, lost: 0, asked: 0 }, 'a session change and an open transaction: each connection destroyed, with its reason')
})

// Each statement runs on db.connection() as `as`; then the same instance checks
// out again. The pool has one client, so a connection kept would come back.
const hostile: Array<{ as: 'a' | 'c', what: string, statements: string[] }> = [
  { as: 'a', what: 'a RESET ROLE behind a comment', statements: ['/* c */ RESET ROLE'] },
  { as: 'a', what: 'a RESET ROLE after another statement', statements: ['select 1; reset role'] },
  { as: 'c', what: 'a DO block', statements: ['DO $$ BEGIN PERFORM set_config(\'search_path\', \'tenant_b\', false); END $$'] },
  { as: 'a', what: 'DISCARD ALL behind a comment', statements: ['/* c */ DISCARD ALL'] },
  { as: 'c', what: 'a quoted set_config', statements: ['select "set_config"(\'search_path\', \'tenant_b\', false)'] },
  { as: 'c', what: 'pg_catalog.set_config', statements: ['select pg_catalog.set_config(\'search_path\', \'tenant_b\', false)'] },
  { as: 'c', what: 'set_config with an expression for is_local', statements: ['select set_config(\'search_path\', \'tenant_b\', 1 = 0)'] },
  { as: 'a', what: 'SET SESSION AUTHORIZATION', statements: [`SET SESSION AUTHORIZATION ${roleB}`] },
  { as: 'c', what: 'SET search_path', statements: ['SET search_path TO tenant_b'] },
  { as: 'c', what: 'an update of pg_settings', statements: ['update pg_settings set setting = \'tenant_b\' where name = \'search_path\''] },
  { as: 'c', what: 'a temporary table that shadows the instance\'s table', statements: ['CREATE TEMP TABLE note (id int, body text)', 'insert into note values (1, \'shadow\')'] },
  { as: 'c', what: 'a table created in pg_temp through SET LOCAL search_path', statements: ['begin', 'set local search_path = pg_temp', 'create table note (id int, body text)', 'insert into note values (1, \'shadow\')', 'commit'] },
  { as: 'c', what: 'PREPARE', statements: ['PREPARE leak AS select body from tenant_b.note'] },
  { as: 'c', what: 'LISTEN', statements: ['LISTEN leak'] },
  { as: 'c', what: 'a session advisory lock', statements: ['select pg_advisory_lock(42)'] },
  { as: 'c', what: 'CALL', statements: ['CALL public.leak_path()'] },
  { as: 'c', what: 'SET SESSION CHARACTERISTICS', statements: ['SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY'] },
  { as: 'c', what: 'a cursor WITH HOLD', statements: ['DECLARE leak CURSOR WITH HOLD FOR select body from tenant_b.note'] },
  { as: 'c', what: 'SQL that the parser cannot read', statements: ['selec 1'] },
]

interface Checkout { pid: number, schema: string, user: string, path: string, readOnly: string, prepared: number, channels: number, cursors: number, advisory: number, bodies: string[] }
async function checkout (executor: Kysely<DB> | Transaction<DB> = db): Promise<Checkout> {
  const { rows } = await sql<Omit<Checkout, 'bodies'>>`select pg_backend_pid() as pid, current_schema() as schema, current_user as user,
    current_setting('search_path') as path, current_setting('default_transaction_read_only') as "readOnly",
    (select count(*)::int from pg_prepared_statements) as prepared, (select count(*)::int from pg_listening_channels()) as channels,
    (select count(*)::int from pg_cursors) as cursors, (select count(*)::int from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()) as advisory`.execute(executor)
  const bodies = (await executor.selectFrom('note').select('body').orderBy('id').execute()).map((row) => row.body)
  return { ...rows[0]!, bodies }
}
/** Whether the server ends backend `pid` within 5 s (far less than the pools' idle timeout). */
async function backendGone (pid: number): Promise<boolean> {
  const deadline = Date.now() + 5000
  do {
    if ((await query(url, 'select 1 from pg_stat_activity where pid = $1', [pid])).length === 0) return true
    await new Promise((resolve) => setTimeout(resolve, 25))
  } while (Date.now() < deadline)
  return false
}

/** What a checkout of a schema instance must see: its schema, role and rows (read directly), at the server's defaults otherwise. */
async function expected (name: 'a' | 'c'): Promise<Omit<Checkout, 'pid'> & { pid: undefined }> {
  const bodies = (await query<{ body: string }>(url, `select body from tenant_${name}.note order by id`)).map((row) => row.body)
  return { pid: undefined, schema: `tenant_${name}`, user: name === 'a' ? roleA : 'postgres', path: `tenant_${name}`, readOnly: 'off', prepared: 0, channels: 0, cursors: 0, advisory: 0, bodies }
}

t.test('no statement sent on a connection changes the session of a later checkout: the connection is destroyed', async (t) => {
  for (const { as, what, statements } of hostile) {
    const pid = await ten.runAsInstance(as, async () => await db.connection().execute(async (conn) => {
      const { pid } = await checkout(conn)
      for (const statement of statements) await sql.raw(statement).execute(conn).catch((err: { code?: string }) => { if (statement !== 'selec 1' || err.code !== '42601') throw err })
      return pid
    }))
    const next = await ten.runAsInstance(as, checkout)
    t.not(next.pid, pid, `${what}: the next checkout of ${JSON.stringify(as)} has another connection`)
    t.same({ ...next, pid: undefined }, await expected(as), `${what}: with the instance's own schema, role, settings and rows, and nothing else`)
    t.ok(await backendGone(pid), `${what}: the old connection was closed`)
  }
})

t.test('statements that end with their transaction keep the connection', async (t) => {
  const first = await ten.runAsInstance('c', checkout)
  await ten.runAsInstance('c', async () => {
    await db.transaction().execute(async (trx) => {
      await sql`set local search_path to tenant_b`.execute(trx)
      t.same((await sql<{ body: string }>`select body from note`.execute(trx)).rows, [{ body: 'b secret' }], 'SET LOCAL works inside the transaction')
      await sql`select set_config('tenancy.x', ${'1'}, true), pg_advisory_xact_lock(7)`.execute(trx)
      await sql`set transaction read only`.execute(trx)
    })
    await sql`select body from note where body <> ${'set search_path'}`.execute(db)
    await db.selectFrom('note').select('body').execute()
  })
  const next = await ten.runAsInstance('c', checkout)
  t.equal(next.pid, first.pid, 'the same connection')
  t.same({ ...next, pid: undefined }, await expected('c'), 'and its session is the instance\'s own again')
})

t.test('a statement that changes the session in one checkout does not leak into another instance either', async (t) => {
  const pid = await ten.runAsInstance('a', async () => (await checkout()).pid)
  await ten.runAsInstance('a', async () => { await sql`select 1; reset role`.execute(db) })
  const next = await ten.runAsInstance('c', checkout)
  t.not(next.pid, pid, 'another connection')
  t.same({ ...next, pid: undefined }, await expected('c'))
  await ten.runAsInstance('a', async () => {
    await t.rejects(sql`select * from tenant_b.note`.execute(db), { code: '42501' }, 'a runs as its role again')
  })
})

t.test('a connection lost while checked out gives 503 and is destroyed, also when pg says so only by its events', async (t) => {
  await query(url, `create or replace function public.lose_connection() returns void language plpgsql as $$ begin raise exception 'terminating connection' using errcode = '57P01'; end $$`)
  const pid = await ten.runAsInstance('c', async () => (await checkout()).pid)
  await ten.runAsInstance('c', async () => {
    await t.rejects(sql`select public.lose_connection()`.execute(db), { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503, cause: { code: '57P01' } })
  })
  const next = await ten.runAsInstance('c', checkout)
  t.not(next.pid, pid, 'a connection-class error code: the connection is not reused')
  t.ok(await backendGone(pid), 'and was closed')

  await ten.runAsInstance('c', async () => {
    await t.rejects(db.connection().execute(async (conn) => {
      const { pid } = await checkout(conn)
      await query(url, 'select pg_terminate_backend($1)', [pid])
      t.ok(await backendGone(pid), 'the server ended the backend')
      await conn.selectFrom('note').select('body').execute()
    }), { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 })
  })
  t.same({ ...(await ten.runAsInstance('c', checkout)), pid: undefined }, await expected('c'), 'the next checkout works')
  t.equal(ten.pools.counts().leased, 0)
})

t.test('the session belongs to the connection: another routing pool, or a lease taken from the pool manager, starts from what it really carries', async (t) => {
  const { Kysely, PostgresDialect } = await import('kysely')
  // Not destroyed: it would close the tenancy's pools.
  const second = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(ten.pools, { context: () => ten.context() }) }) })
  const pid = await ten.runAsInstance('a', async () => (await checkout()).pid)
  const other = await ten.runAsInstance('', async () => await checkout(second))
  t.equal(other.pid, pid, 'the same connection, through another routing pool')
  t.same({ schema: other.schema, user: other.user, bodies: other.bodies }, { schema: 'public', user: 'postgres', bodies: ['public note'] }, 'which resets what the first one set')
  await ten.runAsInstance('c', async () => { await checkout(second) })

  const lease = await ten.pools.acquire('default')
  try {
    const { rows } = await lease.client.query<{ pid: number, user: string, path: string }>('select pg_backend_pid() as pid, current_user as user, current_setting(\'search_path\') as path')
    t.same(rows[0], { pid, user: 'postgres', path: '"$user", public' }, 'a lease from the pool manager starts at the server\'s defaults')
  } finally {
    ten.pools.release(lease)
  }
  t.same({ ...(await ten.runAsInstance('c', checkout)), pid: undefined }, await expected('c'), 'and the routing pools set the schema again afterwards')
  t.same({ ...(await ten.runAsInstance('a', checkout)), pid: undefined }, await expected('a'))
})

t.test('a session that cannot be prepared fails the query and the connection is discarded', async (t) => {
  const pid = await ten.runAsInstance('c', async () => (await checkout()).pid)
  await t.rejects(ten.runAsInstance('ghost', async () => await session()), { code: 'TENANCY_SESSION_FAILED', statusCode: 500, message: /The session of a connection for instance "ghost" could not be prepared \(SET ROLE "nobody_\w+"\): role "nobody_\w+" does not exist\. The connection was destroyed\./, cause: { code: '22023' } })
  // The failed SET ROLE left the session as it was (PostgreSQL undid the text as one implicit transaction), but nobody reads that here.
  t.ok(await backendGone(pid), 'the connection (the pool\'s only one) was closed, not pooled again')
  await ten.runAsInstance('', async () => {
    t.same({ ...(await session()), path: undefined }, { schema: 'public', user: 'postgres', path: undefined }, 'the next user gets a clean connection')
  })
  t.not((await ten.runAsInstance('', checkout)).pid, pid, 'a new one')
  t.equal(ten.pools.counts().leased, 0, 'nothing left checked out')
})

t.test('each connection destroyed is counted once, under its reason, and a second release of a checkout gives nothing back', async (t) => {
  const pool = new RoutingPool(ten.pools)
  const { Kysely, PostgresDialect } = await import('kysely')
  // Not destroyed: it would close the tenancy's pools.
  const own = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
  await ten.runAsInstance('c', async () => {
    const client = await pool.connect()
    await client.query('reset search_path', [])
    client.release()
    client.release()
  })
  t.same(pool.stats.destroyed, { session: 1, transaction: 0, lost: 0, asked: 0 }, 'a session change, released twice: one connection destroyed, counted once')
  t.equal(ten.pools.counts().leased, 0, 'and nothing is left checked out')
  await t.rejects(ten.runAsInstance('ghost', async () => await sql`select 1`.execute(own)), { code: 'TENANCY_SESSION_FAILED' })
  t.same(pool.stats.destroyed, { session: 1, transaction: 0, lost: 0, asked: 1 }, 'a session that could not be prepared: destroyed as asked')
  await t.rejects(ten.runAsInstance('c', async () => await own.connection().execute(async (conn) => {
    const { pid } = await checkout(conn)
    await query(url, 'select pg_terminate_backend($1)', [pid])
    t.ok(await backendGone(pid), 'the server ended the backend')
    await sql`select 1`.execute(conn)
  })), { code: 'TENANCY_DATASOURCE_UNAVAILABLE' })
  t.same(pool.stats.destroyed, { session: 1, transaction: 0, lost: 1, asked: 1 }, 'a connection lost while checked out: destroyed as lost')
  t.same({ ...(await ten.runAsInstance('c', checkout)), pid: undefined }, await expected('c'), 'the next checkout works')
})

t.test('a transaction in a schema instance keeps its schema and role', async (t) => {
  await ten.runAsInstance('b', async () => {
    await t.rejects(db.transaction().execute(async (trx) => {
      await trx.insertInto('note').values({ body: 'b in trx' }).execute()
      await t.rejects(sql`select * from tenant_a.note`.execute(trx), { code: '42501' })
    }), AbortedTransactionError, 'the refused read aborted the transaction, so its commit rolled back')
  })
  t.same((await query(url, 'select body from tenant_b.note')).map((r) => r.body), ['b secret'], 'the failed transaction rolled back')
  await ten.runAsInstance('b', async () => {
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('note').values({ body: 'b committed' }).execute()
    })
  })
  t.same((await query(url, 'select body from tenant_b.note order by id')).map((r) => r.body), ['b secret', 'b committed'])
  t.same((await query(url, 'select body from tenant_a.note order by id')).map((r) => r.body), ['a secret', 'a second'], 'a untouched')
})

t.test('extra settings follow the context and never outlive it', async (t) => {
  const withSettings = await createTenancy({
    instances,
    datasources: { default: url },
    pool: { max: 1 },
    settings: (context) => ({ 'tenancy.iid': String(context?.instance?.id ?? '') }),
  })
  t.teardown(() => withSettings.close())
  const db2 = withSettings.kysely<DB>()
  const iid = async (): Promise<string> => (await sql<{ v: string }>`select current_setting('tenancy.iid', true) as v`.execute(db2)).rows[0]!.v
  t.equal(await withSettings.runAsInstance('c', iid), '4')
  t.equal(await withSettings.runAsInstance('', iid), '1')
  t.equal(await withSettings.runAsHost(iid), '', 'host context: empty')
  t.equal(await iid(), '', 'no context: empty')
  t.equal(await withSettings.runAsInstance('a', iid), '2', 'with a role')
  t.equal(await withSettings.runAsInstance('c', iid), '4')
})

t.test('SessionState sends only the differences', async (t) => {
  const state = new SessionState()
  const none = { schema: null, role: null, settings: {} }
  t.equal(state.changesTo({ schema: null, role: null, settings: Object.freeze({}) }), '', 'a new connection already has the defaults')
  const acme = { schema: 'tenant_acme', role: 'acme_role', settings: { 'tenancy.iid': '3' } }
  t.equal(state.changesTo(acme), 'SET ROLE "acme_role"; SET search_path TO "tenant_acme"; SELECT set_config(\'tenancy.iid\', \'3\', false)')
  state.applied(acme)
  t.equal(state.changesTo({ ...acme, settings: { 'tenancy.iid': '3' } }), '', 'equal values: nothing')
  t.equal(state.changesTo(none), 'RESET ROLE; RESET search_path; SELECT set_config(\'tenancy.iid\', \'\', false)', 'a dropped setting is cleared')
  state.applied(none)
  t.equal(state.changesTo(none), '', 'and then stays cleared without a round trip')
  t.throws(() => state.changesTo({ schema: null, role: null, settings: { 'bad name;': 'x' } }), { code: 'TENANCY_INVALID_OPTIONS' })
})

t.test('SessionState: a statement that may change the session makes it untrusted for good', async (t) => {
  await SessionState.load()
  const state = new SessionState()
  state.observe('update note set body = 1')
  t.ok(state.trusted, 'an UPDATE … SET is not a session change')
  state.observe('select 1; /* c */ reset role')
  t.notOk(state.trusted)
  state.observe('select 1')
  t.notOk(state.trusted, 'and stays untrusted')
  const unknown = new SessionState()
  unknown.observe(undefined)
  t.notOk(unknown.trusted, 'a statement whose text is not known')
})

t.test('changesSession reads every statement with PostgreSQL\'s parser', async (t) => {
  await SessionState.load()
  const changes = [
    'set search_path to x', 'SET SESSION search_path = x', '/* c */ reset role', 'select 1; reset role', 'reset all', 'set role x',
    'set session authorization x', 'reset session authorization', 'set session characteristics as transaction read only', 'set time zone utc',
    'discard all', '/* c */ DISCARD plans', 'do $$ begin end $$', 'call p()', 'prepare p as select 1', 'execute p', 'explain analyze execute p',
    'deallocate all', 'listen x', 'load \'auto_explain\'', 'declare c cursor with hold for select 1',
    'create temp table x (a int)', 'create temporary view v as select 1', 'create temp sequence s', 'select 1 into temp t', 'create table pg_temp.x (a int)',
    'create temp table x as select 1', 'create function pg_temp.f() returns int language sql as \'select 1\'', 'set local search_path = pg_temp',
    'set local search_path = \'"PG_TEMP", public\'', 'select set_config(\'search_path\', \'pg_temp_3\', true)',
    'select set_config(\'search_path\', $1, true)', 'select set_config($1, \'x\', true)',
    'select set_config(\'a.b\', \'x\', false)', 'select "set_config"(\'a.b\', \'x\', false)', 'select pg_catalog.set_config(\'a.b\', \'x\', false)',
    'select SET_CONFIG(\'a.b\', \'x\', $1)', 'select set_config(setting_name => \'a.b\', new_value => \'x\', is_local => true)',
    'select * from student where id = (select 1 from set_config(\'a.b\', \'x\', false))', 'with s as (select set_config(\'a.b\', \'x\', false)) select * from s',
    'update pg_settings set setting = \'x\' where name = \'search_path\'', 'update pg_catalog.pg_settings set setting = \'x\'',
    'select pg_advisory_lock(1)', 'select pg_catalog.pg_try_advisory_lock_shared(1, 2)', 'select setseed(0.5)',
    'select query_to_xml(\'select set_config(\'\'a.b\'\', \'\'x\'\', false)\', true, true, \'\')', 'select * from ts_stat(\'select 1\')',
    'select set_limit(0.5)', 'select dblink_connect(\'c\', \'dbname=x\')', 'select pg_replication_origin_session_setup(\'o\')',
    'select ts_rewrite(\'a\'::tsquery, \'select 1\')', 'select * from crosstab(\'select 1\') as c(a int)', 'select query_to_xmlschema(\'select 1\', true, true, \'\')',
    'select U&"set\\005fconfig"(\'a.b\', \'x\', false)', 'insert into note (body) select pg_advisory_lock(1)::text',
    'with x as (select 1) select * into temporary t from x', 'update note set body = \'x\' from set_config(\'a.b\', \'x\', false) s',
    'selec 1',
  ]
  for (const text of changes) t.ok(changesSession(text), `changes the session: ${text}`)
  const keeps = [
    'select 1', 'select * from note where body = \'set search_path\'', 'update note set body = $1 where id = $2', 'insert into note (body) values ($1) returning id',
    'delete from note where id in (select id from note)', 'begin', 'start transaction isolation level serializable read only', 'commit', 'commit and chain', 'rollback',
    'savepoint s1', 'rollback to savepoint s1', 'release savepoint s1', 'set local search_path to tenant_b', 'set local role x', 'set transaction isolation level serializable',
    'set transaction snapshot \'00000003-0000001B-1\'', 'set constraints all deferred', 'declare c cursor for select 1', 'fetch 10 from c', 'close c',
    'select set_config(\'tenancy.iid\', $1, true)', 'select set_config(\'search_path\', \'tenant_b\', true)', 'select pg_advisory_xact_lock(1)',
    'select current_setting(\'search_path\')', 'select * from pg_settings', 'create table x (a int)', 'create unlogged table x (a int)',
    'alter role x set search_path = y', 'create function f() returns int language sql set search_path = x as \'select 1\'',
    'select pg_temperature from readings', 'notify x', 'unlisten *', 'lock table note in share mode', 'explain select 1', '  ;  ',
  ]
  for (const text of keeps) t.notOk(changesSession(text), `keeps the session: ${text}`)
  t.notOk(changesSession('/* nothing */'), 'a text of comments only')
  const controls: Array<[string, string]> = [
    ['select 1; select 2', 'none'], ['/* nothing */', 'none'], ['begin', 'start'], ['commit and chain', 'end'], ['select 1; commit', 'several'], ['selec 1', 'several'],
  ]
  for (const [text, control] of controls) t.equal(transactionControl(text), control, `transactionControl: ${text}`)
})

t.test('schema and role names are validated at start-up', async (t) => {
  await t.rejects(createTenancy({ instances: [{ name: 'x', id: 1, schema: 'Bad"; drop' }], datasources: { default: url } }), { code: 'TENANCY_INVALID_OPTIONS' })
  await t.rejects(createTenancy({ instances: [{ name: 'x', id: 1, schema: 'ok', role: 'no way' }], datasources: { default: url } }), { code: 'TENANCY_INVALID_OPTIONS' })
})
