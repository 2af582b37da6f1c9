// Tenant tables discovered from the catalog: a table created after discovery
// is refused until the tables are discovered again, never run unfiltered.
import t from 'tap'
import { sql, type Generated } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'

interface DB {
  note: { id: number, iid: Generated<number>, body: string }
  lesson: { id: number, iid: Generated<number>, title: string }
  setting: { key: string, value: string }
}

const url = await createDatabase(t, 'table_discovery')
await query(url, `
  create table note (id int not null, iid int not null, body text not null, primary key (iid, id));
  insert into note values (1, 1, 'note of 1'), (1, 2, 'note of 2');
  create table setting (key text primary key, value text not null);
  insert into setting values ('colour', 'blue');`)
const tenancy = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }], datasources: { default: url } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<DB>()

t.test('tables with and without the tenant column, as discovered', async (t) => {
  t.same(tenancy.tenantTables?.toJSON(), { 'public.note': 'must' })
  t.same(await tenancy.runAsInstance('b', () => db.selectFrom('note').select('body').execute()), [{ body: 'note of 2' }])
  t.same(await tenancy.runAsInstance('b', () => db.selectFrom('setting').select('value').execute()), [{ value: 'blue' }], 'a table without iid is not filtered')
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
})

t.test('strict: a raw statement allowed before a table was discovered is refused after', async (t) => {
  const strict = await createTenancy({ instances: [{ name: 'a', id: 1 }], datasources: { default: url }, strict: true })
  t.teardown(() => strict.close())
  await query(url, 'create table lecture (id int not null, iid int not null)')
  const raw = () => strict.runAsInstance('a', () => sql`select count(*) from lecture`.execute(strict.kysely()))
  t.ok(await raw(), 'not a tenant table yet, as far as the tenancy knows')
  await strict.discoverTables()
  await t.rejects(raw(), { code: 'TENANCY_RAW_SQL' }, 'the remembered verdict is not reused')
})
