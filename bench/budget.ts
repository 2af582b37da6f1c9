// Connection budget benchmark, in one run against one PostgreSQL server:
// N isolated instances (one database each, default 200) read by CONCURRENCY
// jobs, the instance of each read drawn Zipf-distributed (s = 1) or uniformly,
// under a budget of B connections (maxConnections, default 40 and 80) with
// pools of max 2. Baselines in the same rounds:
//   shared   the same reads on N shared instances in one pool of B connections
//   pools    the pool LRU the budget replaces: maxPools = B / 2, no budget
// and the physical limit of each budgeted line, computed from what this run
// measured: a read that finds no idle connection of its database opens one
// at the rate R connections can be opened in parallel (measured here on its
// own, right after), so with m the run's own miss rate (connections opened
// per read) each read costs the shared pool's time per read plus m / R:
//   limit = 1 / (1 / shared + m / R)
// Variants alternate within each round; medians are reported.
//
//   npm run bench:budget     # BENCH_INSTANCES=200 BENCH_BUDGETS=40,80 BENCH_OPS=6000 BENCH_CONCURRENCY=32 BENCH_ROUNDS=3
// Uses DATABASE_URL when set, otherwise starts an embedded PostgreSQL in .data/.
import os from 'node:os'
import pg from 'pg'
import { createTenancy, type Tenancy } from '../lib/index.js'
import { benchServer, picker, type Distribution, createItemFleet, median, withDatabase, type ItemFleet } from './bench-database.js'

const N = Number(process.env.BENCH_INSTANCES ?? 200)
const BUDGETS = (process.env.BENCH_BUDGETS ?? '40,80').split(',').map(Number)
const OPS = Number(process.env.BENCH_OPS ?? 6000)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const POOL_MAX = 2

interface DB { item: { id: number, iid: number, v: number } }

/** Reads per second of `ops` single-row reads by CONCURRENCY jobs. */
async function throughput (tenancy: Tenancy, names: string[], ids: number[], distribution: Distribution, seed: number, ops = OPS): Promise<number> {
  const db = tenancy.kysely<DB>()
  const next = picker(distribution, N, seed)
  let done = 0
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (done < ops) {
      done++
      const i = next()
      await tenancy.runAsInstance(names[i]!, async () => {
        const row = await db.selectFrom('item').select('v').where('iid', '=', ids[i]!).where('v', '=', 1 + (done % 10)).executeTakeFirst()
        if (row === undefined) throw new Error('missing row')
      })
    }
  }))
  return ops / (Number(process.hrtime.bigint() - start) / 1e9)
}

/**
 * Connections opened (connect, first statement, close) per second by
 * `parallel` jobs at once, over the instances' databases in turn: the rate
 * the server and this process sustain, which bounds a workload that must
 * open connections (a serial connect's latency would not: connects share the
 * cores).
 */
async function connectRate (urls: string[], parallel: number, total: number): Promise<number> {
  let next = 0
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < total) {
      const client = new pg.Client({ connectionString: urls[next++ % urls.length] })
      await client.connect()
      await client.query('select 1')
      await client.end()
    }
  }))
  return total / (Number(process.hrtime.bigint() - start) / 1e9)
}

async function main (): Promise<void> {
  const server = await benchServer('bench-budget')
  const url = server.url
  let fleet: ItemFleet | undefined
  try {
    fleet = await createItemFleet(url, 'budget', N)
    const { databases, sharedUrl, names, ids, datasources, isolatedInstances, sharedInstances } = fleet
    const pool = { max: POOL_MAX, connectionTimeoutMillis: 120_000, idleTimeoutMillis: 120_000 }
    const make = async (variant: string, budget: number): Promise<Tenancy> => {
      if (variant === 'shared') return await createTenancy({ instances: sharedInstances, datasources: { default: sharedUrl }, tables: { item: 'must' }, pool: { ...pool, max: budget } })
      if (variant === 'pools') return await createTenancy({ instances: isolatedInstances, datasources, tables: { item: 'must' }, maxPools: budget / POOL_MAX, pool })
      return await createTenancy({ instances: isolatedInstances, datasources, tables: { item: 'must' }, maxConnections: budget, pool })
    }

    const databaseUrls = databases.map((name) => withDatabase(url, name))
    await connectRate(databaseUrls, 8, 100) // warm
    console.log(`# Node.js ${process.version}, PostgreSQL ${process.env.DATABASE_URL ? 'from DATABASE_URL' : 'embedded'}, ${os.cpus().length} cores, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, ${new Date().toISOString()}`)
    console.log(`# N=${N} isolated instances, pools of max ${POOL_MAX}, ${OPS} reads x ${ROUNDS} rounds, concurrency ${CONCURRENCY}`)
    for (const distribution of ['zipf', 'uniform'] as const) {
      for (const budget of BUDGETS) {
        const variants = ['shared', 'budget', 'pools'] as const
        const rates: Record<string, number[]> = { shared: [], budget: [], pools: [] }
        const misses: Record<string, number[]> = { budget: [], pools: [] }
        for (let round = 0; round < ROUNDS; round++) {
          for (let k = 0; k < variants.length; k++) {
            const variant = variants[(k + round) % variants.length]!
            const tenancy = await make(variant, budget)
            try {
              await throughput(tenancy, names, ids, distribution, 11 + round, Math.ceil(OPS / 3)) // warm: connections, JIT
              const before = variant === 'budget' ? tenancy.pools.counts().budget!.evictions : tenancy.pools.evictions
              const openBefore = tenancy.pools.counts().open
              const rate = await throughput(tenancy, names, ids, distribution, 101 + round)
              rates[variant]!.push(rate)
              if (variant !== 'shared') {
                const after = variant === 'budget' ? tenancy.pools.counts().budget!.evictions : tenancy.pools.evictions
                // Budget: each eviction is one connection closed for one opened. Pools: each evicted pool held up to 2.
                const opened = variant === 'budget' ? (after - before) + Math.max(0, tenancy.pools.counts().open - openBefore) : (after - before) * POOL_MAX
                misses[variant]!.push(opened / OPS)
              }
            } finally {
              await tenancy.close()
            }
          }
        }
        const shared = median(rates.shared!)
        const budgeted = median(rates.budget!)
        const lru = median(rates.pools!)
        const m = median(misses.budget!)
        const connects = await connectRate(databaseUrls, Math.min(budget, CONCURRENCY), 400)
        // Each read costs the shared pool's time per read, plus m connects at the rate the server sustains.
        const limit = 1 / (1 / shared + m / connects)
        console.log(`${distribution.padEnd(7)} budget ${String(budget).padStart(3)}: shared pool ${shared.toFixed(0).padStart(6)} reads/s | budget ${budgeted.toFixed(0).padStart(6)} reads/s, ${(budgeted / shared).toFixed(2)}x shared, miss rate ${(m * 100).toFixed(1)} %, ${connects.toFixed(0)} connects/s, limit ${limit.toFixed(0)} reads/s, ${(budgeted / limit).toFixed(2)}x limit | pool LRU (maxPools ${budget / POOL_MAX}) ${lru.toFixed(0).padStart(6)} reads/s, ${(lru / shared).toFixed(2)}x shared, ~${(median(misses.pools!) * 100).toFixed(1)} % of reads opened a connection`)
      }
    }
  } finally {
    await fleet?.drop()
    await server.stop()
  }
}

await main()
