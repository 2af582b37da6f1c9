// Tenant tables discovered from the catalog: a table created after discovery
// is refused until the tables are discovered again, never run unfiltered;
// with watchTables, changes made by any other process are followed; views are
// tenant tables; every datasource an instance uses is read.
import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import { randomBytes } from 'node:crypto'
import { createServer, type Socket } from 'node:net'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import pg from 'pg'
import { sql, type Generated } from 'kysely'
import { createTenancy, InstanceRegistry, TenantTables, type InstanceStore, type Tenancy } from '../lib/index.js'
import { CATALOG_WATCH_APPLICATION, catalogTriggerStatements } from '../lib/filter/table-watcher.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'

interface DB {
  note: { id: number, iid: Generated<number>, body: string }
  lesson: { id: number, iid: Generated<number>, title: string }
  setting: { key: string, value: string }
}
/** Tables made along the way, by name. */
type Loose = Record<string, { id: number, body: string }>

const url = await createDatabase(t, 'table_discovery')
await query(url, `
  create table note (id int not null, iid int not null, body text not null, primary key (iid, id));
  insert into note values (1, 1, 'note of 1'), (1, 2, 'note of 2');
  create table setting (key text primary key, value text not null);
  insert into setting values ('colour', 'blue');`)
const tenancy = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: url }, watchTables: false })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<DB>()
const loose = tenancy.kysely<Loose>()

/** What `read` gives (rows, or the error's code) once it is `expected`, or the last thing it gave within 10 s. */
async function eventually (read: () => Promise<unknown>, expected: unknown): Promise<unknown> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const outcome = await read().catch((err: { code?: string, message?: string }) => err.code ?? err.message)
    if (isDeepStrictEqual(outcome, expected) || Date.now() > deadline) return outcome
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/**
 * Runs `statements` on `target` from another process and returns once they
 * have committed. This process's event loop waits meanwhile, so nothing here
 * can have reacted to them (a notification included) when it returns.
 */
function commitElsewhere (target: string, statements: string): void {
  const script = `const pg = require('pg')
    const client = new pg.Client({ connectionString: process.env.TARGET })
    client.connect().then(() => client.query(process.env.STATEMENTS)).then(() => client.end()).catch((err) => { console.error(err); process.exit(1) })`
  const child = spawnSync(process.execPath, ['-e', script], { cwd: path.resolve(import.meta.dirname, '..'), env: { ...process.env, TARGET: target, STATEMENTS: statements }, encoding: 'utf8', timeout: 60_000 })
  if (child.status !== 0) throw new Error(`the other process failed (${child.status ?? child.signal}): ${child.stderr}`)
}

/** The watching connections on the database of `target`: pid and how it watches (`listen` or `poll`). */
async function watchers (target: string): Promise<Array<{ pid: number, mode: string }>> {
  return await query(url, `select pid, substr(application_name, length($1) + 3) as mode from pg_stat_activity
    where starts_with(application_name, $1) and datname = $2 order by pid`, [CATALOG_WATCH_APPLICATION, new URL(target).pathname.slice(1)])
}

t.test('tables with and without the tenant column, as discovered', async (t) => {
  t.same(tenancy.tenantTables?.toJSON(), { 'public.note': 'must' })
  t.same(await tenancy.runAsInstance('b', () => db.selectFrom('note').select('body').execute()), [{ body: 'note of 2' }])
  t.same(await tenancy.runAsInstance('b', () => db.selectFrom('setting').select('value').execute()), [{ value: 'blue' }], 'a table without iid is not filtered')
})

t.test('the tables option is checked; merged tables keep the stricter kind, and know a table if every part knows it', async (t) => {
  t.throws(() => new TenantTables(null as never), { code: 'TENANCY_INVALID_OPTIONS', message: /tables must be an object/ })
  for (const key of ['a.b.c', '.note', 'public.', 'x'.repeat(64)]) {
    t.throws(() => new TenantTables({ [key]: 'must' }), { code: 'TENANCY_INVALID_OPTIONS', message: /must be "table" or "schema\.table"/ }, key)
  }
  const may = new TenantTables({ 'public.note': 'may' }, ['note', 'public.note'])
  const must = new TenantTables({ 'public.note': { kind: 'must', relation: 'view' } }, ['note', 'public.note', 'lesson', 'public.lesson'])
  t.equal(TenantTables.merge([may, must]).kind('note', 'public'), 'must', 'must after may')
  t.equal(TenantTables.merge([must, may]).kind('note', 'public'), 'must', 'may after must')
  t.equal(TenantTables.merge([may, may]).kind('note', 'public'), 'may')
  t.equal(TenantTables.merge([may, must]).relation('public.note'), 'table', 'the first part says what the relation is')
  const discovered = TenantTables.merge([may, must])
  t.equal(discovered.isKnown('other'), false, 'a table no part discovered is unknown')
  t.equal(discovered.isKnown('lesson'), true)
  t.equal(TenantTables.merge([may, new TenantTables({ setting: 'may' })]).isKnown('other'), true, 'a part of declared tables takes every table as known')
})

t.test('a tenant table created after discovery is refused, then confined once discovered', async (t) => {
  await query(url, `
    create table lesson (id int not null, iid int not null, title text not null, primary key (iid, id));
    insert into lesson values (1, 1, 'lesson of 1'), (1, 2, 'lesson of 2');`)
  const read = () => tenancy.runAsInstance('a', () => db.selectFrom('lesson').select('title').execute())
  const compiled = tenancy.runAsInstance('a', () => {
    try { db.selectFrom('lesson as l').selectAll().compile(); return 'compiled' } catch (err) { return (err as { code?: string }).code }
  })
  t.equal(compiled, 'TENANCY_UNKNOWN_TABLE', 'refused while compiling, before anything reaches the database')
  await t.rejects(read(), { code: 'TENANCY_UNKNOWN_TABLE', statusCode: 500 })
  await t.rejects(tenancy.runAsInstance('a', () => db.insertInto('lesson').values({ id: 2, title: 'x' }).execute()), { code: 'TENANCY_UNKNOWN_TABLE' })
  t.same(await query(url, 'select count(*)::int as n from lesson'), [{ n: 2 }], 'nothing was written')
  await tenancy.discoverTables()
  t.same(await read(), [{ title: 'lesson of 1' }])
  t.same(await tenancy.runAsInstance('b', () => db.selectFrom('lesson').select('title').execute()), [{ title: 'lesson of 2' }])
})

t.test('an explicit tables option trusts the declaration', async (t) => {
  const declared = await createTenancy({ instances: [{ name: 'a', id: 1 }], datasources: { default: url }, tables: { note: 'must' } })
  t.teardown(() => declared.close())
  const rows = await declared.runAsInstance('a', () => declared.kysely<DB>().selectFrom('setting').select('key').execute())
  t.same(rows, [{ key: 'colour' }])
  t.same(await watchers(url), [], 'nothing watches declared tables')
  await t.rejects(createTenancy({ instances: [], datasources: { default: url }, tables: { note: 'must' }, watchTables: true }), { code: 'TENANCY_INVALID_OPTIONS', message: /watchTables/ })
  await t.rejects(createTenancy({ instances: [], datasources: { default: url }, watchTables: 'yes' as unknown as boolean }), { code: 'TENANCY_INVALID_OPTIONS', message: /watchTables must be true or false/ })
})

t.test('strict: a raw statement allowed before a table was discovered is refused after', async (t) => {
  const strict = await createTenancy({ instances: [{ name: 'a', id: 1 }], datasources: { default: url }, strict: true, watchTables: false })
  t.teardown(() => strict.close())
  await query(url, "create table lecture (id int not null, iid int not null); insert into lecture values (1, 1), (2, 2)")
  const raw = () => strict.runAsInstance('a', () => sql<{ n: number }>`select count(*)::int as n from lecture`.execute(strict.kysely()))
  t.same((await raw()).rows, [{ n: 2 }], 'not a tenant table yet, as far as the tenancy knows: it runs, and sees both rows')
  await strict.discoverTables()
  await t.rejects(raw(), { code: 'TENANCY_RAW_SQL', message: /"lecture"/ }, 'the remembered verdict is not reused')
})

t.test('views and materialized views that expose the tenant column are tenant tables', async (t) => {
  await query(url, `create view note_view as select id, iid, body from note;
    create materialized view note_copy as select id, iid, body from note;
    create view note_bodies as select body from note`)
  await tenancy.discoverTables()
  const tables = tenancy.tenantTables!.toJSON()
  t.same([tables['public.note_view'], tables['public.note_copy'], tables['public.note_bodies']],
    [{ kind: 'may', relation: 'view' }, { kind: 'may', relation: 'materialized view' }, undefined], 'a view\'s columns are never NOT NULL in the catalog: may')
  for (const view of ['note_view', 'note_copy']) {
    const query = tenancy.runAsInstance('b', () => loose.selectFrom(view).select('body').compile())
    t.equal(query.sql, `select "body" from "${view}" where "${view}"."iid" = $1`)
    t.same(await tenancy.runAsInstance('b', () => loose.selectFrom(view).select('body').execute()), [{ body: 'note of 2' }], `${view} is confined`)
  }
  t.same(await tenancy.runAsHost(() => loose.selectFrom('note_view').select('body').execute()), [], 'host context: a may view shows host rows only')
})

t.test('watchTables: changes made by another process are followed', async (t) => {
  await query(url, `create table memo (id int primary key, body text not null);
    insert into memo values (1, 'memo 1'), (2, 'memo 2');
    create table extra (id int primary key); insert into extra values (1), (2);`)
  const watching = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: url } })
  t.teardown(() => watching.close())
  const wdb = watching.kysely<Loose>()
  t.same(await query(url, "select evtname, evtevent, evtenabled from pg_event_trigger"), [{ evtname: 'tenancy_catalog', evtevent: 'ddl_command_end', evtenabled: 'O' }], 'a superuser login creates the event trigger')
  t.match(await watchers(url), [{ mode: 'listen' }], 'and listens to it')
  const ids = (table: string) => async () => await watching.runAsInstance('a', () => wdb.selectFrom(table).select('id').orderBy('id').execute())
  t.same(await ids('memo')(), [{ id: 1 }, { id: 2 }], 'memo has no tenant column yet')

  // Another process runs a migration that gives memo the tenant column.
  await query(url, 'alter table memo add column iid int; update memo set iid = id; alter table memo alter column iid set not null')
  t.same(await eventually(ids('memo'), [{ id: 1 }]), [{ id: 1 }], 'memo is confined without discoverTables()')
  t.equal(watching.runAsInstance('a', () => wdb.selectFrom('memo').select('id').compile()).sql, 'select "id" from "memo" where "memo"."iid" = $1')

  // … creates a new tenant table …
  await query(url, "create table receipt (id int, iid int not null); insert into receipt values (1, 1), (2, 2)")
  t.same(await eventually(ids('receipt'), [{ id: 1 }]), [{ id: 1 }], 'a new tenant table is confined')

  // … and drops the column again.
  await query(url, 'alter table memo drop column iid')
  t.same(await eventually(ids('memo'), [{ id: 1 }, { id: 2 }]), [{ id: 1 }, { id: 2 }], 'memo is an ordinary table again, not a failing query')

  // The listening connection is killed, and a change is made before it is back.
  const [before] = await watchers(url)
  await query(url, `select pg_terminate_backend(pid) from pg_stat_activity where starts_with(application_name, '${CATALOG_WATCH_APPLICATION}') and datname = current_database();
    alter table extra add column iid int; update extra set iid = id`)
  t.same(await eventually(ids('extra'), [{ id: 1 }]), [{ id: 1 }], 'a change made while the connection was lost is seen')
  const after = await eventually(async () => (await watchers(url)).map((row) => row.mode), ['listen'])
  t.same(after, ['listen'], 'one listening connection again')
  t.not((await watchers(url))[0]?.pid, before?.pid, 'a new one')
  await query(url, 'alter table extra drop column iid')
  t.same(await eventually(ids('extra'), [{ id: 1 }, { id: 2 }]), [{ id: 1 }, { id: 2 }], 'and it follows changes')
})

t.test('watchTables without an event trigger: a login that may not create one reads a fingerprint', async (t) => {
  const own = await createDatabase(t, 'table_watch_poll')
  const role = `tenancy_watch_${randomBytes(4).toString('hex')}`
  const password = randomBytes(12).toString('hex')
  await adminQuery(`create role ${role} login password '${password}' nosuperuser`)
  t.teardown(async () => { await adminQuery(`drop owned by ${role}`, own).catch(() => {}); await adminQuery(`drop role if exists ${role}`) })
  await query(own, `create table item (id int primary key); insert into item values (1), (2);
    create table other (id int primary key); insert into other values (1), (2);
    grant select on all tables in schema public to ${role}; alter default privileges in schema public grant select on tables to ${role}`)
  const appUrl = new URL(own)
  appUrl.username = role
  appUrl.password = password
  const watching = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: appUrl.toString() }, pool: { max: 1, idleTimeoutMillis: 60_000 } })
  t.teardown(() => watching.close())
  const wdb = watching.kysely<Loose>()
  const ids = (table: string) => async () => await watching.runAsInstance('a', () => wdb.selectFrom(table).select('id').orderBy('id').execute())
  const ownWatchers = async (): Promise<string[]> => (await watchers(own)).map((row) => row.mode)
  t.same(await query(own, 'select evtname from pg_event_trigger'), [], 'no event trigger was made')
  t.same(await ownWatchers(), ['poll'], 'the watching connection reads the fingerprint')

  await query(own, 'alter table item add column iid int; update item set iid = id')
  t.same(await eventually(ids('item'), [{ id: 1 }]), [{ id: 1 }], 'a new tenant column is seen by the fingerprint')

  // A lost connection that cannot come back: after a second, tables that are
  // not tenant tables are refused (they may have gained the column unseen).
  t.same(await ids('other')(), [{ id: 1 }, { id: 2 }])
  await adminQuery(`alter role ${role} nologin`)
  await query(own, `select pg_terminate_backend(pid) from pg_stat_activity where starts_with(application_name, '${CATALOG_WATCH_APPLICATION}') and datname = current_database()`)
  t.equal(await eventually(ids('other'), 'TENANCY_UNKNOWN_TABLE'), 'TENANCY_UNKNOWN_TABLE', 'refused while the catalog cannot be followed')
  t.same(await ids('item')(), [{ id: 1 }], 'tenant tables are still confined')
  await query(own, 'alter table other add column iid int; update other set iid = id')
  await adminQuery(`alter role ${role} login`)
  t.same(await eventually(ids('other'), [{ id: 1 }]), [{ id: 1 }], 'back: the change made meanwhile is seen')

  // The event trigger made by hand, as the README says, for this login.
  for (const statement of catalogTriggerStatements()) await query(own, statement)
  const listening = await createTenancy({ instances: [{ name: 'a', id: 1 }], datasources: { default: appUrl.toString() } })
  t.teardown(() => listening.close())
  t.same((await ownWatchers()).sort(), ['listen', 'poll'], 'a login that is not a superuser listens to a trigger made for it')
  const ldb = listening.kysely<Loose>()
  await query(own, 'create table later (id int, iid int); insert into later values (1, 1), (2, 2)')
  t.same(await eventually(() => listening.runAsInstance('a', () => ldb.selectFrom('later').select('id').execute()), [{ id: 1 }]), [{ id: 1 }])
})

t.test('close() ends the watching connection, and an open watcher keeps no handle alive', async (t) => {
  const sockets = (): number => process.getActiveResourcesInfo().filter((kind) => kind === 'TCPSocketWrap').length
  const before = sockets()
  const watching = await createTenancy({ instances: [{ name: 'a', id: 1 }], datasources: { default: url } })
  await watching.runAsInstance('a', () => watching.kysely<DB>().selectFrom('note').select('id').execute())
  t.equal((await watchers(url)).length, 1, 'watching')
  t.equal(sockets(), before, 'neither the watching connection nor the idle pool keeps the process alive')
  await watching.close()
  t.same(await eventually(() => watchers(url), []), [], 'the server shows no watching connection after close()')
  t.equal(sockets(), before)
})

t.test('every datasource an instance uses is read; one that cannot be reached fails closed for its instances', async (t) => {
  const isolated = await createDatabase(t, 'table_discovery_iso')
  const shared = await createDatabase(t, 'table_discovery_pair')
  // The tenant table exists only in the isolated databases; a stray row of another instance is there to be filtered out.
  await query(isolated, 'create table grade (id int, iid int not null); insert into grade values (1, 10), (2, 99)')
  await query(shared, 'create table grade (id int, iid int not null); insert into grade values (1, 20), (2, 21); create table score (id int); insert into score values (1), (2)')
  const sockets = new Set<Socket>()
  const blackhole = createServer((socket) => { sockets.add(socket); socket.on('error', () => {}) })
  await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => blackhole.close(resolve))
  })
  const mixed: Tenancy = await createTenancy({
    instances: [
      { name: 'a', id: 1 },
      { name: 'iso', id: 10, isolate: true, isolateClient: 'iso' },
      { name: 'p1', id: 20, isolate: true, isolateClient: 'pair' },
      { name: 'p2', id: 21, isolate: true, isolateClient: 'pair' },
      { name: 'gone', id: 30, isolate: true, isolateClient: 'gone' },
      // Two instances share it: it is watched, and its watching connection never comes up.
      { name: 'gone2', id: 31, isolate: true, isolateClient: 'gone' },
    ],
    datasources: {
      default: url,
      iso: isolated,
      pair: shared,
      gone: { connectionString: `postgres://postgres:postgres@127.0.0.1:${(blackhole.address() as { port: number }).port}/gone`, connectionTimeoutMillis: 300 },
    },
  })
  t.teardown(() => mixed.close())
  const mdb = mixed.kysely<Loose>()
  t.same(mixed.tenantTables!.toJSON()['public.grade'], 'must', 'a table found only in isolated databases')
  t.same(await mixed.runAsInstance('iso', () => mdb.selectFrom('grade').select('id').execute()), [{ id: 1 }], 'is confined there')
  t.same(await mixed.runAsInstance('p2', () => mdb.selectFrom('grade').select('id').execute()), [{ id: 2 }])
  t.equal((await watchers(shared)).length, 1, 'a datasource two instances share is watched')
  t.equal((await watchers(isolated)).length, 0, 'one that holds a single instance is not')

  const compile = (name: string, table: string): string => mixed.runAsInstance(name, () => {
    try { return mdb.selectFrom(table).select('id').compile().sql } catch (err) { return (err as { code: string }).code }
  })
  t.equal(compile('gone', 'setting'), 'TENANCY_UNKNOWN_TABLE', 'an unreachable datasource: tables that are not tenant tables are refused for its instances')
  t.equal(compile('gone2', 'setting'), 'TENANCY_UNKNOWN_TABLE', 'also while its watching connection keeps failing')
  t.equal(compile('gone', 'grade'), 'select "id" from "grade" where "grade"."iid" = $1', 'tenant tables are confined')
  t.equal(compile('a', 'setting'), 'select "id" from "setting"', 'other instances are not affected')

  await query(shared, 'alter table score add column iid int; update score set iid = 19 + id')
  t.same(await eventually(() => mixed.runAsInstance('p1', () => mdb.selectFrom('score').select('id').execute()), [{ id: 1 }]), [{ id: 1 }], 'a change in a shared isolated database is followed')

  const blackholeUrl = `postgres://postgres:postgres@127.0.0.1:${(blackhole.address() as { port: number }).port}/gone`
  await t.rejects(createTenancy({ instances: [{ name: 'a', id: 1 }], datasources: { default: { connectionString: blackholeUrl, connectionTimeoutMillis: 300 } } }),
    { code: 'TENANCY_DATASOURCE_UNAVAILABLE' }, 'the default datasource must be readable')
})

t.test('a superuser whose session cannot write makes no event trigger and reads a fingerprint', async (t) => {
  const own = await createDatabase(t, 'table_watch_read_only')
  await query(own, 'create table item (id int primary key); insert into item values (1), (2)')
  const readOnly = new URL(own)
  readOnly.searchParams.set('options', '-c default_transaction_read_only=on')
  const watching = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: { connectionString: readOnly.toString() } } })
  t.teardown(() => watching.close())
  t.same(await query(own, 'select evtname from pg_event_trigger'), [], 'creating the trigger failed, and was rolled back')
  t.same((await watchers(own)).map((row) => row.mode), ['poll'])
  await query(own, 'alter table item add column iid int; update item set iid = id')
  const wdb = watching.kysely<Loose>()
  t.same(await eventually(() => watching.runAsInstance('a', () => wdb.selectFrom('item').select('id').execute()), [{ id: 1 }]), [{ id: 1 }], 'a new tenant column is seen')
})

t.test('a datasource no instance uses any more is left out of the tables, and one no longer shared is no longer watched', async (t) => {
  const pair = await createDatabase(t, 'table_discovery_leaving')
  await query(pair, 'create table slip (id int, iid int not null); insert into slip values (1, 50), (2, 51)')
  const both = [{ name: 'a', id: 1 }, { name: 'p1', id: 50, isolate: true, isolateClient: 'pair' }, { name: 'p2', id: 51, isolate: true, isolateClient: 'pair' }]
  let registry = new InstanceRegistry(both, ['default', 'pair'])
  const store: InstanceStore = { byName: (name) => registry.byName(name), byId: (id) => registry.byId(id), list: () => registry.list() }
  const leaving = await createTenancy({ instances: store, datasources: { default: url, pair } })
  t.teardown(() => leaving.close())
  t.equal(leaving.tenantTables!.toJSON()['public.slip'], 'must')
  t.equal((await watchers(pair)).length, 1, 'shared by two instances: watched')

  registry = new InstanceRegistry(both.slice(0, 2), ['default', 'pair'])
  await leaving.discoverTables()
  t.same(await eventually(async () => (await watchers(pair)).length, 0), 0, 'one instance left: its watching connection is closed')
  t.equal(leaving.tenantTables!.toJSON()['public.slip'], 'must', 'its tables still count')

  registry = new InstanceRegistry(both.slice(0, 1), ['default', 'pair'])
  await leaving.discoverTables()
  t.equal(leaving.tenantTables!.toJSON()['public.slip'], undefined, 'no instance left on it: its tables are gone')
})

t.test('an instance added to a store later, on a datasource not read yet, is refused until its first query has it read', async (t) => {
  const later = await createDatabase(t, 'table_discovery_late')
  await query(later, 'create table slip (id int); insert into slip values (1)')
  let registry = new InstanceRegistry([{ name: 'a', id: 1 }], ['default', 'late'])
  const store: InstanceStore = { byName: (name) => registry.byName(name), byId: (id) => registry.byId(id), list: () => registry.list() }
  const growing = await createTenancy({ instances: store, datasources: { default: url, late: later }, watchTables: false })
  t.teardown(() => growing.close())
  registry = new InstanceRegistry([{ name: 'a', id: 1 }, { name: 'late', id: 40, isolate: true, isolateClient: 'late' }], ['default', 'late'])
  const gdb = growing.kysely<Loose>()
  const compile = (): string => growing.runAsInstance('late', () => {
    try { return gdb.selectFrom('slip').select('id').compile().sql } catch (err) { return (err as { code: string }).code }
  })
  t.equal(compile(), 'TENANCY_UNKNOWN_TABLE', 'not read yet: refused')
  t.equal(await eventually(async () => compile(), 'select "id" from "slip"'), 'select "id" from "slip"', 'read, then allowed')
  t.same(await growing.runAsInstance('late', () => gdb.selectFrom('slip').select('id').execute()), [{ id: 1 }])
})

t.test('discoverTables(): reads of one datasource run one at a time, and each new set of tables replaces the last at once', async (t) => {
  await query(url, 'create table parcel (id int primary key); insert into parcel values (1), (2)')
  t.teardown(async () => { await query(url, 'drop table if exists parcel') })
  const reading = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: url }, watchTables: false, doctor: false })
  t.teardown(() => reading.close())
  // Without watchTables every read of the catalog takes a pooled connection
  // and gives it back: the log shows whether two reads were ever out at once.
  const pools = reading.pools
  const acquire = pools.acquire.bind(pools)
  const release = pools.release.bind(pools)
  const log: string[] = []
  let reads = 0
  pools.acquire = async (datasource: string, label?: string) => {
    log.push(`take ${datasource}`)
    // Another process gives parcel the tenant column before the second read.
    if (++reads === 2) await query(url, 'alter table parcel add column iid int; update parcel set iid = id')
    return await acquire(datasource, label)
  }
  pools.release = (lease, destroy) => { log.push(`give back ${lease.datasource}`); release(lease, destroy) }
  const sets = await Promise.all([reading.discoverTables(), reading.discoverTables(), reading.discoverTables()])
  t.same(log, ['take default', 'give back default', 'take default', 'give back default', 'take default', 'give back default'], 'three discoveries asked for at once read default one after the other')
  t.same(sets.map((set) => set.toJSON()['public.parcel']), [undefined, 'may', 'may'], 'the first read came before the change, the later ones after it, and no set was changed afterwards')
  t.equal(reading.tenantTables, sets[2], 'the set in use is the last one read, as a whole')
  t.same(await reading.runAsInstance('a', () => reading.kysely<Loose>().selectFrom('parcel').select('id').execute()), [{ id: 1 }], 'parcel is confined')
})

t.test('watchTables, a limit: between a change\'s commit and the end of its discovery the tables are used as they were, so a table that just gained the tenant column is read unfiltered', async (t) => {
  const own = await createDatabase(t, 'table_watch_window')
  await query(own, "create table memo (id int primary key, body text not null); insert into memo values (1, 'memo 1'), (2, 'memo 2')")
  const watching = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: own } })
  t.teardown(() => watching.close())
  t.same((await watchers(own)).map((row) => row.mode), ['listen'], 'the watching connection listens to the event trigger')
  const wdb = watching.kysely<Loose>()
  commitElsewhere(own, 'alter table memo add column iid int; update memo set iid = id; alter table memo alter column iid set not null')
  // Committed, and no callback of this process has run since: the trigger's notification has not been handled.
  const compiled = watching.runAsInstance('a', () => wdb.selectFrom('memo').select('id').orderBy('id').compile())
  t.equal(compiled.sql, 'select "id" from "memo" order by "id"', 'a query compiled after the commit has no tenant predicate')
  t.same((await watching.runAsInstance('a', () => wdb.executeQuery(compiled))).rows, [{ id: 1 }, { id: 2 }], 'and instance a reads instance b\'s row')
  const ids = async (): Promise<unknown> => await watching.runAsInstance('a', () => wdb.selectFrom('memo').select('id').orderBy('id').execute())
  t.same(await eventually(ids, [{ id: 1 }]), [{ id: 1 }], 'once the change is discovered, memo is confined')
})

t.test('watchTables, a limit: DDL that fires no event trigger is not seen by a listening connection', async (t) => {
  const own = await createDatabase(t, 'table_watch_unfired')
  await query(own, 'create table slip (id int); create table bill (id int); create table form (id int); create table card (id int)')
  const watching = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: own } })
  t.teardown(() => watching.close())
  t.same(await query(own, 'select evtname, evtevent, evtenabled from pg_event_trigger'), [{ evtname: 'tenancy_catalog', evtevent: 'ddl_command_end', evtenabled: 'O' }], 'the trigger the tenancy made')
  t.same((await watchers(own)).map((row) => row.mode), ['listen'])
  // A connection listening on the trigger's channel as the watching one does.
  // A second channel marks the end of each step: notifications arrive in
  // commit order, so one of the step's own would come before its mark.
  const listening = new pg.Client({ connectionString: own })
  await listening.connect()
  t.teardown(() => listening.end())
  const heard: string[] = []
  listening.on('notification', (message) => { heard.push(`${message.channel}: ${message.payload ?? ''}`) })
  await listening.query('listen tenancy_catalog; listen step_done')
  const step = async (label: string, statements: string): Promise<string[]> => {
    const from = heard.length
    await query(own, statements)
    await query(own, 'select pg_notify($1, $2)', ['step_done', label])
    await eventually(async () => heard.at(-1), `step_done: ${label}`)
    return heard.slice(from)
  }
  t.same(await step('replica', 'set session_replication_role = replica; alter table slip add column iid int'), ['step_done: replica'], 'with session_replication_role = replica: nothing on the trigger\'s channel')
  t.same(await step('setting off', 'set event_triggers = off; alter table bill add column iid int'), ['step_done: setting off'], 'with the event_triggers setting off: nothing')
  t.same(await step('disabled', 'alter event trigger tenancy_catalog disable; alter table form add column iid int'), ['step_done: disabled'], 'with the trigger disabled: nothing')
  await query(own, 'alter event trigger tenancy_catalog enable')
  t.same(await step('ordinary', 'alter table card add column iid int'), ['tenancy_catalog: ALTER TABLE', 'step_done: ordinary'], 'the same DDL otherwise is notified')
})
