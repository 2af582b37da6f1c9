// The tenant filter's cost. 1) Compile time of a realistic set of queries with
// the plugin vs the same queries with `where iid =` written by hand (target
// ≤ 1.3×). 2) End-to-end queries per second on PostgreSQL: hand-written, with
// the plugin, and with the plugin plus `rls` (target ≥ 97% of hand-written).
// Baselines are measured in the same run, interleaved. Uses DATABASE_URL, or
// starts an embedded PostgreSQL.
//   npm run bench:rewrite
import path from 'node:path'
import { rm } from 'node:fs/promises'
import pg from 'pg'
import { Kysely, PostgresDialect, sql, type Compilable } from 'kysely'
import { createTenancy, rowLevelSecurityStatements, TenantFilterPlugin, runAsInstance } from '../lib/index.js'
import { pathToFileURL } from 'node:url'
import type { EmbeddedServer } from '../scripts/embedded-postgres.js'

interface DB {
  student: { id: number, iid: number, name: string, course_id: number | null }
  course: { id: number, iid: number, title: string }
}
const ID = 2
const COMPILE_ROUNDS = 20_000
const E2E_SECONDS = Number(process.env.BENCH_SECONDS ?? 3)
const CONCURRENCY = 8

let server: EmbeddedServer | undefined
let url = process.env.DATABASE_URL
if (!url) {
  // Run from dist/bench/: the script is plain JavaScript outside the build.
  const root = path.resolve(import.meta.dirname, '..', '..')
  const { startEmbeddedPostgres } = await import(pathToFileURL(path.join(root, 'scripts', 'embedded-postgres.js')).href) as typeof import('../scripts/embedded-postgres.js')
  const dir = path.join(root, '.data', `bench-rewrite-${process.pid}`)
  server = await startEmbeddedPostgres({ dir })
  url = server.url
}
const admin = new pg.Client({ connectionString: url })
await admin.connect()
await admin.query(`
  drop table if exists student, course;
  create table course (id int not null, iid int not null, title text not null, primary key (iid, id));
  create table student (id int not null, iid int not null, name text not null, course_id int, primary key (iid, id));
  insert into course select c, i, 'course ' || c from generate_series(1, 20) c, generate_series(1, 50) i;
  insert into student select s, i, 'student ' || s, s % 20 + 1 from generate_series(1, 200) s, generate_series(1, 50) i;
  analyze;
  drop role if exists bench_app; create role bench_app login password 'bench' nosuperuser nobypassrls;
  grant select, insert, update, delete on student, course to bench_app;`)
for (const statement of rowLevelSecurityStatements({ student: 'must', course: 'must' })) await admin.query(statement)
const appUrl = new URL(url)
appUrl.username = 'bench_app'
appUrl.password = 'bench'

const tables = { student: 'must', course: 'must' } as const
const hand = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: CONCURRENCY }) }) })
const filtered = hand.withPlugin(new TenantFilterPlugin({ tables }))
// Both sides run as the application role; the policies are bypassed by the
// table owner only without FORCE, so hand-written and plugin runs see RLS cost too
// unless the session setting says unscoped: they run as the superuser instead.
const instances = [{ name: '', id: 1 }, { name: 'b', id: ID }]
const rlsTenancy = await createTenancy({ instances, datasources: { default: appUrl.toString() }, tables, rls: true, pool: { max: CONCURRENCY } })
const rls = rlsTenancy.kysely<DB>()

// A realistic mix: point lookups, a join, a subquery, an aggregate, an update, an upsert.
const queries = (db: Kysely<DB>, byHand: boolean): Array<() => Compilable & { execute: () => Promise<unknown> }> => {
  const own = <Q extends { where: (...args: any[]) => Q }>(q: Q, ref: string): Q => byHand ? q.where(ref as never, '=', ID as never) : q
  return [
    () => own(db.selectFrom('student').selectAll().where('id', '=', 17), 'student.iid'),
    () => own(db.selectFrom('student as s').innerJoin('course as c', (j) => byHand ? j.onRef('c.id', '=', 's.course_id').on('c.iid', '=', ID) : j.onRef('c.id', '=', 's.course_id'))
      .select(['s.id', 's.name', 'c.title']).where('s.id', '<', 10), 's.iid'),
    () => own(db.selectFrom('course').select('title').where('id', 'in', own(db.selectFrom('student').select('course_id').where('id', '<', 5), 'student.iid')), 'course.iid'),
    () => own(db.selectFrom('student').select(({ fn }) => ['course_id', fn.countAll().as('n')]).groupBy('course_id'), 'student.iid'),
    () => own(db.updateTable('student').set({ name: sql`name` }).where('id', '=', 3), 'student.iid'),
    () => db.insertInto('course').values(byHand ? { id: 1, iid: ID, title: 'course 1' } : { id: 1, title: 'course 1' } as never)
      .onConflict((oc) => byHand ? oc.columns(['iid', 'id']).doUpdateSet({ title: 'course 1' }).where('course.iid', '=', ID) : oc.columns(['iid', 'id']).doUpdateSet({ title: 'course 1' })),
  ]
}

function cpuMillis (fn: () => void): number {
  const start = process.cpuUsage()
  fn()
  const used = process.cpuUsage(start)
  return (used.user + used.system) / 1000
}

function compileRun (set: ReturnType<typeof queries>): number {
  return cpuMillis(() => { for (let i = 0; i < COMPILE_ROUNDS; i++) for (const q of set) q().compile() })
}

const handSet = queries(hand, true)
const pluginSet = queries(filtered, false)
const compile = { hand: Infinity, plugin: Infinity }
await runAsInstance(ID, async () => {
  compileRun(handSet); compileRun(pluginSet) // warm-up
  for (let round = 0; round < 5; round++) {
    compile.hand = Math.min(compile.hand, compileRun(handSet))
    compile.plugin = Math.min(compile.plugin, compileRun(pluginSet))
  }
})

async function qps (set: ReturnType<typeof queries>): Promise<number> {
  let done = 0
  const until = performance.now() + E2E_SECONDS * 1000
  await runAsInstance(ID, async () => {
    await Promise.all(Array.from({ length: CONCURRENCY }, async (_, worker) => {
      let i = worker
      while (performance.now() < until) { await set[i++ % set.length]!().execute(); done++ }
    }))
  })
  return done / E2E_SECONDS
}

const rlsSet = queries(rls, false)
const e2e = { hand: 0, plugin: 0, rls: 0 }
await qps(handSet); await qps(pluginSet); await qps(rlsSet) // warm-up
for (let round = 0; round < 3; round++) {
  e2e.hand += await qps(handSet) / 3
  e2e.plugin += await qps(pluginSet) / 3
  e2e.rls += await qps(rlsSet) / 3
}

const statements = COMPILE_ROUNDS * handSet.length
console.log(`# Rewrite benchmark — Node ${process.version}, ${process.platform}/${process.arch}, PostgreSQL ${(await admin.query('show server_version')).rows[0].server_version}`)
console.log(`compile: ${statements} statements (${handSet.length} shapes × ${COMPILE_ROUNDS}), best of 5 rounds, CPU time`)
console.log(`  hand-written where iid =  ${compile.hand.toFixed(0)} ms  (${(compile.hand * 1000 / statements).toFixed(2)} µs/statement)`)
console.log(`  plugin                    ${compile.plugin.toFixed(0)} ms  (${(compile.plugin * 1000 / statements).toFixed(2)} µs/statement)`)
console.log(`  ratio plugin / hand       ${(compile.plugin / compile.hand).toFixed(2)}×  (target ≤ 1.30×)`)
console.log(`end to end: ${CONCURRENCY} concurrent callers, ${E2E_SECONDS} s × 3 interleaved rounds each, same mix`)
console.log(`  hand-written              ${e2e.hand.toFixed(0)} q/s`)
console.log(`  plugin                    ${e2e.plugin.toFixed(0)} q/s  (${(e2e.plugin / e2e.hand * 100).toFixed(1)}% of hand-written, target ≥ 97%)`)
console.log(`  plugin + rls (app role)   ${e2e.rls.toFixed(0)} q/s  (${(e2e.rls / e2e.hand * 100).toFixed(1)}% of hand-written)`)

await hand.destroy()
await rlsTenancy.close()
await admin.query('drop table if exists student, course; drop role if exists bench_app')
await admin.end()
if (server) { await server.stop(); await rm(server.dir, { recursive: true, force: true }) }
