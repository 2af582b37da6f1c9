// The routing pool's own cost per checkout, apart from the server. A checkout
// and release through Kysely (`db.connection().execute(…)` with nothing sent)
// never waits for the network when an idle connection is there, so its CPU
// time is steady where a query's is not: the difference between a plain pg
// pool and `tenancy.kysely()` is what the routing pool adds to every query
// outside a transaction. Then the same with one `select 1` sent through the
// connection (compiled once, so no filter runs): the statement path of the
// routed client (the session check, the lease), round trip included.
// Baselines in the same run, rounds rotated, best round per variant.
//   npm run bench:checkout
import os from 'node:os'
import { CompiledQuery, Kysely, PostgresDialect } from 'kysely'
import { createTenancy, DEFAULT_POOL_SETTINGS, type Tenancy } from '../lib/index.js'
import { basePool, benchServer, median } from './bench-database.js'

const CHECKOUTS = Number(process.env.BENCH_CHECKOUTS ?? 100_000)
const QUERIES = Number(process.env.BENCH_QUERIES ?? 20_000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const CONCURRENCY = 8
const ID = 2

const server = await benchServer('bench-checkout')
const url = server.url
const instances = [{ name: 'a', id: 1 }, { name: 'b', id: ID }]
const tables = { item: 'must' } as const
const tenancies: Record<string, Tenancy> = {
  plain: await createTenancy({ instances, datasources: { default: url }, tables, pool: { max: CONCURRENCY } }),
  rls: await createTenancy({ instances, datasources: { default: url }, tables, rls: true, pool: { max: CONCURRENCY } }),
  budget: await createTenancy({ instances, datasources: { default: url }, tables, maxConnections: CONCURRENCY, pool: { max: CONCURRENCY } }),
}
const dbs: Record<string, Kysely<unknown>> = {
  hand: new Kysely({ dialect: new PostgresDialect({ pool: basePool({ connectionString: url, max: CONCURRENCY }) }) }),
  handSettings: new Kysely({ dialect: new PostgresDialect({ pool: basePool({ ...DEFAULT_POOL_SETTINGS, connectionString: url, max: CONCURRENCY }) }) }),
  tenancy: tenancies.plain!.kysely(),
  rls: tenancies.rls!.kysely(),
  budget: tenancies.budget!.kysely(),
}
const tenancyOf = (name: string): Tenancy => tenancies[name === 'rls' || name === 'budget' ? name : 'plain']!
const select1 = CompiledQuery.raw('select 1')

/** CPU µs per operation of `count` operations by `CONCURRENCY` callers in the instance's context. */
async function cpuPer (name: string, count: number, work: (db: Kysely<unknown>) => Promise<unknown>): Promise<number> {
  const db = dbs[name]!
  const each = Math.ceil(count / CONCURRENCY)
  const run = async (): Promise<void> => {
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => { for (let i = 0; i < each; i++) await work(db) }))
  }
  const start = process.cpuUsage()
  await tenancyOf(name).runAsInstance(ID, run)
  const used = process.cpuUsage(start)
  return (used.user + used.system) / (each * CONCURRENCY)
}

const checkout = (db: Kysely<unknown>): Promise<unknown> => db.connection().execute(async () => {})
const query = (db: Kysely<unknown>): Promise<unknown> => db.executeQuery(select1)
const names = Object.keys(dbs)
const results: Record<string, { checkout: number[], query: number[] }> = Object.fromEntries(names.map((name) => [name, { checkout: [], query: [] }]))
for (const name of names) { await cpuPer(name, CHECKOUTS / 10, checkout); await cpuPer(name, QUERIES / 10, query) } // warm-up: connections open, code compiled
for (let round = 0; round < ROUNDS; round++) {
  for (let k = 0; k < names.length; k++) {
    const name = names[(round + k) % names.length]!
    results[name]!.checkout.push(await cpuPer(name, CHECKOUTS, checkout))
    results[name]!.query.push(await cpuPer(name, QUERIES, query))
  }
}

const version = (await dbs.hand!.executeQuery<{ server_version: string }>(CompiledQuery.raw('show server_version'))).rows[0]!.server_version
console.log(`# Checkout benchmark — Node ${process.version}, ${process.platform}/${process.arch}, ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, load ${os.loadavg()[0]!.toFixed(2)}, PostgreSQL ${version}`)
console.log(`${CONCURRENCY} concurrent callers; ${CHECKOUTS} checkouts and ${QUERIES} queries (select 1) per round, ${ROUNDS} rotated rounds; client CPU µs per operation, best round (median)`)
const best = (values: number[]): number => Math.min(...values)
const base = results.hand!
const labels: Record<string, string> = { hand: 'pg pool', handSettings: 'pg pool, tenancy settings', tenancy: 'tenancy.kysely()', rls: 'tenancy.kysely() + rls', budget: 'tenancy.kysely() + budget' }
for (const name of names) {
  const r = results[name]!
  const delta = (mine: number[], theirs: number[]): string => {
    const d = best(mine) - best(theirs)
    return name === 'hand' ? '' : ` (${d < 0 ? '−' : '+'}${Math.abs(d).toFixed(2)})`
  }
  console.log(`  ${labels[name]!.padEnd(27)} checkout ${best(r.checkout).toFixed(2).padStart(6)} (${median(r.checkout).toFixed(2)})${delta(r.checkout, base.checkout).padEnd(10)}` +
    `  checkout + select 1 ${best(r.query).toFixed(2).padStart(7)} (${median(r.query).toFixed(2)})${delta(r.query, base.query)}`)
}

for (const db of Object.values(dbs)) await db.destroy().catch(() => {})
for (const tenancy of Object.values(tenancies)) await tenancy.close()
await server.stop()
