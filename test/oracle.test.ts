// The oracle of the shared-mode rewrite. Statements generated over the whole
// builder surface are compiled through the tenancy under a random instance (or
// host) context; each compiled statement is read by PostgreSQL's own parser and
// judged by test/helpers/oracle-checker.ts, which knows SQL semantics and
// nothing of the filter. A sample then runs on PostgreSQL and must return the
// rows, and leave the tables, exactly as the same builder code does when run
// without the filter against views that hold only the instance's rows.
// Reproduce a run with TENANCY_SEED=<seed>.
import t from 'tap'
import pg from 'pg'
import { DummyDriver, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler, type CompiledQuery } from 'kysely'
import { TenancyError, createTenancy } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'
import { UnparsableSqlError, loadOracleChecker, type CheckOptions, type Finding, type OracleTarget } from './helpers/oracle-checker.js'
import { TENANT_TABLES, generateStatements, type GeneratedStatement } from './helpers/oracle-queries.js'

const seed = Number(process.env.TENANCY_SEED ?? Date.now() % 2 ** 31)
t.comment(`seed ${seed} (TENANCY_SEED=${seed} reproduces this run)`)
const STATEMENTS = 10_000
const EXECUTED = 1_000

const check = await loadOracleChecker()
const options = (parameters: readonly unknown[], target: OracleTarget): CheckOptions => ({ parameters, target, tables: TENANT_TABLES })
const kinds = (text: string, parameters: readonly unknown[], target: OracleTarget = { kind: 'instance', id: 2 }): string[] =>
  check(text, options(parameters, target)).map((finding) => finding.kind)

// The oracle schemas exist before the tenancy discovers its tables, so that
// they never count as tables it has not seen.
const url = await createDatabase(t, 'oracle')
await createTenantSchema(url)
const TABLES = ['student', 'course', 'role', 'tag'] as const
const viewSql: string[] = []
for (const { id } of schemaInstances) {
  viewSql.push(`create schema oracle_${id}`, `create view oracle_${id}.country as select * from public.country`)
  for (const table of TABLES) {
    viewSql.push(`create view oracle_${id}.${table} as select * from public.${table} where iid = ${id} with local check option`,
      `alter view oracle_${id}.${table} alter column iid set default ${id}`)
  }
}
viewSql.push('create schema oracle_host', 'create view oracle_host.country as select * from public.country',
  'create view oracle_host.role as select * from public.role where iid is null with local check option')
for (const table of ['student', 'course', 'tag']) viewSql.push(`create view oracle_host.${table} as select * from public.${table} where false with local check option`)
await query(url, viewSql.join(';\n'))

const tenancy = await createTenancy({ instances: schemaInstances, datasources: { default: url } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<TenantDB>()
// The same builder code, compiled without any plugin.
const plain = new Kysely<any>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (k) => new PostgresIntrospector(k),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
})

const started = performance.now()
const startedCpu = process.cpuUsage()
const statements = generateStatements(seed, STATEMENTS)
t.comment(`${STATEMENTS} statements generated in ${Math.round(performance.now() - started)} ms (${Math.round(process.cpuUsage(startedCpu).user / 1000)} ms CPU)`)

interface Compiled {
  readonly statement: GeneratedStatement
  readonly rewritten: CompiledQuery
  readonly target: OracleTarget
  readonly findings: readonly Finding[]
}

const compiled: Compiled[] = []
const outcomes = new Map<string, number>()
const count = (key: string): void => { outcomes.set(key, (outcomes.get(key) ?? 0) + 1) }
const generatorErrors: string[] = []
const brokenSyntax: string[] = []

function targetOf (statement: GeneratedStatement): OracleTarget {
  return statement.context.kind === 'host' ? { kind: 'host' } : { kind: 'instance', id: statement.context.id }
}

function describe (statement: GeneratedStatement, query: { sql: string, parameters: readonly unknown[] }): string {
  const context = statement.context.kind === 'host' ? 'runAsHost' : `runAsInstance('${statement.context.name}') (iid ${statement.context.id})`
  return [`seed ${seed}, statement #${statement.index}, ${context}`, `  builder: ${statement.code}`, `  sql: ${query.sql}`, `  parameters: ${JSON.stringify(query.parameters)}`].join('\n')
}

t.test('the checker rejects statements that let rows of another instance through', async (t) => {
  const bad: Array<[string, string, unknown[], OracleTarget?, string?]> = [
    ['the predicate under OR', 'select * from student where a = 1 or true and student.iid = $1', [2]],
    ['the predicate under NOT', 'select * from student where not (x and "student"."iid" = $1)', [2]],
    ['another instance\'s id', 'select * from student where student.iid = $1', [3]],
    ['no predicate in a subquery', 'select * from student where student.iid = $1 and id in (select id from course)', [2]],
    ['a CTE shadows only the unqualified name', 'with student as (select 1 as id) select * from public.student', []],
    ['RIGHT JOIN with the preserved side confined in ON only', 'select * from student s right join course c on c.id = s.id and s.iid = $1 and c.iid = $1', [2]],
    ['FULL JOIN confined in ON', 'select * from student s full join course c on c.id = s.id and s.iid = $1 and c.iid = $1', [2]],
    ['LEFT JOIN with the preserved side confined in ON', 'select * from student s left join course c on c.id = s.id and s.iid = $1 and c.iid = $1', [2]],
    ['UPDATE … FROM … RIGHT JOIN, preserved side in ON', 'update student as t set name = c.title from tag g right join course c on c.id = g.id and c.iid = $1 where t.iid = $1 and g.iid = $1 and t.id = c.id', [2], undefined, 'leak'],
    ['DELETE … USING an unconfined table', 'delete from student using course where student.iid = $1 and student.id = course.id returning course.title', [2]],
    ['UPDATE SET iid to another instance', 'update student set iid = $1 where student.iid = $2', [3, 2], undefined, 'moves'],
    ['UPDATE SET iid through a qualified name', 'update student as t set "t"."iid" = $1 where t.iid = $2', [3, 2], undefined, 'moves'],
    ['UPDATE SET (…, iid) = (…)', 'update student set (name, iid) = (select $1, $2) where student.iid = $3', ['x', 3, 2], undefined, 'moves'],
    ['ON CONFLICT DO UPDATE SET iid', 'insert into tag (id, label, iid) values ($1, $2, $3) on conflict (id) do update set iid = $4 where tag.iid = $5', [1, 'x', 2, 1, 2], undefined, 'moves'],
    ['ON CONFLICT DO UPDATE without WHERE', 'insert into tag (id, label, iid) values ($1, $2, $3) on conflict (id) do update set label = $4', [1, 'x', 2, 'y']],
    ['ON CONFLICT DO UPDATE with the predicate under OR', 'insert into tag (id, label, iid) values ($1, $2, $3) on conflict (id) do update set label = $4 where tag.id > 0 or tag.iid = $5', [1, 'x', 2, 'y', 2]],
    ['INSERT without iid', 'insert into student (id, name) values ($1, $2)', [1, 'x'], undefined, 'insert'],
    ['INSERT with another iid', 'insert into student (id, name, iid) values ($1, $2, $3)', [1, 'x', 3], undefined, 'insert'],
    ['INSERT … SELECT passing iid through', 'insert into student (id, name, iid) select id, name, iid from student where student.iid = $1', [2], undefined, 'insert'],
    ['INSERT DEFAULT VALUES', 'insert into student default values', [], undefined, 'insert'],
    ['a must table in host context', 'select * from student where student.iid is null', [], { kind: 'host' }],
    ['host rows confined by an id', 'select * from role where role.iid = $1', [2], { kind: 'host' }],
    ['a CTE body unconfined', 'with w as (select id from student) select * from w', []],
    ['a data-modifying CTE unconfined', 'with w as (update tag set label = $1 returning id) select * from w', ['x']],
    ['a derived table unconfined', 'select * from (select * from student) as s', []],
    ['a lateral subquery unconfined', 'select * from course c cross join lateral (select * from student s where s.id = c.id) l where c.iid = $1', [2]],
    ['a table in a set operation arm', 'select id from student where student.iid = $1 union select id from course', [2]],
    ['a scalar subquery in RETURNING', 'update tag set label = $1 where tag.iid = $2 returning (select max(title) from course)', ['x', 2]],
  ]
  for (const [name, text, parameters, target, kind] of bad) {
    const found = kinds(text, parameters, target)
    t.ok(found.length > 0, `${name}: ${text} → ${found.join(', ') || 'nothing'}`)
    if (kind !== undefined) t.ok(found.includes(kind), `${name} is a ${kind}`)
  }
  // Confined, but where the outer join loses its null-extended rows.
  t.same(kinds('select * from student s left join course c on c.id = s.id where s.iid = $1 and c.iid = $1', [2]), ['misplaced'])
})

t.test('the checker accepts statements confined where SQL semantics say', async (t) => {
  const good: Array<[string, string, unknown[], OracleTarget?]> = [
    ['WHERE', 'select * from student where student.iid = $1', [2]],
    ['the user\'s OR in parentheses', 'select * from student where (a = 1 or true) and "student"."iid" = $1', [2]],
    ['either way round, with a cast', 'select * from student as s where $1::bigint = s.iid', [2]],
    ['a schema-qualified table', 'select * from public.student where "public"."student"."iid" = $1', [2]],
    ['LEFT JOIN: nullable side in ON', 'select * from student s left join course c on c.id = s.id and c.iid = $1 where s.iid = $1', [2]],
    ['RIGHT JOIN: nullable side in ON, preserved in WHERE', 'select * from student s right join course c on c.id = s.id and s.iid = $1 where c.iid = $1', [2]],
    ['FULL JOIN of derived tables', 'select * from (select * from student where student.iid = $1) as s full join (select * from course where course.iid = $1) as c on c.id = s.id', [2]],
    ['INNER JOIN in ON', 'select * from student s inner join course c on c.id = s.id and c.iid = $1 and s.iid = $1', [2]],
    ['a CTE named like a table', 'with student as (select id from public.student where "student"."iid" = $1) select * from student', [2]],
    ['a recursive CTE', 'with recursive student(id) as (select id from public.student where student.iid = $1 union all select id + 1 from student where id < 3) select * from student', [2]],
    ['UPDATE … FROM', 'update student as t set name = c.title from course c where t.iid = $1 and c.iid = $1 and c.id = t.id', [2]],
    ['UPDATE SET iid to the current id', 'update student set iid = $1 where student.iid = $1', [2]],
    ['DELETE … USING', 'delete from student using course where student.iid = $1 and course.iid = $1', [2]],
    ['INSERT VALUES', 'insert into student (id, name, iid) values ($1, $2, $3), ($4, $5, $3)', [1, 'x', 2, 3, 'y']],
    ['INSERT … SELECT wrapped', 'insert into tag (id, label, iid) select "tenancy_source".*, $1::bigint from (select id, title from course where course.iid = $2) as tenancy_source', [2, 2]],
    ['ON CONFLICT DO UPDATE … WHERE', 'insert into tag (id, label, iid) values ($1, $2, $3) on conflict (id) do update set label = $4 where (tag.id > 0 or true) and "tag"."iid" = $5', [1, 'x', 2, 'y', 2]],
    ['host rows of a may table', 'select * from role where role.iid is null', [], { kind: 'host' }],
    ['host insert into a may table', 'insert into role (id, name, iid) values ($1, $2, $3)', [1, 'x', null], { kind: 'host' }],
    ['a table that is not a tenant table', 'select * from country', []],
  ]
  for (const [name, text, parameters, target] of good) t.same(kinds(text, parameters, target), [], `${name}: ${text}`)
})

t.test(`${STATEMENTS} generated statements: every tenant table is confined, read by PostgreSQL's parser`, async (t) => {
  const begin = performance.now()
  const cpu = process.cpuUsage()
  const failures = new Map<string, { count: number, example: string }>()
  for (const statement of statements) {
    let rewritten: CompiledQuery
    try {
      const build = (): CompiledQuery => statement.build({ db, schema: 'public' }).compile()
      rewritten = statement.context.kind === 'host' ? tenancy.runAsHost(build) : tenancy.runAsInstance(statement.context.name, build)
    } catch (err) {
      if (err instanceof TenancyError) {
        // Refused before anything reaches the database: safe.
        count(`refused ${err.code}`)
      } else {
        count('generator error')
        if (generatorErrors.length < 5) generatorErrors.push(`#${statement.index} ${String(err)}\n  ${statement.code}`)
      }
      continue
    }
    const target = targetOf(statement)
    let findings: Finding[]
    try {
      findings = check(rewritten.sql, options(rewritten.parameters, target))
    } catch (err) {
      if (!(err instanceof UnparsableSqlError)) throw err
      // Kysely itself can make SQL that does not parse; the rewrite must not.
      const original = statement.build({ db: plain, schema: 'public' }).compile().sql
      let parses = true
      try { check(original, options([], target)) } catch { parses = false }
      if (parses) {
        count('rewrite broke the syntax')
        if (brokenSyntax.length < 5) brokenSyntax.push(`${describe(statement, rewritten)}\n  ${String(err)}`)
      } else {
        count('not parsed by PostgreSQL, with or without the filter')
      }
      continue
    }
    compiled.push({ statement, rewritten, target, findings })
    count(findings.length === 0 ? `compiled, confined (${statement.statement})` : `compiled, NOT confined (${statement.statement})`)
    for (const finding of findings) {
      // One entry per hole: the rule broken, in which kind of statement.
      const key = `${finding.kind}: ${finding.rule}, in ${statement.statement}`
      const entry = failures.get(key) ?? { count: 0, example: `${describe(statement, rewritten)}\n  ${finding.kind} at ${finding.where}: ${finding.message}` }
      entry.count++
      failures.set(key, entry)
    }
  }
  t.comment(`compiled and checked in ${Math.round(performance.now() - begin)} ms (${Math.round(process.cpuUsage(cpu).user / 1000)} ms CPU)`)
  for (const [key, value] of [...outcomes].sort()) t.comment(`${String(value).padStart(6)}  ${key}`)
  t.same(generatorErrors, [], 'every generated statement builds (else the generator is wrong)')
  t.same(brokenSyntax, [], 'the rewrite never makes a statement that parses into one that does not')

  // The generator covers the surface it claims.
  const seen = new Set(statements.flatMap((statement) => statement.features))
  const required = [
    'selectFrom', 'selectFrom:list', 'selectNoFrom', 'select', 'selectAll', 'where', 'whereRef', 'where:$call', 'where:$if', 'having', 'havingRef', 'groupBy',
    'orderBy', 'distinct', 'distinctOn', 'limit', 'offset', 'fetch', 'union', 'unionAll', 'intersect', 'intersectAll', 'except', 'exceptAll',
    'forUpdate', 'forShare', 'forNoKeyUpdate', 'forKeyShare', 'skipLocked', 'noWait', 'modifyEnd', 'with', 'withRecursive', 'withSchema',
    'cte:data-modifying', 'cte:recursive self-reference', 'cte:named like a tenant table', 'cte:materialized', 'from:cte', 'from:derived table',
    'table:alias', 'table:bare', 'table:qualified alias', 'table:qualified bare',
    ...['innerJoin', 'leftJoin', 'rightJoin', 'fullJoin', 'crossJoin', 'innerJoinLateral', 'leftJoinLateral', 'crossJoinLateral'].map((join) => `select:${join}`),
    ...['update', 'delete'].flatMap((kind) => ['innerJoin', 'leftJoin', 'rightJoin', 'fullJoin'].map((join) => `${kind}:${join}`)),
    'join:three', 'join:callback', 'join:onTrue', 'join:on expression', 'onRef', 'on', 'onTrue',
    'updateTable', 'set:object', 'set:object callback', 'set:two-arg', 'set:callback key', 'set:raw key', 'set:sql.ref key', 'set iid:two-arg', 'set iid:callback key', 'set iid:object',
    'from', 'from:list', 'returning', 'returningAll', 'deleteFrom', 'using', 'using:list', 'update:tied from', 'delete:tied using',
    'insertInto', 'values', 'insert:values callback', 'columns', 'expression', 'defaultValues', 'values:iid', 'values:subquery',
    'onConflict', 'column', 'constraint', 'doNothing', 'doUpdateSet', 'doUpdateSet:where', 'doUpdateSet:iid', 'mergeInto',
    'raw:or', 'eb:raw operand', 'eb:not raw', 'eb:raw', 'eb:or', 'eb:and', 'eb:not', 'eb:exists', 'eb:in subquery', 'eb:scalar subquery', 'eb:between', 'eb:parens',
    'selection:scalar subquery', 'selection:exists', 'selection:case', 'selection:case exists', 'selection:window', 'selection:json helper',
    'eb:tuple in subquery', 'eb:raw with a subquery', 'eb:any', 'from:function with a subquery argument', 'cte:shadowed table named with its schema',
    'fn:countAll', 'fn:max', 'having:or raw', 'iid:other', 'iid:raw', 'iid:current',
  ]
  t.same(required.filter((feature) => !seen.has(feature)), [], `the statements use every part of the builder surface (${seen.size} features seen)`)

  const holes = [...failures].sort((a, b) => b[1].count - a[1].count)
  for (const [key, { count, example }] of holes.slice(0, 15)) t.fail(`${count}× ${key}\n${example}`)
  t.equal(holes.reduce((sum, [, { count }]) => sum + count, 0), 0, `no compiled statement leaves a tenant table unconfined (seed ${seed})`)
  t.ok(compiled.length > STATEMENTS / 2, `${compiled.length} statements compiled (the rest were refused)`)
})

// ---- execution -------------------------------------------------------------

const CHECKSUM = [...TABLES, 'country'].map((table) =>
  `select '${table}' as t, ${table === 'country' ? 'null::int' : 'iid'} as iid, count(*)::int as n, md5(string_agg(x::text, '|' order by x::text)) as h from public.${table} x group by 2`).join(' union all ')

type Snapshot = Map<string, string>
async function snapshot (client: pg.Client): Promise<Snapshot> {
  const { rows } = await client.query<{ t: string, iid: number | null, n: number, h: string }>(CHECKSUM)
  return new Map(rows.map((row) => [`${row.t} iid ${String(row.iid)}`, `${row.n} rows, ${row.h}`]))
}

interface Run { rows?: string[], error?: string, after?: Snapshot }

async function run (client: pg.Client, text: string, parameters: readonly unknown[], searchPath: string | undefined, writes: boolean): Promise<Run> {
  await client.query('begin')
  try {
    if (searchPath !== undefined) await client.query(`set local search_path = ${searchPath}`)
    let result: pg.QueryResult
    try {
      result = await client.query(text, parameters as unknown[])
    } catch (err) {
      return { error: `${(err as { code?: string }).code ?? ''} ${(err as Error).message}` }
    }
    const rows = result.rows.map((row) => JSON.stringify(row))
    return { rows, after: writes ? await snapshot(client) : undefined }
  } finally {
    await client.query('rollback')
  }
}

t.test(`a sample of at least ${EXECUTED} statements runs on PostgreSQL: the same rows as the hand-filtered oracle, no other instance touched`, async (t) => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end())
  await client.query("set statement_timeout = '5s'")
  const baseline = await snapshot(client)
  const step = Math.max(1, Math.floor(compiled.length / (EXECUTED + 50)))
  const begin = performance.now()
  let executed = 0
  let rows = 0
  let nonEmpty = 0
  let bothFailed = 0
  const failedTogether = new Map<string, number>()
  const problems = new Map<string, { count: number, example: string }>()
  const problem = (key: string, item: Compiled, detail: string): void => {
    const entry = problems.get(key) ?? { count: 0, example: `${describe(item.statement, item.rewritten)}\n  ${detail}` }
    entry.count++
    problems.set(key, entry)
  }
  for (let i = 0; i < compiled.length; i += step) {
    const item = compiled[i]!
    const { statement, rewritten, target } = item
    const schema = target.kind === 'host' ? 'oracle_host' : `oracle_${target.id}`
    const oracle = statement.build({ db: plain, schema, conflictIid: target.kind === 'host' ? null : target.id }).compile()
    const writes = /\.(updateTable|insertInto|deleteFrom|mergeInto)\(/.test(statement.code)
    const mine = await run(client, rewritten.sql, rewritten.parameters, undefined, writes)
    const theirs = await run(client, oracle.sql, oracle.parameters, schema, writes)
    executed++
    if (mine.error !== undefined && theirs.error !== undefined) {
      bothFailed++
      const reason = mine.error.replace(/"[^"]*"/g, '"…"').replace(/\$\d+|\d+/g, 'N').slice(0, 90)
      failedTogether.set(reason, (failedTogether.get(reason) ?? 0) + 1)
      continue
    }
    // A view has no primary key, so GROUP BY the key no longer covers the
    // table's other columns there (42803): a limit of the oracle's views, not
    // a difference of the rewrite.
    if (mine.error === undefined && theirs.error?.startsWith('42803') === true) {
      bothFailed++
      failedTogether.set('oracle only: grouping by a key its views do not have', (failedTogether.get('oracle only: grouping by a key its views do not have') ?? 0) + 1)
      continue
    }
    if (mine.error !== undefined || theirs.error !== undefined) {
      problem(`only the ${mine.error !== undefined ? 'rewritten statement' : 'oracle'} failed: ${(mine.error ?? theirs.error)!.replace(/"[^"]*"/g, '"…"').slice(0, 70)}`, item, `rewritten: ${mine.error ?? `${mine.rows!.length} rows`}; oracle: ${theirs.error ?? `${theirs.rows!.length} rows`}\n  oracle sql: ${oracle.sql}`)
      continue
    }
    rows += mine.rows!.length
    if (mine.rows!.length > 0) nonEmpty++
    const same = statement.ordered
      ? JSON.stringify(mine.rows) === JSON.stringify(theirs.rows)
      : JSON.stringify([...mine.rows!].sort()) === JSON.stringify([...theirs.rows!].sort())
    if (!same) {
      const extra = mine.rows!.filter((row) => !theirs.rows!.includes(row)).slice(0, 3)
      const missing = theirs.rows!.filter((row) => !mine.rows!.includes(row)).slice(0, 3)
      problem(`rows differ (${statement.statement})`, item, `rewritten returned ${mine.rows!.length} rows, the oracle ${theirs.rows!.length}${statement.ordered ? ' (ordered)' : ''}; only rewritten: ${extra.join(' ')}; only oracle: ${missing.join(' ')}\n  oracle sql: ${oracle.sql}`)
    }
    if (writes) {
      const own = target.kind === 'host' ? 'iid null' : `iid ${target.id}`
      for (const key of new Set([...baseline.keys(), ...mine.after!.keys()])) {
        const isOwn = key.endsWith(` ${own}`) || key.startsWith('country ')
        if (!isOwn && mine.after!.get(key) !== baseline.get(key)) problem(`another instance's rows changed (${statement.statement})`, item, `${key}: ${baseline.get(key) ?? 'none'} → ${mine.after!.get(key) ?? 'none'}`)
        if (mine.after!.get(key) !== theirs.after!.get(key)) problem(`the tables differ from the oracle's after the write (${statement.statement})`, item, `${key}: rewritten ${mine.after!.get(key) ?? 'none'}, oracle ${theirs.after!.get(key) ?? 'none'}\n  oracle sql: ${oracle.sql}`)
      }
    }
  }
  t.comment(`${executed} statements executed in ${Math.round(performance.now() - begin)} ms, ${rows} rows compared; ${bothFailed} failed on both sides alike`)
  for (const [reason, n] of [...failedTogether].sort((a, b) => b[1] - a[1]).slice(0, 12)) t.comment(`  ${String(n).padStart(5)}  both failed: ${reason}`)
  const sorted = [...problems].sort((a, b) => b[1].count - a[1].count)
  for (const [key, { count, example }] of sorted.slice(0, 15)) t.fail(`${count}× ${key}\n${example}`)
  t.equal(sorted.reduce((sum, [, { count }]) => sum + count, 0), 0, `the rewritten statements behave as the oracle (seed ${seed})`)
  t.ok(executed >= EXECUTED, `${executed} statements executed`)
  t.ok(nonEmpty > executed / 5, `${nonEmpty} statements returned rows (${rows} in all): the sample is not empty`)
  t.ok(bothFailed < executed / 4, `${bothFailed} of ${executed} failed on both sides (the generator makes mostly valid SQL)`)
})
