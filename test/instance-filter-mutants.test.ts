// Behaviours of the tenant filter that no other test guarded: each test here
// fails with a one-line change of lib/filter/instance-filter-transformer.ts
// that the rest of the filter's tests let through (MUTATION.md, group
// `filter`). The exact SQL of the rewrite, then the statement on PostgreSQL.
// Instances a–d are 1–4; their rows share primary keys.
import t from 'tap'
import { sql, type Kysely } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'tenant_filter_mutants')
await createTenantSchema(url)
const tenancy = await createTenancy({ instances: schemaInstances, datasources: { default: url } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<TenantDB>()
// For shapes the table types do not allow (raw SET targets, schema-qualified names).
const anyDb = db as unknown as Kysely<any>


t.test('RIGHT and FULL joins: the user\'s WHERE is kept as it is beside the confined derived tables', async (t) => {
  await tenancy.runAsInstance('b', async () => {
    const select = db.selectFrom('student as s').rightJoin('course as c', 'c.id', 's.course_id').select(['s.id', 'c.id as cid']).where('c.id', '<', 3).orderBy('c.id')
    t.equal(select.compile().sql, 'select "s"."id", "c"."id" as "cid" from (select * from "student" where "student"."iid" = $1) as "s" right join (select * from "course" where "course"."iid" = $2) as "c" on "c"."id" = "s"."course_id" where "c"."id" < $3 order by "c"."id"')
    t.same(await select.execute(), [{ id: 3, cid: 1 }, { id: 1, cid: 2 }])
  })
})

t.test('SET through raw text: a plain name with spaces after it is read, anything else after the name is refused', async (t) => {
  await tenancy.runAsInstance('b', async () => {
    const spaced = anyDb.updateTable('student').set(sql`name \n`, 'renamed').where('id', '=', 1).returning(['id', 'iid', 'name'])
    t.equal(spaced.compile().sql, 'update "student" set name \n = $1 where ("id" = $2) and "student"."iid" = $3 returning "id", "iid", "name"')
    t.same(await spaced.execute(), [{ id: 1, iid: 2, name: 'renamed' }])
    t.throws(() => anyDb.updateTable('student').set(sql`iid \t`, 3).compile(), { code: 'TENANCY_MISMATCH', message: /to another instance/ })
    // A cast after the name is no SET target PostgreSQL reads: refused before it is sent.
    t.throws(() => anyDb.updateTable('student').set(sql`name::text`, 'x').compile(), { code: 'TENANCY_MISMATCH', message: /given as RawNode that cannot be told apart from iid/ })
    // `set('iid.name', …)` is column iid, field name, for PostgreSQL.
    t.throws(() => anyDb.updateTable('student').set('iid.name', 3 as never).compile(), { code: 'TENANCY_MISMATCH', message: /to another instance/ })
  })
  t.same(await query(url, 'select id, iid, name from student where id = 1 order by iid'), [
    { id: 1, iid: 1, name: 'student 1 of 1' }, { id: 1, iid: 2, name: 'renamed' }, { id: 1, iid: 3, name: 'student 1 of 3' },
  ], 'only instance 2\'s row changed, and stayed in instance 2')
})
