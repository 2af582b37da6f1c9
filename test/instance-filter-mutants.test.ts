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
// An array column: with one, a SET list hidden in a raw target is valid SQL.
await query(url, `create table badge (id int not null, iid int not null, name text not null, tags text[] not null, primary key (iid, id));
  insert into badge select 1, i, 'badge of ' || i, array['t'] from generate_series(1, 4) i`)
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

t.test('SET through raw text: a SET list before a subscript is refused; subscripts after a plain name are read as that name', async (t) => {
  await tenancy.runAsInstance('b', async () => {
    // `name='moved',iid=4,tags[1] = $1`: three assignments, the second moving the row to instance 4.
    const move = anyDb.updateTable('badge').set(sql`name='moved',iid=4,tags[1]`, 'x').where('id', '=', 1)
    t.throws(() => move.compile(), { code: 'TENANCY_MISMATCH', message: /given as RawNode that cannot be told apart from iid/ })
    await t.rejects(move.execute(), { code: 'TENANCY_MISMATCH' }, 'refused before it is sent')
    for (const [target, value] of [['tags[1]', 'a'], ['tags [2]', 'b'], ['tags[10]', 'c']] as const) {
      const update = anyDb.updateTable('badge').set(sql.raw(target), value).where('id', '=', 1)
      t.equal(update.compile().sql, `update "badge" set ${target} = $1 where ("id" = $2) and "badge"."iid" = $3`, target)
      t.equal(Number((await update.executeTakeFirst()).numUpdatedRows), 1, `${target}: one row of b`)
    }
    t.doesNotThrow(() => anyDb.updateTable('badge').set(sql`tags[1][1]`, 'x').compile(), 'several subscripts')
    t.throws(() => anyDb.updateTable('badge').set(sql`iid[1]`, 3).compile(), { code: 'TENANCY_MISMATCH', message: /to another instance/ }, 'a subscript of the tenant column is the tenant column')
    // PostgreSQL reads `"i""id"` as the column i"id, not iid (it has no such column, so the statement would fail there).
    t.doesNotThrow(() => anyDb.updateTable('badge').set(sql`"i""id"`, 3).compile(), 'a doubled quote inside a quoted name is one quote')
  })
  const rows = await query<{ iid: number, name: string, tags: string[] }>(url, 'select iid, name, tags from badge order by iid')
  t.same(rows.map((row) => [row.iid, row.name]), [[1, 'badge of 1'], [2, 'badge of 2'], [3, 'badge of 3'], [4, 'badge of 4']], 'no row moved or renamed')
  t.same(rows[1]!.tags.slice(0, 2), ['a', 'b'], 'b\'s row got its subscripted writes')
  t.same(rows.filter((row) => row.iid !== 2).map((row) => row.tags), [['t'], ['t'], ['t']], 'the others\' rows are untouched')
})

t.test('a CTE named like a tenant table is the CTE also in a subquery of the statement that holds it', async (t) => {
  await tenancy.runAsInstance('b', async () => {
    // Kysely transforms the FROM and WHERE before the WITH: the names must be known from the start.
    const select = anyDb.with('student', (db) => db.selectFrom('course').select('id').where('id', '<', 3))
      .selectFrom('course').select('title').where('id', 'in', (eb: any) => eb.selectFrom('student').select('id')).orderBy('id')
    t.equal(select.compile().sql, 'with "student" as (select "id" from "course" where ("id" < $1) and "course"."iid" = $2) select "title" from "course" where ("id" in (select "id" from "student")) and "course"."iid" = $3 order by "id"')
    t.same(await select.execute(), await query(url, 'select title from course where iid = 2 and id < 3 order by id'))
  })
})

t.test('a limit: a raw fragment as a FROM item is not read, so the table it names is not confined (strict refuses it)', async (t) => {
  await tenancy.runAsInstance('b', async () => {
    const select = anyDb.selectFrom(sql`course` as never).select('title' as never).orderBy('title' as never)
    t.equal(select.compile().sql, 'select "title" from course order by "title"', 'sent as written, no predicate')
    t.same(await select.execute(), await query(url, 'select title from course order by title'), 'every instance\'s courses')
  })
})
