// strict: raw SQL that reads rows without naming their table (SQL in a
// string, a table named by a value, a statement prepared or a cursor declared
// elsewhere) is refused outside unscoped. Each refused text is first run
// without strict, to show that it really reads other instances' rows.
import t from 'tap'
import { sql, type RawBuilder } from 'kysely'
import { jsonArrayFrom } from 'kysely/helpers/postgres'
import { createTenancy, RawSqlGuard, TenantTables } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'raw_sql_guard')
await createTenantSchema(url)
await query(url, `analyze student;
  create procedure rename_all() language sql as $$ update student set name = name $$;
  create table guard_log (n int)`)
const tables = { student: 'must', course: 'must', role: 'may', tag: 'must' } as const
const strict = await createTenancy({ instances: schemaInstances, datasources: { default: url }, tables, strict: true })
const loose = await createTenancy({ instances: schemaInstances, datasources: { default: url }, tables })
t.teardown(async () => { await strict.close(); await loose.close() })
const db = strict.kysely<TenantDB>()
const looseDb = loose.kysely<TenantDB>()

const OTHERS = /student \d of [23]/
const xml = (from: string): string => `query_to_xml('select name from ${from}', true, false, '')`

// [label, statement, what the message names, what shows that instance 1 read
// other instances' rows (their students' names by default)].
const leaks: Array<[string, string, RegExp, RegExp?]> = [
  ['query_to_xml', `select ${xml('student')}::text as v`, /calls query_to_xml\(\), which runs SQL given to it as text/],
  ['quoted and qualified', `select pg_catalog."query_to_xml"('select name from student', true, false, '')::text as v`, /query_to_xml/],
  ['upper case, after a comment', `select /* x */ QUERY_TO_XML('select name from student', true, false, '')::text as v`, /query_to_xml/],
  ['in FROM', `select q::text as v from ${xml('student')} as q`, /query_to_xml/],
  ['in a CTE', `with x as (select ${xml('student')} as q) select q::text as v from x`, /query_to_xml/],
  ['in a subquery', `select (select ${xml('student')})::text as v`, /query_to_xml/],
  ['query_to_xml_and_xmlschema', `select query_to_xml_and_xmlschema('select name from student', true, false, '')::text as v`, /query_to_xml_and_xmlschema/],
  ['table_to_xml', "select table_to_xml('student', true, false, '')::text as v", /calls table_to_xml\(\), which reads a table named by a value/],
  ['table_to_xml of a regclass', "select table_to_xml('public.student'::regclass, true, false, '')::text as v", /table_to_xml/],
  ['table_to_xml_and_xmlschema', "select table_to_xml_and_xmlschema('student', true, false, '')::text as v", /table_to_xml_and_xmlschema/],
  ['schema_to_xml', "select schema_to_xml('public', true, false, '')::text as v", /calls schema_to_xml\(\), which reads every table/],
  ['database_to_xml', "select database_to_xml(true, false, '')::text as v", /database_to_xml/],
  ['ts_stat', "select word || ' in ' || ndoc || ' rows' as v from ts_stat('select to_tsvector(''simple'', name) from student') where word = 'student'", /calls ts_stat\(\)/, /student in 12 rows/],
  ['pg_stats', "select histogram_bounds::text as v from pg_stats where tablename = 'student' and attname = 'name'", /reads pg_stats, which shows column values/],
]

t.test('each of these reads other instances\' rows without strict, and is refused with it', async (t) => {
  for (const [label, text, message, leak = OTHERS] of leaks) {
    const { rows } = await loose.runAsInstance(1, () => sql.raw<{ v: string }>(text).execute(looseDb))
    t.match(rows.map((row) => row.v).join(' '), leak, `${label}: reads instance 2's or 3's rows`)
    await t.rejects(strict.runAsInstance(1, () => sql.raw(text).execute(db)), { code: 'TENANCY_RAW_SQL', statusCode: 500, message }, `${label}: refused`)
    await t.rejects(strict.runAsHost(() => sql.raw(text).execute(db)), { code: 'TENANCY_RAW_SQL' }, `${label}: refused in host context`)
  }
})

t.test('statements that run SQL checked elsewhere, or given as text', async (t) => {
  await t.rejects(strict.runAsInstance(1, () => sql`do $$ begin perform 1; end $$`.execute(db)), { code: 'TENANCY_RAW_SQL', message: /uses DO, which runs code given as text/ })
  await t.rejects(strict.runAsInstance(1, () => sql`do language plpgsql $$ begin execute 'update student set name = name'; end $$`.execute(db)), { code: 'TENANCY_RAW_SQL', message: /DO/ })
  await t.rejects(strict.runAsInstance(1, () => sql`create function f_text() returns int language sql as 'select 1'`.execute(db)), { code: 'TENANCY_RAW_SQL', message: /CREATE FUNCTION or PROCEDURE with a body in a string/ })
  await t.rejects(strict.runAsInstance(1, () => sql`copy student to stdout`.execute(db)), { code: 'TENANCY_RAW_SQL', message: /"student"/ })
  await t.rejects(strict.runAsInstance(1, () => sql`copy (select name from student) to stdout`.execute(db)), { code: 'TENANCY_RAW_SQL', message: /"student"/ })
  await t.rejects(strict.runAsInstance(1, () => sql`copy role from stdin`.execute(db)), { code: 'TENANCY_RAW_SQL', message: /"role"/ })
  t.same(await query(url, "select count(*)::int as n from pg_proc where proname = 'f_text'"), [{ n: 0 }], 'nothing was created')

  // What EXECUTE and FETCH run was prepared or declared earlier, maybe in
  // another context: without strict, they read every instance.
  await loose.runAsInstance(1, () => looseDb.connection().execute(async (conn) => {
    await sql`prepare all_names as select name from student`.execute(conn)
    t.match((await sql<{ name: string }>`execute all_names`.execute(conn)).rows.map((r) => r.name).join(' '), OTHERS, 'without strict, EXECUTE reads every instance')
    await sql`deallocate all_names`.execute(conn)
    await sql`begin`.execute(conn)
    await sql`declare everyone cursor for select name from student`.execute(conn)
    t.match((await sql<{ name: string }>`fetch all from everyone`.execute(conn)).rows.map((r) => r.name).join(' '), OTHERS, 'and so does FETCH')
    await sql`commit`.execute(conn)
  }))
  await strict.runAsInstance(1, async () => {
    await t.rejects(sql`execute all_names`.execute(db), { code: 'TENANCY_RAW_SQL', message: /uses EXECUTE, which runs a statement prepared earlier/ })
    await t.rejects(sql`explain analyze execute all_names`.execute(db), { code: 'TENANCY_RAW_SQL', message: /EXECUTE/ })
    await t.rejects(sql`create table copied as execute all_names`.execute(db), { code: 'TENANCY_RAW_SQL', message: /EXECUTE/ })
    await t.rejects(sql`prepare p1 as select 1`.execute(db), { code: 'TENANCY_RAW_SQL', message: /uses PREPARE/ })
    await t.rejects(sql`fetch all from everyone`.execute(db), { code: 'TENANCY_RAW_SQL', message: /uses FETCH or MOVE, which reads a cursor declared earlier/ })
    await t.rejects(sql`move forward 1 in everyone`.execute(db), { code: 'TENANCY_RAW_SQL', message: /FETCH or MOVE/ })
    await t.rejects(sql`select cursor_to_xml('everyone', 10, true, false, '')`.execute(db), { code: 'TENANCY_RAW_SQL', message: /cursor_to_xml/ })
  })
})

t.test('every function the README lists is refused, in any schema and in any case', async (t) => {
  const listed = ['query_to_xml', 'query_to_xml_and_xmlschema', 'query_to_xmlschema', 'table_to_xml', 'table_to_xml_and_xmlschema',
    'table_to_xmlschema', 'cursor_to_xml', 'cursor_to_xmlschema', 'schema_to_xml', 'schema_to_xml_and_xmlschema', 'schema_to_xmlschema',
    'database_to_xml', 'database_to_xml_and_xmlschema', 'database_to_xmlschema', 'ts_stat', 'pg_logical_slot_get_changes',
    'pg_logical_slot_peek_changes', 'pg_logical_slot_get_binary_changes', 'pg_logical_slot_peek_binary_changes',
    'dblink', 'dblink_exec', 'dblink_open', 'dblink_send_query', 'crosstab', 'crosstab2', 'crosstab3', 'crosstab4', 'connectby', 'xpath_table', 'get_raw_page']
  for (const name of listed) {
    for (const call of [`${name}('x')`, `ext.${name.toUpperCase()}('x')`, `"${name}"('x')`]) {
      await t.rejects(strict.runAsInstance(1, () => sql.raw(`select * from ${call}`).execute(db)), { code: 'TENANCY_RAW_SQL', message: new RegExp(`calls ${name}\\(\\)`) }, call)
    }
  }
  for (const view of ['pg_stats', 'pg_stats_ext', 'pg_stats_ext_exprs', 'pg_statistic', 'pg_catalog.pg_statistic_ext_data']) {
    await t.rejects(strict.runAsInstance(1, () => sql.raw(`select * from ${view}`).execute(db)), { code: 'TENANCY_RAW_SQL', message: /which shows column values/ }, view)
  }
})

t.test('what is not refused', async (t) => {
  await strict.runAsInstance(1, async () => {
    t.same((await sql<{ v: string }>`select 'query_to_xml(''select * from student'')' as v`.execute(db)).rows, [{ v: "query_to_xml('select * from student')" }], 'a function name in a string is a string')
    t.same((await sql<{ v: string }>`select ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)::text as v`.execute(db)).rows, [{ v: "'b' & 'c'" }], 'ts_rewrite with three queries runs no SQL')
    await t.rejects(sql`select ts_rewrite('a'::tsquery, 'select ''a''::tsquery, ''b''::tsquery')`.execute(db), { code: 'TENANCY_RAW_SQL', message: /ts_rewrite/ }, 'the form with a query is refused')
    t.same((await sql<{ n: number }>`select count(*)::int as n from pg_class where relname = 'student'`.execute(db)).rows, [{ n: 1 }], 'other catalog views')
    await t.rejects(sql`selec name from student`.execute(db), { code: '42601' }, 'a statement the parser cannot read goes to the server, which refuses it too')
    // A procedure is the application's own code: what it reads is row-level security's job.
    await sql`call rename_all()`.execute(db)
    await sql`create function f_atomic() returns int begin atomic select 1; end`.execute(db)
    t.same((await sql<{ v: number }>`select f_atomic() as v`.execute(db)).rows, [{ v: 1 }], 'a function whose body the parser reads')
  })
  await strict.unscoped(async () => {
    const { rows } = await sql<{ v: string }>`select ${sql.raw(xml('student'))}::text as v`.execute(db)
    t.match(rows[0]!.v, OTHERS, 'unscoped: everything runs')
    await sql`do $$ begin perform 1; end $$`.execute(db)
  })
})

t.test('checkQuery: what a builder query holds that the filter cannot confine', async (t) => {
  const guard = await RawSqlGuard.load(new TenantTables(tables))
  const check = (query: { toOperationNode: () => unknown }): string => {
    try {
      guard.checkQuery(query.toOperationNode() as never)
      return 'allowed'
    } catch (err) {
      return `${(err as { code: string }).code}: ${(err as Error).message}`
    }
  }
  const lit = (value: unknown): RawBuilder<unknown> => sql.lit(value)
  const plain = db.withoutPlugins()
  const country = plain.selectFrom('country')
  const refused: Array<[string, { toOperationNode: () => unknown }, RegExp]> = [
    ['eb.fn', country.select((eb) => eb.fn('query_to_xml', [lit('select * from student'), lit(true), lit(false), lit('')]).as('x')), /calls query_to_xml\(\)/],
    ['eb.fn, qualified and upper case', country.select((eb) => eb.fn('PG_CATALOG.TABLE_TO_XML', [lit('student'), lit(true), lit(false), lit('')]).as('x')), /table_to_xml/],
    ['eb.fn, quoted', country.select((eb) => eb.fn('"query_to_xml"', [lit('x'), lit(true), lit(false), lit('')]).as('x')), /query_to_xml/],
    ['eb.fn dblink', country.select((eb) => eb.fn('dblink', [lit('dbname=x'), lit('select 1')]).as('x')), /calls dblink\(\), which runs SQL given to it as text, on another connection/],
    ['eb.fn ts_rewrite with a query', country.select((eb) => eb.fn('ts_rewrite', [lit('a'), lit('select 1')]).as('x')), /ts_rewrite/],
    ['a raw selection', country.select(sql`query_to_xml('select * from student', true, false, '')`.as('x')), /query_to_xml/],
    ['a raw condition', country.selectAll().where(sql<boolean>`exists (select 1 from student where name = 'x')`), /names the tenant table "student"/],
    ['sql.table in a raw condition', country.selectAll().where(sql<boolean>`exists (select 1 from ${sql.table('tag')})`), /"tag"/],
    ['a raw value with ;', country.selectAll().where('name', '=', sql<string>`'x'; delete from student`), /ends the statement \(;\)/],
    ['a raw value with --', country.selectAll().where('name', '=', sql<string>`'x' --`), /holds a -- comment/],
    ['an unterminated quote', country.selectAll().where('name', '=', sql<string>`'x`), /cannot be read/],
    ['pg_stats as a table', plain.selectFrom('pg_stats' as never).selectAll(), /reads pg_stats/],
    ['pg_catalog.pg_stats as a table', plain.selectFrom('pg_catalog.pg_stats' as never).selectAll(), /reads pg_stats/],
    ['a qualified sql.table in a raw condition', country.selectAll().where(sql<boolean>`exists (select 1 from ${sql.table('public.tag')})`), /"public\.tag"/],
    ['a function named by sql.id in a raw selection', country.select(sql`${sql.id('query_to_xml')}('select * from student', true, false, '')`.as('x')), /calls query_to_xml\(\)/],
    ['deep inside', country.selectAll().where((eb) => eb.exists(eb.selectFrom('tag').select(sql`table_to_xml('student', true, false, '')`.as('x')))), /table_to_xml/],
  ]
  for (const [label, built, message] of refused) t.match(check(built), new RegExp(`^TENANCY_RAW_SQL: .*${message.source}`), label)
  const allowed: Array<[string, { toOperationNode: () => unknown }]> = [
    ['plain builder query on tenant tables', plain.selectFrom('student').innerJoin('course', 'course.id', 'student.course_id').select(['student.name', (eb) => eb.fn.count('course.id').as('n')]).groupBy('student.name')],
    ['a raw fragment with a builder subquery', plain.selectFrom('course').select((eb) => jsonArrayFrom(eb.selectFrom('student').select('name').whereRef('student.course_id', '=', 'course.id')).as('students'))],
    ['a raw condition on other tables', country.selectAll().where(sql<boolean>`name <> 'query_to_xml' and code in (select code from country)`)],
    ['a value that looks like SQL', country.selectAll().where('name', '=', "x'; select query_to_xml('select * from student') --")],
    ['a column named like a tenant table', plain.selectFrom('role').select(sql`role.name`.as('n'))],
    ['ts_rewrite with three queries', country.select((eb) => eb.fn('ts_rewrite', [lit('a'), lit('a'), lit('b')]).as('x'))],
    ['a qualified table', plain.selectFrom('public.country' as never).selectAll()],
    ['a table named pg_stats in another schema', plain.selectFrom('app.pg_stats' as never).selectAll()],
  ]
  for (const [label, built] of allowed) t.equal(check(built), 'allowed', label)
  // The allowed queries run and stay confined: the subquery inside jsonArrayFrom is the filter's.
  const rows = await strict.runAsInstance(2, () => db.selectFrom('course').select((eb) => jsonArrayFrom(eb.selectFrom('student').select('name').whereRef('student.course_id', '=', 'course.id')).as('students')).orderBy('id').execute())
  t.same(rows.flatMap((row) => row.students.map((s) => s.name)).sort(), ['student 1 of 2', 'student 2 of 2', 'student 3 of 2'])
})
