// Connection budget benchmark, in one run against one PostgreSQL server:
// N isolated instances (one database each, default 200) read by CONCURRENCY
// jobs, the instance of each read drawn Zipf-distributed (s = 1) or uniformly,
// under a budget of B connections (maxConnections, default 40 and 80) with
// pools of max 2. Baselines in the same rounds:
//   shared   the same reads on N shared instances in one pool of B connections
//   pools    the pool LRU the budget replaces: maxPools = B / 2, no budget
//   grow0    the budget with growAfterMillis 0: a datasource with connections
//            closes another's idle one at once instead of waiting for its own
// and the physical limit of each budgeted line, computed from what this run
// measured: a read that finds no idle connection of its database opens one
// at the rate R connections can be opened in parallel (measured here on its
// own, right after: connect, the same read, close, by as many jobs at once
// as the budget lets connect, with the budget's other connections held open),
// so with m the run's own miss rate (connections opened per read) each read
// costs the shared pool's time per read plus m / R:
//   limit = 1 / (1 / shared + m / R)
// It also prints how many connects were under way at once on average
// (Little's law: connects per second times their mean duration).
// and the floor of the miss rate for reads that each connect on their own:
// with one connection kept open for each of the B most read databases and
// the others opened on demand, a fraction 1 - (the B most read databases'
// share of reads) of the reads must open a connection (Zipf: 1 - H(B) / H(N);
// uniform: 1 - B / N), so
//   best = 1 / (1 / shared + floor / R)
// Reads that wait for the same database at once share its connect, so a few
// databases under many callers can go below the floor; over many cold
// databases such reads are rare.
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
const DISTRIBUTIONS = (process.env.BENCH_DISTRIBUTIONS ?? 'zipf,uniform').split(',') as Distribution[]
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
 * cores). With `read`, the first statement is the workload's own read, so a
 * connection's cold caches (the table's and index's catalog entries, loaded
 * by each new server process) count as they do in a miss; with `held`, that
 * many other connections stay open meanwhile, as the budget's do.
 */
async function connectRate (urls: string[], ids: number[], parallel: number, total: number, { read = false, held = 0 } = {}): Promise<number> {
  const kept = await Promise.all(Array.from({ length: held }, async (_, k) => {
    const client = new pg.Client({ connectionString: urls[urls.length - 1 - (k % urls.length)] })
    await client.connect()
    return client
  }))
  try {
    let next = 0
    // The budget does not wait for a close before it opens the next connection
    // (pg-pool ends a destroyed client in the background), so neither does this;
    // the closes still finish within the time measured.
    const ends: Array<Promise<void>> = []
    const start = process.hrtime.bigint()
    await Promise.all(Array.from({ length: parallel }, async () => {
      while (next < total) {
        const k = next++ % urls.length
        const client = new pg.Client({ connectionString: urls[k] })
        await client.connect()
        if (read) await client.query('select v from item where iid = $1 and v = $2', [ids[k], 1 + (next % 10)])
        else await client.query('select 1')
        ends.push(client.end())
      }
    }))
    await Promise.all(ends)
    return total / (Number(process.hrtime.bigint() - start) / 1e9)
  } finally {
    await Promise.all(kept.map(async (client) => await client.end()))
  }
}

/** H(n) = 1 + 1/2 + … + 1/n: under Zipf (s = 1) over N, the n most read get H(n) / H(N) of the reads. */
function harmonic (n: number): number {
  let sum = 0
  for (let k = 1; k <= n; k++) sum += 1 / k
  return sum
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
      if (variant === 'grow0') return await createTenancy({ instances: isolatedInstances, datasources, tables: { item: 'must' }, maxConnections: budget, growAfterMillis: 0, pool })
      return await createTenancy({ instances: isolatedInstances, datasources, tables: { item: 'must' }, maxConnections: budget, pool })
    }

    const databaseUrls = databases.map((name) => withDatabase(url, name))
    await connectRate(databaseUrls, ids, 8, 100) // warm
    console.log(`# Node.js ${process.version}, PostgreSQL ${process.env.DATABASE_URL ? 'from DATABASE_URL' : 'embedded'}, ${os.cpus().length} cores, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, ${new Date().toISOString()}`)
    console.log(`# N=${N} isolated instances, pools of max ${POOL_MAX}, ${OPS} reads x ${ROUNDS} rounds, concurrency ${CONCURRENCY}`)
    for (const distribution of DISTRIBUTIONS) {
      for (const budget of BUDGETS) {
        const variants = ['shared', 'budget', 'grow0', 'pools'] as const
        const rates: Record<string, number[]> = { shared: [], budget: [], grow0: [], pools: [] }
        const misses: Record<string, number[]> = { budget: [], grow0: [], pools: [] }
        // The budget's running mean of its connect times (its default growAfterMillis), after each run.
        const connectMillis: number[] = []
        for (let round = 0; round < ROUNDS; round++) {
          for (let k = 0; k < variants.length; k++) {
            const variant = variants[(k + round) % variants.length]!
            const tenancy = await make(variant, budget)
            try {
              await throughput(tenancy, names, ids, distribution, 11 + round, Math.ceil(OPS / 3)) // warm: connections, JIT
              const before = tenancy.pools.connects
              const rate = await throughput(tenancy, names, ids, distribution, 101 + round)
              rates[variant]!.push(rate)
              if (variant !== 'shared') {
                misses[variant]!.push((tenancy.pools.connects - before) / OPS)
                if (variant === 'budget') connectMillis.push(tenancy.pools.counts().budget!.growAfterMillis)
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
        const parallel = Math.min(budget, CONCURRENCY)
        const bare = await connectRate(databaseUrls, ids, parallel, 400)
        // A miss as the budget meets it: the read on a new server process, with the budget's other connections open.
        const connects = await connectRate(databaseUrls, ids, parallel, 400, { read: true, held: budget - parallel })
        // Each read costs the shared pool's time per read, plus m connects at the rate the server sustains.
        const limit = 1 / (1 / shared + m / connects)
        // Little's law: connects opened per second times their mean duration is how many were under way at once.
        const inFlight = m * budgeted * median(connectMillis) / 1000
        const m0 = median(misses.grow0!)
        const grow0 = median(rates.grow0!)
        const top = distribution === 'zipf' ? harmonic(budget) / harmonic(N) : budget / N
        const best = 1 / (1 / shared + Math.max(0, 1 - top) / connects)
        console.log(`${distribution.padEnd(7)} budget ${String(budget).padStart(3)}: shared pool ${shared.toFixed(0).padStart(6)} reads/s | budget ${budgeted.toFixed(0).padStart(6)} reads/s, ${(budgeted / shared).toFixed(2)}x shared, miss rate ${(m * 100).toFixed(1)} %, ${connects.toFixed(0)} connects/s with the read (${bare.toFixed(0)} with select 1 alone), limit ${limit.toFixed(0)} reads/s, ${(budgeted / limit).toFixed(2)}x limit, connects ${median(connectMillis).toFixed(0)} ms each, ${inFlight.toFixed(1)} under way at once (of ${parallel} measured) | grow at once ${grow0.toFixed(0).padStart(6)} reads/s, miss rate ${(m0 * 100).toFixed(1)} % | floor ${(Math.max(0, 1 - top) * 100).toFixed(1)} % misses, best ${best.toFixed(0)} reads/s = ${(best / shared).toFixed(2)}x shared | pool LRU (maxPools ${budget / POOL_MAX}) ${lru.toFixed(0).padStart(6)} reads/s, ${(lru / shared).toFixed(2)}x shared, miss rate ${(median(misses.pools!) * 100).toFixed(1)} %`)
      }
    }
  } finally {
    await fleet?.drop()
    await server.stop()
  }
}

await main()
