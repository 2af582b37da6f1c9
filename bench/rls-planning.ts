// Where row-level security's cost goes, on the server alone (pg, no Kysely,
// no tenancy code): the six statements of bench/rewrite.ts, as the filter
// writes them, run 1) as the superuser (the baseline), 2) as an ordinary role
// on the same tables without policies, 3) as that role under the policies of
// rowLevelSecurityStatements(), 4) and 5) the first and third as named prepared
// statements. Then EXPLAIN (ANALYZE, SUMMARY) splits planning from execution
// per shape. Each variant has its own schema with the same rows, so all run
// interleaved in one server.
//   npm run bench:rls
import pg from 'pg'
import { rowLevelSecurityStatements } from '../lib/index.js'
import { basePool, benchServer, courseStudentTables, median } from './bench-database.js'

const CONCURRENCY = 8
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const EXPLAINS = 200
const ID = 2

const server = await benchServer('bench-rls')
const admin = new pg.Client({ connectionString: server.url })
await admin.connect()
const role = 'bench_rls_app'
await admin.query(`drop role if exists ${role}; create role ${role} login password 'bench' nosuperuser nobypassrls`)
for (const schema of ['rls_off', 'rls_on']) {
  await admin.query(`drop schema if exists ${schema} cascade; create schema ${schema}; grant usage on schema ${schema} to ${role};
    ${courseStudentTables(schema)}
    grant select, insert, update, delete on ${schema}.student, ${schema}.course to ${role}`)
}
for (const statement of rowLevelSecurityStatements({ 'rls_on.student': 'must', 'rls_on.course': 'must' })) await admin.query(statement)
const roleUrl = new URL(server.url)
roleUrl.username = role
roleUrl.password = 'bench'

let counter = 0
const next = (n: number): number => (counter = (counter + 7) % n) + 1
const shapes: Array<[string, () => [string, unknown[]]]> = [
  ['point lookup', () => ['select * from "student" where "id" = $1 and "student"."iid" = $2', [17, ID]]],
  ['join', () => ['select "s"."id", "s"."name", "c"."title" from "student" as "s" inner join "course" as "c" on "c"."id" = "s"."course_id" and "c"."iid" = $1 where "s"."id" < $2 and "s"."iid" = $3', [ID, 10, ID]]],
  ['IN subquery', () => ['select "title" from "course" where "id" in (select "course_id" from "student" where "id" < $1 and "student"."iid" = $2) and "course"."iid" = $3', [5, ID, ID]]],
  ['aggregate', () => ['select "course_id", count(*) as "n" from "student" where "student"."iid" = $1 group by "course_id"', [ID]]],
  ['update', () => ['update "student" set "name" = name where "id" = $1 and "student"."iid" = $2', [next(200), ID]]],
  ['upsert', () => { const id = next(20); return ['insert into "course" ("id", "title", "iid") values ($1, $2, $3) on conflict ("iid", "id") do update set "title" = $4 where "course"."iid" = $5', [id, `course ${id}`, ID, `course ${id}`, ID]] }],
]

interface Variant { pool: pg.Pool, prepared: boolean }
function variant (url: string, schema: string, prepared: boolean): Variant {
  const pool = basePool({ connectionString: url, max: CONCURRENCY, options: `-c search_path=${schema} -c tenancy.iid=${ID}` } as pg.PoolConfig)
  return { pool, prepared }
}
const variants: Record<string, Variant> = {
  'superuser': variant(server.url, 'rls_off', false),
  'role, no policies': variant(roleUrl.toString(), 'rls_off', false),
  'role, policies': variant(roleUrl.toString(), 'rls_on', false),
  'superuser, prepared': variant(server.url, 'rls_off', true),
  'role, policies, prepared': variant(roleUrl.toString(), 'rls_on', true),
}

async function throughput ({ pool, prepared }: Variant): Promise<number> {
  let done = 0
  const started = performance.now()
  const until = started + SECONDS * 1000
  await Promise.all(Array.from({ length: CONCURRENCY }, async (_, worker) => {
    let i = worker
    while (performance.now() < until) {
      const k = i++ % shapes.length
      const [text, values] = shapes[k]![1]()
      await pool.query(prepared ? { name: `shape_${k}`, text, values } : { text, values })
      done++
    }
  }))
  return done / ((performance.now() - started) / 1000)
}

const names = Object.keys(variants)
for (const name of names) await throughput(variants[name]!) // warm-up
const samples: Record<string, number[]> = Object.fromEntries(names.map((name) => [name, []]))
for (let round = 0; round < ROUNDS; round++) {
  for (let k = 0; k < names.length; k++) {
    const name = names[(round + k) % names.length]!
    samples[name]!.push(await throughput(variants[name]!))
  }
}

// Planning and execution per shape, one connection, the mean of EXPLAINS runs (the writes are rolled back).
async function explain (schema: string): Promise<Array<{ planning: number, execution: number }>> {
  const client = new pg.Client({ connectionString: roleUrl.toString(), options: `-c search_path=${schema} -c tenancy.iid=${ID}` } as pg.ClientConfig)
  await client.connect()
  const out = []
  for (const [, shape] of shapes) {
    let planning = 0
    let execution = 0
    for (let i = 0; i < EXPLAINS; i++) {
      const [text, values] = shape()
      await client.query('begin')
      const { rows } = await client.query({ text: `explain (analyze, summary, format json) ${text}`, values })
      await client.query('rollback')
      const plan = (rows[0] as Record<string, Array<{ 'Planning Time': number, 'Execution Time': number }>>)['QUERY PLAN']![0]!
      planning += plan['Planning Time']
      execution += plan['Execution Time']
    }
    out.push({ planning: planning * 1000 / EXPLAINS, execution: execution * 1000 / EXPLAINS })
  }
  await client.end()
  return out
}
const without = await explain('rls_off')
const withPolicies = await explain('rls_on')

const version = (await admin.query('show server_version')).rows[0].server_version
const load = (await import('node:os')).loadavg().map((value) => value.toFixed(1)).join(' ')
console.log(`# Row-level security on the server — Node ${process.version}, PostgreSQL ${version}, load average ${load}`)
console.log(`throughput: ${CONCURRENCY} concurrent callers, the six shapes in turn, ${SECONDS} s × ${ROUNDS} rotated rounds; medians`)
const base = median(samples.superuser!)
for (const name of names) {
  const qps = median(samples[name]!)
  console.log(`  ${name.padEnd(26)}${qps.toFixed(0).padStart(7)} q/s  ${(qps / base * 100).toFixed(1).padStart(6)} % of superuser`)
}
console.log(`planning / execution per statement, µs, as the role, mean of ${EXPLAINS} EXPLAIN (ANALYZE, SUMMARY):`)
console.log(`  ${'shape'.padEnd(14)}${'no policies'.padStart(16)}${'policies'.padStart(16)}`)
shapes.forEach(([label], k) => {
  const cell = (value: { planning: number, execution: number }): string => `${value.planning.toFixed(0)} / ${value.execution.toFixed(0)}`.padStart(16)
  console.log(`  ${label.padEnd(14)}${cell(without[k]!)}${cell(withPolicies[k]!)}`)
})

for (const { pool } of Object.values(variants)) await pool.end()
await admin.query(`drop schema rls_off cascade; drop schema rls_on cascade; drop role ${role}`)
await admin.end()
await server.stop()
