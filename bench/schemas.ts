// Many schema instances on one datasource: N schemas (default 1,000), each
// with its own `item` table, read by CONCURRENCY jobs through one routing pool
// of POOL_MAX connections, the instance of each read drawn Zipf-distributed
// (s = 1) or uniformly. A checkout whose connection carries another schema
// sends `SET search_path` first (a switch); the run prints how many checkouts
// switched, and the reads per second against the baseline: the same reads on
// one shared table with a hand-written `where iid =`, over a pg pool of the
// same size. A third variant reads the shared table the same way as shared
// instances of another tenancy whose routing pool gives each checkout a
// per-instance setting (`tenancy.iid`, what `rls` sends): a checkout whose
// connection carries another instance's value sends `set_config` first.
// Variants alternate within each round; medians are reported.
//   npm run bench:schemas        # BENCH_SCHEMAS=1000 BENCH_POOL=10 BENCH_OPS=6000 BENCH_CONCURRENCY=32 BENCH_ROUNDS=3
import os from 'node:os'
import { Kysely, PostgresDialect } from 'kysely'
import { createTenancy, RoutingPool } from '../lib/index.js'
import { basePool, benchServer, median, picker, run, type Distribution } from './bench-database.js'

const N = Number(process.env.BENCH_SCHEMAS ?? 1000)
const POOL_MAX = Number(process.env.BENCH_POOL ?? 10)
const OPS = Number(process.env.BENCH_OPS ?? 6000)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const ROWS = 10

interface DB { item: { id: number, iid: number, v: number } }

const server = await benchServer('bench-schemas')
const url = server.url
const started = performance.now()
await run(url, `drop table if exists item; create table item (id int not null, iid int not null, v int not null, primary key (iid, id));
  insert into item select r, i, r * i from generate_series(1, ${ROWS}) r, generate_series(1, ${N}) i; analyze item`)
// Schemas in batches: one text per 100, so that set-up takes seconds, not minutes.
for (let first = 0; first < N; first += 100) {
  const statements: string[] = []
  for (let i = first; i < Math.min(N, first + 100); i++) {
    statements.push(`drop schema if exists bench_s${i} cascade; create schema bench_s${i}; create table bench_s${i}.item (id int primary key, v int not null);
      insert into bench_s${i}.item select r, r * ${i + 1} from generate_series(1, ${ROWS}) r`)
  }
  await run(url, statements.join(';\n'))
}
const setUpSeconds = (performance.now() - started) / 1000

const instances = Array.from({ length: N }, (_, i) => ({ name: `s${i}`, id: i + 1, schema: `bench_s${i}` }))
const tenancy = await createTenancy({ instances: [{ name: '', id: N + 1 }, ...instances], datasources: { default: url }, tables: {}, pool: { max: POOL_MAX }, doctor: false })
// A routing pool of its own over the tenancy's pools, for its switch counters; the same as tenancy.kysely() without the filter (no tenant tables here).
const routing = new RoutingPool(tenancy.pools)
const schemaDb = new Kysely<DB>({ dialect: new PostgresDialect({ pool: routing }) })
// Shared instances with a per-instance setting: every switch of instance is a set_config, as under rls.
const settingTenancy = await createTenancy({ instances: Array.from({ length: N }, (_, i) => ({ name: `t${i}`, id: i + 1 })), datasources: { default: url }, tables: {}, pool: { max: POOL_MAX }, doctor: false })
const settingRouting = new RoutingPool(settingTenancy.pools, { context: () => settingTenancy.context(), settings: (context) => ({ 'tenancy.iid': String(context?.instance?.id ?? '') }) })
const settingDb = new Kysely<DB>({ dialect: new PostgresDialect({ pool: settingRouting }) })
const shared = new Kysely<DB>({ dialect: new PostgresDialect({ pool: basePool({ connectionString: url, max: POOL_MAX }) }) })

async function reads (read: (index: number) => Promise<unknown>, distribution: Distribution, seed: number): Promise<number> {
  const next = picker(distribution, N, seed)
  let done = 0
  const start = performance.now()
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (done < OPS) { done++; await read(next()) }
  }))
  return OPS / ((performance.now() - start) / 1000)
}
const schemaRead = async (index: number): Promise<unknown> => await tenancy.runAsInstance(index + 1, async () => await schemaDb.selectFrom('item').select('v').where('id', '=', 3).executeTakeFirst())
const settingRead = async (index: number): Promise<unknown> => await settingTenancy.runAsInstance(index + 1, async () => await settingDb.selectFrom('item').select('v').where('id', '=', 3).where('iid', '=', index + 1).executeTakeFirst())
const sharedRead = async (index: number): Promise<unknown> => await shared.selectFrom('item').select('v').where('id', '=', 3).where('iid', '=', index + 1).executeTakeFirst()

console.log(`# ${N} schema instances on one datasource, pool of ${POOL_MAX}, ${OPS} reads x ${ROUNDS} rounds, concurrency ${CONCURRENCY}`)
console.log(`# Node ${process.version}, ${os.cpus().length} cores, load average ${os.loadavg().map((v) => v.toFixed(1)).join(' ')}, set-up ${setUpSeconds.toFixed(0)} s`)
for (const distribution of ['zipf', 'uniform'] as const) {
  await reads(schemaRead, distribution, 1)
  await reads(sharedRead, distribution, 1)
  await reads(settingRead, distribution, 1)
  const schema: number[] = []
  const base: number[] = []
  const setting: number[] = []
  const switchShare: number[] = []
  const settingShare: number[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const before = routing.stats
    const settingBefore = settingRouting.stats
    const trio = [
      async () => { schema.push(await reads(schemaRead, distribution, round + 2)) },
      async () => { base.push(await reads(sharedRead, distribution, round + 2)) },
      async () => { setting.push(await reads(settingRead, distribution, round + 2)) },
    ]
    // A different order each round: each variant runs first, second and last.
    for (let k = 0; k < trio.length; k++) await trio[(k + round) % trio.length]!()
    const after = routing.stats
    const settingAfter = settingRouting.stats
    switchShare.push((after.sessionChanges - before.sessionChanges) / (after.checkouts - before.checkouts))
    settingShare.push((settingAfter.sessionChanges - settingBefore.sessionChanges) / (settingAfter.checkouts - settingBefore.checkouts))
  }
  const s = median(schema)
  const b = median(base)
  const p = median(setting)
  console.log(`${distribution.padEnd(8)} schema instances ${s.toFixed(0).padStart(7)} reads/s   shared table ${b.toFixed(0).padStart(7)} reads/s   ratio ${(s / b).toFixed(2)}   checkouts that switched schema ${(median(switchShare) * 100).toFixed(1)} %`)
  console.log(`${distribution.padEnd(8)} shared + setting  ${p.toFixed(0).padStart(7)} reads/s   shared table ${b.toFixed(0).padStart(7)} reads/s   ratio ${(p / b).toFixed(2)}   checkouts that changed the setting ${(median(settingShare) * 100).toFixed(1)} %`)
}

await settingDb.destroy()
await settingTenancy.close()
await schemaDb.destroy()
await shared.destroy()
await tenancy.close()
const drops: string[] = []
for (let i = 0; i < N; i++) drops.push(`drop schema bench_s${i} cascade`)
await run(url, drops.join(';') + '; drop table item')
await server.stop()
