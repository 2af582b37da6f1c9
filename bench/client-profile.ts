// Where the client's CPU goes per query: the point lookup of bench/rewrite.ts
// by 8 callers, hand-written (`where iid =`) or through tenancy.kysely(),
// under V8's sampling profiler, then the samples summed by package (this
// library, kysely, pg, pg-pool, node, native and GC) and by function. One
// variant per run, so each profile holds only its own work; run both.
//   npm run bench:client   (both variants, one after the other)
//   npm run build && node dist/bench/client-profile.js hand
//   npm run build && node dist/bench/client-profile.js tenancy
//   npm run build && node dist/bench/client-profile.js tenancy-checkout   (or hand-checkout)
// Writes .data/client-<variant>.cpuprofile (open it in Chrome's DevTools).
import path from 'node:path'
import { mkdir, writeFile } from 'node:fs/promises'
import { Session } from 'node:inspector/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { Kysely, PostgresDialect } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { basePool, benchServer } from './bench-database.js'

interface DB { pstudent: { id: number, iid: number, name: string } }
interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number } }
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }

// `…-checkout`: a checkout and release with nothing sent (bench/checkout.ts's
// first column), so the profile holds only the pool's path.
const VARIANTS = ['hand', 'tenancy', 'hand-checkout', 'tenancy-checkout'] as const
const variant = VARIANTS.find((name) => name === process.argv[2]) ?? 'hand'
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8)
const CONCURRENCY = 8
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

const server = await benchServer('bench-client-profile')
const admin = new pg.Client({ connectionString: server.url })
await admin.connect()
await admin.query(`drop table if exists pstudent; create table pstudent (id int not null, iid int not null, name text not null, primary key (iid, id));
  insert into pstudent select s, i, 'student ' || s from generate_series(1, 200) s, generate_series(1, 50) i; analyze pstudent`)
const hand = new Kysely<DB>({ dialect: new PostgresDialect({ pool: basePool({ connectionString: server.url, max: CONCURRENCY }) }) })
const tenancy = await createTenancy({ instances: [{ name: '', id: 1 }, { name: 'b', id: 2 }], datasources: { default: server.url }, tables: { pstudent: 'must' }, pool: { max: CONCURRENCY }, doctor: false })
const db = tenancy.kysely<DB>()
const queries = {
  hand: async () => await hand.selectFrom('pstudent').selectAll().where('id', '=', 17).where('pstudent.iid', '=', 2).execute(),
  tenancy: async () => await db.selectFrom('pstudent').selectAll().where('id', '=', 17).execute(),
  'hand-checkout': async () => { await hand.connection().execute(async () => {}) },
  'tenancy-checkout': async () => { await db.connection().execute(async () => {}) },
}
const query = queries[variant]

async function load (seconds: number): Promise<{ queries: number, cpu: number }> {
  let queries = 0
  const until = performance.now() + seconds * 1000
  const cpu = process.cpuUsage()
  await tenancy.runAsInstance(2, async () => await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() < until) { await query(); queries++ }
  })))
  const used = process.cpuUsage(cpu)
  return { queries, cpu: (used.user + used.system) / queries }
}

await load(2) // warm-up
const session = new Session()
session.connect()
await session.post('Profiler.enable')
await session.post('Profiler.setSamplingInterval', { interval: 200 })
await session.post('Profiler.start')
const run = await load(SECONDS)
const { profile } = await session.post('Profiler.stop') as unknown as { profile: Profile }
await mkdir(path.join(root, '.data'), { recursive: true })
await writeFile(path.join(root, '.data', `client-${variant}.cpuprofile`), JSON.stringify(profile))

const packageOf = (url: string): string => /\/(dist|\.bench-dist)\/lib\//.test(url) ? 'fastify-tenancy' : url.includes('/kysely/') ? 'kysely'
  : url.includes('/pg-pool/') ? 'pg-pool' : url.includes('/pg/') || url.includes('/pg-protocol/') ? 'pg' : url === '' ? 'native, GC, idle' : url.startsWith('node:') ? 'node' : 'other'
const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
const byPackage = new Map<string, number>()
const byFunction = new Map<string, number>()
let total = 0
profile.samples.forEach((id, i) => {
  const time = profile.timeDeltas[i] ?? 0
  const frame = nodes.get(id)!.callFrame
  total += time
  byPackage.set(packageOf(frame.url), (byPackage.get(packageOf(frame.url)) ?? 0) + time)
  const name = `${frame.functionName || '(anonymous)'} ${frame.url.split('/').slice(-2).join('/')}:${frame.lineNumber + 1}`
  byFunction.set(name, (byFunction.get(name) ?? 0) + time)
})
const share = (time: number): string => `${(time / total * 100).toFixed(2).padStart(6)} %`
console.log(`# client profile, ${variant} — Node ${process.version}, ${run.queries} queries in ${SECONDS} s, ${run.cpu.toFixed(1)} µs CPU/query (with the profiler on)`)
for (const [name, time] of [...byPackage].sort((a, b) => b[1] - a[1])) console.log(`${share(time)}  ${name}`)
console.log('# top functions (self time)')
for (const [name, time] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${share(time)}  ${name}`)
console.log('# this library\'s functions')
for (const [name, time] of [...byFunction].filter(([name]) => /\b(routing|filter|resolve|instances)\/|context\.js|tenancy\.js/.test(name)).sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${share(time)}  ${name}`)

await hand.destroy()
await tenancy.close()
await admin.query('drop table pstudent')
await admin.end()
await server.stop()
