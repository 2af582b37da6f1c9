// The tenant filter on writes: INSERT fills iid and refuses another
// instance's, UPDATE / DELETE (also with FROM / USING) touch only the current
// instance's rows, ON CONFLICT DO UPDATE never updates another instance's row.
import t from 'tap'
import { sql } from 'kysely'
import { createTenancy, InstanceFilterPlugin, type InstanceInsertable } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'tenant_filter_writes')
await createTenantSchema(url)
const tenancy = await createTenancy({
  instances: schemaInstances,
  datasources: { default: url },
  tables: { student: 'must', course: 'must', role: 'may', tag: 'must' },
  strict: true,
})
t.teardown(() => tenancy.close())
const db = tenancy.kysely<TenantDB>()

/** Every row of `table`, for comparing what other instances hold before and after. */
async function snapshot (table: string, except?: number): Promise<unknown[]> {
  return await query(url, `select * from ${table} where iid is distinct from $1 order by iid nulls first, id`, [except ?? -1])
}

t.test('INSERT fills iid on every row, refuses another instance', async (t) => {
  const others = await snapshot('student', 2)
  await tenancy.runAsInstance(2, async () => {
    const row: InstanceInsertable<TenantDB['student']> = { id: 10, name: 'ten', course_id: null }
    const compiled = db.insertInto('student').values([row, { id: 11, name: 'eleven', course_id: 1 }]).compile()
    t.equal(compiled.sql, 'insert into "student" ("id", "name", "course_id", "iid") values ($1, $2, $3, $4), ($5, $6, $7, $8)')
    await db.insertInto('student').values([row, { id: 11, name: 'eleven', course_id: 1 }]).execute()
    await db.insertInto('student').values({ id: 12, name: 'twelve', iid: 2, course_id: null }).execute()
    t.throws(() => db.insertInto('student').values({ id: 13, name: 'x', iid: 3, course_id: null }).compile(), { code: 'TENANCY_MISMATCH' })
    await t.rejects(db.insertInto('student').values([{ id: 14, name: 'y', course_id: null }, { id: 15, name: 'z', iid: 1, course_id: null }]).execute(), { code: 'TENANCY_MISMATCH' })
    await t.rejects(db.insertInto('student').values({ id: 16, name: 'w', iid: sql<number>`1`, course_id: null }).execute(), { code: 'TENANCY_MISMATCH' })
    // INSERT … SELECT: the source is confined and iid filled.
    await db.insertInto('student').columns(['id', 'name']).expression(db.selectFrom('course').select([sql<number>`id + 100`.as('id'), 'title'])).execute()
    await t.rejects(async () => await db.insertInto('student').columns(['id', 'name', 'iid']).expression(db.selectFrom('course').select(['id', 'title', 'iid'])).execute(), { code: 'TENANCY_MISMATCH' })
  })
  t.same(await query(url, 'select id, iid from student where id >= 10 order by id'), [
    { id: 10, iid: 2 }, { id: 11, iid: 2 }, { id: 12, iid: 2 }, { id: 101, iid: 2 }, { id: 102, iid: 2 }, { id: 103, iid: 2 },
  ])
  t.same(await snapshot('student', 2), others, 'other instances untouched')
  await tenancy.runAsHost(async () => {
    await db.insertInto('role').values({ id: 9, name: 'host nine' }).execute()
    await t.rejects(db.insertInto('role').values({ id: 9, iid: 1, name: 'x' }).execute(), { code: 'TENANCY_MISMATCH' })
    await t.rejects(db.insertInto('student').values({ id: 9, name: 'x', course_id: null }).execute(), { code: 'TENANCY_HOST_CONTEXT' })
  })
  t.same(await query(url, 'select iid from role where id = 9'), [{ iid: null }])
})

t.test('UPDATE … FROM and DELETE … USING touch only the current instance', async (t) => {
  const others = await snapshot('student', 1)
  const courses = await snapshot('course')
  await tenancy.runAsInstance(1, async () => {
    const update = db.updateTable('student as s').from('course as c').set({ name: sql`c.title` }).whereRef('c.id', '=', 's.course_id').returning(['s.id', 's.iid'])
    t.equal(update.compile().sql, 'update "student" as "s" set "name" = c.title from "course" as "c" where ("c"."id" = "s"."course_id") and "s"."iid" = $1 and "c"."iid" = $2 returning "s"."id", "s"."iid"')
    const updated = await update.execute()
    t.same(updated.map((r) => r.iid), [1, 1, 1])
    t.throws(() => db.updateTable('student').set({ iid: 2 }).compile(), { code: 'TENANCY_MISMATCH' }, 'cannot move rows to another instance')
    await db.updateTable('student').set({ iid: 1 }).where('id', '=', 1).execute()
    const deleted = await db.deleteFrom('student').using('course').whereRef('course.id', '=', 'student.course_id').where('course.id', '=', 2).returning('student.id').execute()
    t.same(deleted, [{ id: 1 }])
    t.same(await db.deleteFrom('tag').where('id', 'in', [1, 4, 7]).returning('id').execute(), [{ id: 1 }], 'only instance 1 tag 1')
  })
  t.same(await snapshot('student', 1), others, 'other instances untouched')
  t.same(await snapshot('course'), courses)
  t.same(await query(url, 'select id from tag where id in (1, 4, 7) order by id'), [{ id: 4 }, { id: 7 }])
})

t.test('ON CONFLICT DO UPDATE never updates another instance row on a colliding key', async (t) => {
  await tenancy.runAsInstance(3, async () => {
    const upsert = db.insertInto('tag').values({ id: 4, label: 'stolen' }).onConflict((oc) => oc.column('id').doUpdateSet({ label: (eb) => eb.ref('excluded.label') }))
    t.equal(upsert.compile().sql, 'insert into "tag" ("id", "label", "iid") values ($1, $2, $3) on conflict ("id") do update set "label" = "excluded"."label" where "tag"."iid" = $4')
    const result = await upsert.executeTakeFirst()
    t.equal(Number(result.numInsertedOrUpdatedRows), 0, 'instance 2 row not updated')
    const mine = await db.insertInto('tag').values({ id: 7, label: 'mine' }).onConflict((oc) => oc.column('id').doUpdateSet({ label: 'mine' })).returning(['id', 'iid', 'label']).execute()
    t.same(mine, [{ id: 7, iid: 3, label: 'mine' }])
    t.throws(() => db.insertInto('tag').values({ id: 8, label: 'x' }).onConflict((oc) => oc.column('id').doUpdateSet({ iid: 1 })).compile(), { code: 'TENANCY_MISMATCH' })
  })
  t.same(await query(url, 'select iid, label from tag where id = 4'), [{ iid: 2, label: 'tag 1 of 2' }])
})

t.test('strict: raw statements naming a tenant table are refused outside unscoped (real parser)', async (t) => {
  await tenancy.runAsInstance(1, async () => {
    await t.rejects(sql`select * from student`.execute(db), { code: 'TENANCY_RAW_SQL' })
    await t.rejects(sql`select 1 from country, "public"."student" s`.execute(db), { code: 'TENANCY_RAW_SQL' })
    await t.rejects(sql`with x as (select 1) delete from /* c */ "role" where id = ${1}`.execute(db), { code: 'TENANCY_RAW_SQL' })
    await t.rejects(sql`select * from ${sql.table('tag')}`.execute(db), { code: 'TENANCY_RAW_SQL' })
    t.same((await sql<{ n: number }>`select count(*)::int as n from country where name <> 'student'`.execute(db)).rows, [{ n: 2 }], 'a table name in a string is not a table')
    await tenancy.unscoped(async () => {
      t.same((await sql<{ n: number }>`select count(*)::int as n from student where iid = ${3}`.execute(db)).rows, [{ n: 4 }])
    })
  })
})

t.test('the plugin works on its own with any Kysely', async (t) => {
  const plugin = new InstanceFilterPlugin({ tables: { student: 'must' } })
  const own = db.withoutPlugins().withPlugin(plugin)
  await tenancy.runAsInstance(3, async () => {
    t.same(await own.selectFrom('student').select('iid').distinct().execute(), [{ iid: 3 }])
  })
  t.throws(() => new InstanceFilterPlugin({ tables: { student: 'always' as 'must' } }), { code: 'TENANCY_INVALID_OPTIONS' })
  t.throws(() => new InstanceFilterPlugin(null as never), { code: 'TENANCY_INVALID_OPTIONS', message: /needs an options object/ })
  t.throws(() => new InstanceFilterPlugin({ tables: { student: 'must' }, context: 'host' as never }), { code: 'TENANCY_INVALID_OPTIONS', message: /context must be a function/ })
  await t.rejects(createTenancy({ instances: [], datasources: { default: url }, strict: 'yes' as unknown as boolean }), { code: 'TENANCY_INVALID_OPTIONS' })
})
