// Row-level security under the `rls` option, as an ordinary application role
// (superusers bypass RLS): raw SQL, which the rewrite cannot see, is still
// confined; host context sees host rows of may tables; no context sees nothing;
// a connection never carries a stale instance to the next checkout.
import t from 'tap'
import { sql } from 'kysely'
import { randomBytes } from 'node:crypto'
import { createTenancy, discoverTenantTables, rowLevelSecurityStatements } from '../lib/index.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'row_level_security')
await createTenantSchema(url)
const role = `tenancy_app_${randomBytes(4).toString('hex')}`
const password = randomBytes(12).toString('hex')
await adminQuery(`create role ${role} login password '${password}' nosuperuser nobypassrls`)
t.teardown(async () => { await adminQuery(`drop role if exists ${role}`) })
await query(url, `grant select, insert, update, delete on all tables in schema public to ${role}`)
for (const statement of rowLevelSecurityStatements({ student: 'must', course: 'must', role: 'may', tag: 'must' })) await query(url, statement)

const appUrl = new URL(url)
appUrl.username = role
appUrl.password = password
const tenancy = await createTenancy({
  instances: schemaInstances,
  datasources: { default: appUrl.toString() },
  pool: { max: 1 },
  rls: true,
})
t.teardown(async () => { await tenancy.close(); await adminQuery(`drop owned by ${role}`, url).catch(() => {}) })
const db = tenancy.kysely<TenantDB>()

t.test('the policies exist, enabled and forced', async (t) => {
  const rows = await query(url, "select relname, relrowsecurity, relforcerowsecurity from pg_class where relname in ('student', 'course', 'role', 'tag') order by relname")
  t.same(rows.map((r) => [r.relname, r.relrowsecurity, r.relforcerowsecurity]), [['course', true, true], ['role', true, true], ['student', true, true], ['tag', true, true]])
})

t.test('raw SQL is confined to the instance by the policies', async (t) => {
  for (const id of [1, 2, 3]) {
    await tenancy.runAsInstance(id, async () => {
      const { rows } = await sql<{ iid: number }>`select distinct iid from student`.execute(db)
      t.same(rows, [{ iid: id }], `instance ${id} sees only its students`)
      const roles = await sql<{ iid: number }>`select iid from role order by id`.execute(db)
      t.same(roles.rows, [{ iid: id }, { iid: id }], 'and only its roles, no host rows')
      const updated = await sql`update student set name = name || '!'`.execute(db)
      t.equal(Number(updated.numAffectedRows), 4, 'an unfiltered raw update changes only its own rows')
      await t.rejects(sql`insert into student (id, iid, name) values (50, ${id === 1 ? 2 : 1}, 'intruder')`.execute(db), /row-level security/, 'cannot write another instance')
    })
  }
  t.same(await query(url, "select iid, count(*)::int as n from student where name like '%!' group by iid order by iid"), [{ iid: 1, n: 4 }, { iid: 2, n: 4 }, { iid: 3, n: 4 }])
})

t.test('host, no context and unscoped', async (t) => {
  await tenancy.runAsHost(async () => {
    t.same((await sql<{ name: string }>`select name from role order by id`.execute(db)).rows, [{ name: 'host role 1' }, { name: 'host role 2' }])
    t.same((await sql`select * from student`.execute(db)).rows, [], 'must tables show nothing in host context')
  })
  t.same((await sql`select * from student`.execute(db)).rows, [], 'no context: nothing')
  t.same((await sql`select * from role`.execute(db)).rows, [])
  await tenancy.unscoped(async () => {
    t.equal((await sql`select * from student`.execute(db)).rows.length, 12, 'unscoped: everything')
    const all = await query<{ n: number }>(url, 'select count(*)::int as n from role')
    t.equal((await sql`select * from role`.execute(db)).rows.length, all[0]!.n, 'and a may table\'s host rows too')
  })
})

t.test('the policy gives PostgreSQL an index condition on iid, also for raw SQL without it', async (t) => {
  // Sequential scans off: the tables are too small for the planner to want an index otherwise.
  const plan = async (text: string): Promise<string> => await tenancy.runAsInstance(2, async () => await db.transaction().execute(async (trx) => {
    await sql`set local enable_seqscan = off`.execute(trx)
    const { rows } = await sql.raw<{ 'QUERY PLAN': string }>(`explain (costs off) ${text}`).execute(trx)
    return rows.map((row) => row['QUERY PLAN']).join('\n')
  }))
  const point = await plan('select name from student where id = 1')
  t.match(point, /Index Cond: \(\(iid >= \(InitPlan 1\)\.col1\) AND \(iid <= \(InitPlan 2\)\.col1\) AND \(id = 1\)\)/, 'both bounds and the key are index conditions')
  t.notMatch(point, /Filter:/, 'nothing is left to filter row by row')
  t.match((await tenancy.runAsInstance(2, async () => await sql<{ name: string }>`select name from student where id = 1`.execute(db))).rows, [{ name: /^student 1 of 2/ }], 'and it finds the row')
})

t.test('the one pooled connection never keeps a stale instance', async (t) => {
  await tenancy.runAsInstance(2, async () => { await sql`select 1`.execute(db) })
  const setting = async (): Promise<string> => (await sql<{ v: string }>`select current_setting('tenancy.iid', true) as v`.execute(db)).rows[0]!.v
  t.equal(await setting(), '', 'no context after instance 2: cleared')
  t.equal(await tenancy.runAsInstance(3, setting), '3')
  t.equal(await tenancy.runAsHost(setting), 'host')
  t.same((await sql`select * from student`.execute(db)).rows, [])
  await tenancy.runAsInstance(1, async () => {
    await db.transaction().execute(async (trx) => {
      t.same((await trx.selectFrom('student').select('iid').distinct().execute()), [{ iid: 1 }], 'plugin and policy together')
    })
  })
})

t.test('views: security_invoker instead of policies, so that a view owned by a superuser does not bypass them', async (t) => {
  await query(url, `create view student_names as select id, iid, name from student;
    create materialized view student_copy as select id, iid, name from student;
    grant select on student_names, student_copy to ${role}`)
  const count = async (): Promise<number> => (await sql<{ n: number }>`select count(*)::int as n from student_names`.execute(db)).rows[0]!.n
  t.equal(await tenancy.runAsInstance(1, count), 12, 'the view reads the table with its owner\'s rights: every instance\'s rows')
  const statements = rowLevelSecurityStatements({ student_names: { kind: 'must', relation: 'view' }, student_copy: { kind: 'must', relation: 'materialized view' } })
  t.same(statements, ['alter view "student_names" set (security_invoker = true)'], 'a view gets security_invoker; a materialized view cannot be made safe and gets nothing')
  for (const statement of statements) await query(url, statement)
  t.equal(await tenancy.runAsInstance(1, count), 4, 'the policies of the table now bind whoever queries the view')
  t.equal(await tenancy.runAsInstance(3, count), 4)
  t.equal(await count(), 0, 'no context: nothing')
  await tenancy.unscoped(async () => { t.equal(await count(), 12) })

  const discovered = await discoverTenantTables({ query: async (text, values) => ({ rows: await query(url, text, values) }) })
  t.same(discovered.toJSON()['public.student_names'], { kind: 'may', relation: 'view' }, 'discovery tells views apart')
  const fromDiscovery = rowLevelSecurityStatements(discovered)
  t.ok(fromDiscovery.includes('alter view "public"."student_names" set (security_invoker = true)'))
  t.notOk(fromDiscovery.some((statement) => statement.includes('student_names') && statement.startsWith('alter table')), 'no table statement for a view (they fail on views)')
  t.notOk(fromDiscovery.some((statement) => statement.includes('student_copy')))
  t.throws(() => rowLevelSecurityStatements({ v: { kind: 'must', relation: 'index' as 'view' } }), { code: 'TENANCY_INVALID_OPTIONS' })
})

t.test('rls with settings of its own: both are set, and the policy\'s setting cannot be overridden', async (t) => {
  const both = await createTenancy({
    instances: schemaInstances,
    datasources: { default: appUrl.toString() },
    pool: { max: 1 },
    rls: true,
    settings: (context) => ({ 'app.who': context?.instance?.name ?? '', 'tenancy.iid': '*' }),
    doctor: false,
  })
  t.teardown(() => both.close())
  const bothDb = both.kysely<TenantDB>()
  const read = (): Promise<Array<{ who: string, iid: string, n: number }>> => sql<{ who: string, iid: string, n: number }>`select current_setting('app.who') as who, current_setting('tenancy.iid') as iid, (select count(*)::int from student) as n`.execute(bothDb).then((result) => result.rows)
  t.same(await both.runAsInstance('b', read), [{ who: 'b', iid: '2', n: 4 }], 'the application\'s setting, and the instance\'s rows only')
  t.same(await both.runAsInstance('c', read), [{ who: 'c', iid: '3', n: 4 }])
})
