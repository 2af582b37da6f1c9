import t from 'tap'
import { randomBytes } from 'node:crypto'
import { sql, type Generated } from 'kysely'
import { createTenancy, RoutingPool, SessionState } from '../lib/index.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'

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
const ten = await createTenancy({ instances, datasources: { default: url }, pool: { max: 1 } })
t.teardown(() => ten.close())
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
})

t.test('a SET run by the application is not trusted: the next checkout applies everything again', async (t) => {
  await ten.runAsInstance('c', async () => {
    await sql`set search_path to tenant_b`.execute(db)
  })
  await ten.runAsInstance('c', async () => {
    t.same(await db.selectFrom('note').select('body').execute(), [{ body: 'c note' }], 'c is back on its schema')
  })
  await ten.runAsInstance('', async () => {
    await sql`select set_config('search_path', 'tenant_c', false)`.execute(db)
  })
  await ten.runAsInstance('', async () => {
    t.equal((await session()).schema, 'public', 'the shared instance is back on the default path')
  })
  await ten.runAsInstance('a', async () => {
    await sql`reset role`.execute(db)
  })
  await ten.runAsInstance('a', async () => {
    t.equal((await session()).user, roleA, 'the role is set again')
  })
})

t.test('a session that cannot be prepared fails the query and the connection is discarded', async (t) => {
  await ten.runAsInstance('c', async () => { await session() })
  await t.rejects(ten.runAsInstance('ghost', async () => await session()), { message: /could not be prepared.*nobody_/ })
  await ten.runAsInstance('', async () => {
    t.same({ ...(await session()), path: undefined }, { schema: 'public', user: 'postgres', path: undefined }, 'the next user gets a clean connection')
  })
  t.equal(ten.pools.counts().leased, 0, 'nothing left checked out')
})

t.test('a transaction in a schema instance keeps its schema and role', async (t) => {
  await ten.runAsInstance('b', async () => {
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('note').values({ body: 'b in trx' }).execute()
      await t.rejects(sql`select * from tenant_a.note`.execute(trx), { code: '42501' })
    }).catch(() => {})
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
  state.observe('update note set body = 1')
  t.ok(state.trusted, 'an UPDATE … SET is not a session change')
  state.observe('  SET search_path TO x')
  t.notOk(state.trusted)
  t.equal(state.changesTo(none), 'RESET ROLE; RESET search_path; SELECT set_config(\'tenancy.iid\', \'\', false)', 'untrusted: everything again')
})

t.test('schema and role names are validated at start-up', async (t) => {
  await t.rejects(createTenancy({ instances: [{ name: 'x', id: 1, schema: 'Bad"; drop' }], datasources: { default: url } }), { code: 'TENANCY_INVALID_OPTIONS' })
  await t.rejects(createTenancy({ instances: [{ name: 'x', id: 1, schema: 'ok', role: 'no way' }], datasources: { default: url } }), { code: 'TENANCY_INVALID_OPTIONS' })
})
