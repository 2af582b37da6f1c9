// The tenant filter on reads: the exact SQL of each query shape, then the
// same query on PostgreSQL, compared with the hand-written `where iid = …`
// query, for three instances whose rows share primary keys.
import t from 'tap'
import { sql, type Compilable } from 'kysely'
import { createTenancy, type Tenancy } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'tenant_filter_reads')
await createTenantSchema(url)
const tenancy: Tenancy = await createTenancy({ instances: schemaInstances, datasources: { default: url } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<TenantDB>()

t.test('tables are discovered from the catalog: NOT NULL ⇒ must, nullable ⇒ may', async (t) => {
  t.same(tenancy.tenantTables?.toJSON(), { 'public.course': 'must', 'public.student': 'must', 'public.role': 'may', 'public.tag': 'must' })
})

type Case = [name: string, build: () => Compilable & { execute: () => Promise<unknown[]> }, sql: string, params: unknown[], handWritten: string]

// The id placeholders: each case is checked under instances 1, 2 and 3.
const I = '§'
const cases: Case[] = [
  ['from', () => db.selectFrom('student').select(['id', 'name']).orderBy('id'),
    'select "id", "name" from "student" where "student"."iid" = $1 order by "id"', [I],
    'select id, name from student where iid = § order by id'],
  ['alias and an OR kept in parentheses', () => db.selectFrom('student as s').select('s.id').where((eb) => eb.or([eb('s.id', '=', 1), eb('s.id', '=', 3)])).orderBy('s.id'),
    'select "s"."id" from "student" as "s" where ("s"."id" = $1 or "s"."id" = $2) and "s"."iid" = $3 order by "s"."id"', [1, 3, I],
    'select id from student s where (s.id = 1 or s.id = 3) and s.iid = § order by id'],
  ['inner join', () => db.selectFrom('student as s').innerJoin('course as c', 'c.id', 's.course_id').select(['s.id', 'c.title']).orderBy('s.id'),
    'select "s"."id", "c"."title" from "student" as "s" inner join "course" as "c" on ("c"."id" = "s"."course_id") and "c"."iid" = $1 where "s"."iid" = $2 order by "s"."id"', [I, I],
    'select s.id, c.title from student s join course c on c.id = s.course_id and c.iid = § where s.iid = § order by s.id'],
  ['left join keeps unmatched rows', () => db.selectFrom('student as s').leftJoin('course as c', 'c.id', 's.course_id').select(['s.id', 'c.title']).orderBy('s.id'),
    'select "s"."id", "c"."title" from "student" as "s" left join "course" as "c" on ("c"."id" = "s"."course_id") and "c"."iid" = $1 where "s"."iid" = $2 order by "s"."id"', [I, I],
    'select s.id, c.title from (select * from student where iid = §) s left join (select * from course where iid = §) c on c.id = s.course_id order by s.id'],
  ['right join: derived tables', () => db.selectFrom('student as s').rightJoin('course as c', 'c.id', 's.course_id').select(['s.id', 'c.id as cid']).orderBy('c.id').orderBy('s.id'),
    'select "s"."id", "c"."id" as "cid" from (select * from "student" where "student"."iid" = $1) as "s" right join (select * from "course" where "course"."iid" = $2) as "c" on "c"."id" = "s"."course_id" order by "c"."id", "s"."id"', [I, I],
    'select s.id, c.id as cid from (select * from student where iid = §) s right join (select * from course where iid = §) c on c.id = s.course_id order by c.id, s.id'],
  ['full join', () => db.selectFrom('student as s').fullJoin('course as c', 'c.id', 's.id').select(['s.id', 'c.id as cid']).orderBy('c.id').orderBy('s.id'),
    'select "s"."id", "c"."id" as "cid" from (select * from "student" where "student"."iid" = $1) as "s" full join (select * from "course" where "course"."iid" = $2) as "c" on "c"."id" = "s"."id" order by "c"."id", "s"."id"', [I, I],
    'select s.id, c.id as cid from (select * from student where iid = §) s full join (select * from course where iid = §) c on c.id = s.id order by c.id, s.id'],
  ['comma join and cross join', () => db.selectFrom(['student', 'course']).crossJoin('role').select(({ fn }) => fn.countAll<string>().as('n')),
    'select count(*) as "n" from "student", "course" inner join "role" on "role"."iid" = $1 where "student"."iid" = $2 and "course"."iid" = $3', [I, I, I],
    'select count(*) as n from student, course, role where student.iid = § and course.iid = § and role.iid = §'],
  ['subquery in WHERE (IN), built as a builder', () => db.selectFrom('student').select('id').where('course_id', 'in', db.selectFrom('course').select('id').where('id', '<', 3)).orderBy('id'),
    'select "id" from "student" where ("course_id" in (select "id" from "course" where ("id" < $1) and "course"."iid" = $2)) and "student"."iid" = $3 order by "id"', [3, I, I],
    'select id from student where course_id in (select id from course where id < 3 and iid = §) and iid = § order by id'],
  ['EXISTS and a SELECT subquery', () => db.selectFrom('course as c').select((eb) => ['c.id', eb.selectFrom('student as s').select(eb.fn.countAll().as('n')).whereRef('s.course_id', '=', 'c.id').as('n')])
    .where((eb) => eb.exists(eb.selectFrom('student as s2').select('s2.id').whereRef('s2.course_id', '=', 'c.id'))).orderBy('c.id'),
  'select "c"."id", (select count(*) as "n" from "student" as "s" where ("s"."course_id" = "c"."id") and "s"."iid" = $1) as "n" from "course" as "c" where (exists (select "s2"."id" from "student" as "s2" where ("s2"."course_id" = "c"."id") and "s2"."iid" = $2)) and "c"."iid" = $3 order by "c"."id"', [I, I, I],
  'select c.id, (select count(*) from student s where s.course_id = c.id and s.iid = §) as n from course c where exists (select 1 from student s2 where s2.course_id = c.id and s2.iid = §) and c.iid = § order by c.id'],
  ['HAVING subquery', () => db.selectFrom('student').select('course_id').groupBy('course_id').having((eb) => eb(eb.fn.countAll(), '>=', eb.selectFrom('course').select(eb.fn.count('id').as('n')).where('id', '=', 99))).orderBy('course_id'),
    'select "course_id" from "student" where "student"."iid" = $1 group by "course_id" having count(*) >= (select count("id") as "n" from "course" where ("id" = $2) and "course"."iid" = $3) order by "course_id"', [I, 99, I],
    'select course_id from student where iid = § group by course_id having count(*) >= (select count(id) from course where id = 99 and iid = §) order by course_id'],
  ['subquery in FROM', () => db.selectFrom((eb) => eb.selectFrom('student').select(['id', 'name']).as('x')).select('x.id').orderBy('x.id'),
    'select "x"."id" from (select "id", "name" from "student" where "student"."iid" = $1) as "x" order by "x"."id"', [I],
    'select id from student where iid = § order by id'],
  ['CTE shadowing a tenant table name', () => db.with('student', (q) => q.selectFrom('student').select('id').where('id', '<=', 2)).selectFrom('student').select('id').orderBy('id'),
    'with "student" as (select "id" from "student" where ("id" <= $1) and "student"."iid" = $2) select "id" from "student" order by "id"', [2, I],
    'select id from student where id <= 2 and iid = § order by id'],
  ['recursive CTE', () => db.withRecursive('r(id, n)', (q) => q.selectFrom('course').select(['id', sql<number>`1`.as('n')]).where('id', '=', 1)
    .unionAll((q2) => q2.selectFrom('r').innerJoin('course', 'course.id', sql`r.id + 1` as never).select(['course.id', sql<number>`r.n + 1`.as('n')]))).selectFrom('r').selectAll().orderBy('id'),
  'with recursive "r"("id", "n") as (select "id", 1 as "n" from "course" where ("id" = $1) and "course"."iid" = $2 union all select "course"."id", r.n + 1 as "n" from "r" inner join "course" on ("course"."id" = r.id + 1) and "course"."iid" = $3) select * from "r" order by "id"', [1, I, I],
  'with recursive r(id, n) as (select id, 1 from course where id = 1 and iid = § union all select course.id, r.n + 1 from r join course on course.id = r.id + 1 and course.iid = §) select * from r order by id'],
  ['UNION / INTERSECT / EXCEPT branches', () => db.selectFrom('student').select('id').union(db.selectFrom('course').select('id')).except(db.selectFrom('tag').select('id')).intersect(db.selectFrom('role').select('id')).orderBy('id'),
    'select "id" from "student" where "student"."iid" = $1 union select "id" from "course" where "course"."iid" = $2 except select "id" from "tag" where "tag"."iid" = $3 intersect select "id" from "role" where "role"."iid" = $4 order by "id"', [I, I, I, I],
    'select id from student where iid = § union select id from course where iid = § except select id from tag where iid = § intersect select id from role where iid = § order by id'],
  ['withSchema', () => db.withSchema('public').selectFrom('student as s').select('s.id').orderBy('s.id'),
    'select "s"."id" from "public"."student" as "s" where "s"."iid" = $1 order by "s"."id"', [I],
    'select id from student where iid = § order by id'],
  ['schema-qualified name', () => db.selectFrom('public.student' as 'student').select('id').orderBy('id'),
    'select "id" from "public"."student" where "public"."student"."iid" = $1 order by "id"', [I],
    'select id from student where iid = § order by id'],
  ['non-tenant table untouched', () => db.selectFrom('country').select('code').orderBy('code'),
    'select "code" from "country" order by "code"', [],
    'select code from country order by code'],
]

for (const [name, build, expectedSql, params, handWritten] of cases) {
  t.test(name, async (t) => {
    for (const id of [1, 2, 3]) {
      await tenancy.runAsInstance(id, async () => {
        const compiled = build().compile()
        t.equal(compiled.sql, expectedSql, `SQL under instance ${id}`)
        t.same(compiled.parameters, params.map((p) => p === I ? id : p), 'parameters')
        const rows = await build().execute()
        const expected = await query(url, handWritten.replaceAll(I, String(id)))
        t.same(rows, expected, `rows of instance ${id} equal the hand-written query's`)
      })
    }
  })
}

t.test('host context: may tables get iid is null, must tables throw', async (t) => {
  await tenancy.runAsHost(async () => {
    t.equal(db.selectFrom('role').selectAll().compile().sql, 'select * from "role" where "role"."iid" is null')
    t.same(await db.selectFrom('role').select('name').orderBy('id').execute(), [{ name: 'host role 1' }, { name: 'host role 2' }])
    await t.rejects(db.selectFrom('student').selectAll().execute(), { code: 'TENANCY_HOST_CONTEXT' })
    await t.rejects(async () => await db.selectFrom('role').where('id', 'in', db.selectFrom('student').select('id')).selectAll().execute(), { code: 'TENANCY_HOST_CONTEXT' }, 'also when the subquery is built')
    t.same(await db.selectFrom('country').select('code').orderBy('code').execute(), [{ code: 'de' }, { code: 'fr' }])
  })
})

t.test('no context fails closed before the database; unscoped turns the filter off', async (t) => {
  await t.rejects(db.selectFrom('student').selectAll().execute(), { code: 'TENANCY_NO_CONTEXT', statusCode: 500 })
  await t.rejects(db.selectFrom('country').innerJoin('role', 'role.name', 'country.name').selectAll().execute(), { code: 'TENANCY_NO_CONTEXT' })
  await t.rejects(db.deleteFrom('student').execute(), { code: 'TENANCY_NO_CONTEXT' })
  t.equal((await query(url, 'select count(*)::int as n from student'))[0].n, 12, 'nothing was deleted')
  t.same(await db.selectFrom('country').select('code').orderBy('code').execute(), [{ code: 'de' }, { code: 'fr' }], 'non-tenant tables need no context')
  await tenancy.runAsInstance(1, async () => {
    await tenancy.unscoped(async () => {
      t.equal(db.selectFrom('student').selectAll().compile().sql, 'select * from "student"')
      t.equal((await db.selectFrom('student').selectAll().execute()).length, 12)
    })
  })
})

t.test('a subquery built under one instance and run under another gets only the second predicate', async (t) => {
  const sub = await tenancy.runAsInstance(1, () => db.selectFrom('course').select('id').where('id', '=', 2))
  const outer = await tenancy.runAsInstance(1, () => db.selectFrom('student').select(['id', 'iid']).where('course_id', 'in', sub))
  await tenancy.runAsInstance(2, async () => {
    const compiled = outer.compile()
    t.equal(compiled.sql, 'select "id", "iid" from "student" where ("course_id" in (select "id" from "course" where ("id" = $1) and "course"."iid" = $2)) and "student"."iid" = $3')
    t.same(compiled.parameters, [2, 2, 2])
    t.same(await outer.execute(), [{ id: 1, iid: 2 }])
  })
})

t.test('MERGE on a tenant table is refused', async (t) => {
  await tenancy.runAsInstance(1, async () => {
    await t.rejects(db.mergeInto('student as s').using('course as c', 'c.id', 's.id').whenMatched().thenUpdateSet({ name: 'x' }).execute(), { code: 'TENANCY_UNSUPPORTED_STATEMENT' })
  })
  t.equal((await query(url, "select count(*)::int as n from student where name = 'x'"))[0].n, 0)
})
