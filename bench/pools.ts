// Pools benchmark, in one run against one PostgreSQL server:
//   isolated   N isolated instances (one database each), random access by
//              concurrent jobs, maxPools < N, so pools are closed and reopened
//   allopen    the same with maxPools = N: the cost of eviction alone
//   shared     the same load on N shared instances in one pool holding the
//              same number of connections (maxPools × max): the baseline
//   memory     JS heap per open pool holding one connected client
//   switch     one connection alternating between two schema instances
//              (SET search_path on every checkout) against one schema instance
//              (no statement): the cost of a schema switch
//   session    the same schema lines with the session check on (every statement
//              text classified) and off (SessionState.prototype.observe replaced
//              by a no-op), in alternating blocks of 50 queries within one run;
//              the check alone per statement text (a builder
//              text, a remembered one, a new one that is parsed); and a
//              statement that changes the session on every checkout, so every
//              checkout opens a new connection
// Throughput variants alternate within each round; medians are reported.
//
//   npm run bench:pools        # BENCH_INSTANCES=50 BENCH_MAX_POOLS=10 BENCH_OPS=4000 BENCH_CONCURRENCY=32 BENCH_ROUNDS=3
// Uses DATABASE_URL when set, otherwise starts an embedded PostgreSQL in .data/.
import { sql } from 'kysely'
import { createTenancy, SessionState, type Tenancy } from '../lib/index.js'
import { changesSession } from '../lib/routing/session-state.js'
import { benchServer, createItemFleet, median, run, type ItemFleet } from './bench-database.js'

const N = Number(process.env.BENCH_INSTANCES ?? 50)
const MAX_POOLS = Number(process.env.BENCH_MAX_POOLS ?? 10)
const OPS = Number(process.env.BENCH_OPS ?? 4000)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const POOL_MAX = 2
const SWITCH_OPS = Number(process.env.BENCH_SWITCH_OPS ?? 3000)

interface DB { item: { id: number, iid: number, v: number } }


/** Ops per second of OPS random single-row reads by CONCURRENCY jobs. */
async function throughput (tenancy: Tenancy, names: string[], ids: number[]): Promise<number> {
  const db = tenancy.kysely<DB>()
  let next = 0
  let seed = 7
  const random = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const start = process.hrtime.bigint()
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < OPS) {
      next++
      const i = Math.floor(random() * names.length)
      await tenancy.runAsInstance(names[i]!, async () => {
        const row = await db.selectFrom('item').select('v').where('iid', '=', ids[i]!).where('v', '=', 1 + (next % 10)).executeTakeFirst()
        if (row === undefined) throw new Error('missing row')
      })
    }
  }))
  return OPS / (Number(process.hrtime.bigint() - start) / 1e9)
}

async function main (): Promise<void> {
  const server = await benchServer('bench-pools')
  const url = server.url
  const tenancies: Tenancy[] = []
  let fleet: ItemFleet | undefined
  try {
    fleet = await createItemFleet(url, 'bench', N)
    const { sharedUrl, names, ids, datasources, isolatedInstances, sharedInstances } = fleet
    await run(sharedUrl, `create schema s_a; create table s_a.item (like public.item including all); insert into s_a.item select * from public.item;
      create schema s_b; create table s_b.item (like public.item including all); insert into s_b.item select * from public.item`)
    const make = async (variant: string): Promise<Tenancy> => {
      const tenancy = variant === 'shared'
        ? await createTenancy({ instances: sharedInstances, datasources: { default: sharedUrl }, pool: { max: MAX_POOLS * POOL_MAX, connectionTimeoutMillis: 60000 } })
        : await createTenancy({ instances: isolatedInstances, datasources, maxPools: variant === 'allopen' ? N + 1 : MAX_POOLS, pool: { max: POOL_MAX, connectionTimeoutMillis: 60000 } })
      tenancies.push(tenancy)
      return tenancy
    }

    const variants = ['shared', 'isolated', 'allopen'] as const
    const results: Record<string, number[]> = { shared: [], isolated: [], allopen: [] }
    const evictions: number[] = []
    for (let round = 0; round < ROUNDS; round++) {
      for (let k = 0; k < variants.length; k++) {
        const variant = variants[(k + round) % variants.length]!
        const tenancy = await make(variant)
        await throughput(tenancy, names, ids) // warm: pools, connections, JIT
        const before = tenancy.pools.evictions
        results[variant]!.push(await throughput(tenancy, names, ids))
        if (variant === 'isolated') evictions.push(tenancy.pools.evictions - before)
        await tenancy.close()
      }
    }

    // Memory: N pools, each with one connected idle client.
    const gc = (globalThis as { gc?: () => void }).gc
    let perPool = NaN
    let perPoolExternal = NaN
    if (gc) {
      // A first pass warms the code paths (and pg's type parsers), so only pools and clients are counted.
      const warm = await make('allopen')
      for (const name of names) await warm.runAsInstance(name, async () => { await sql`select 1`.execute(warm.kysely()) })
      await warm.close()
      const tenancy = await make('allopen')
      const db = tenancy.kysely<DB>()
      await sql`select 1`.execute(db) // the Kysely itself, outside the measure
      gc(); gc()
      const before = process.memoryUsage()
      for (const name of names) await tenancy.runAsInstance(name, async () => { await sql`select 1`.execute(db) })
      gc(); gc()
      const after = process.memoryUsage()
      perPool = (after.heapUsed - before.heapUsed) / N
      perPoolExternal = (after.external - before.external) / N
      if (tenancy.pools.counts().pools !== N + 1) throw new Error(`expected ${N + 1} pools open (default included), saw ${tenancy.pools.counts().pools}`)
      await tenancy.close()
    }

    // Schema switch: one connection, sequential queries.
    const schemaTenancy = await createTenancy({
      instances: [{ name: '', id: 1 }, { name: 'a', id: 1000, schema: 's_a' }, { name: 'b', id: 1000 + 1, schema: 's_b' }],
      datasources: { default: sharedUrl },
      pool: { max: 1 },
    })
    tenancies.push(schemaTenancy)
    const sdb = schemaTenancy.kysely<DB>()
    const perQuery = async (pattern: string[]): Promise<number> => {
      const start = process.hrtime.bigint()
      for (let n = 0; n < SWITCH_OPS; n++) {
        await schemaTenancy.runAsInstance(pattern[n % pattern.length]!, async () => { await sdb.selectFrom('item').select('v').where('id', '=', 1).executeTakeFirst() })
      }
      return Number(process.hrtime.bigint() - start) / 1e3 / SWITCH_OPS
    }
    const same: number[] = []
    const alternating: number[] = []
    await perQuery(['a', 'b'])
    for (let round = 0; round < ROUNDS; round++) {
      same.push(await perQuery(['a']))
      alternating.push(await perQuery(['a', 'b']))
    }
    // The session check on and off in alternating blocks of 50 queries, so that
    // drift in the machine's load falls on both alike; µs per query for each.
    const observe = SessionState.prototype.observe
    const paired = async (pattern: string[]): Promise<{ on: number, off: number }> => {
      const BLOCK = 50
      const blocks = 2 * Math.max(1, Math.floor(SWITCH_OPS / BLOCK / 2))
      let on = 0n
      let off = 0n
      for (let b = 0; b < blocks; b++) {
        const checked = b % 2 === 0
        if (!checked) SessionState.prototype.observe = () => {}
        const start = process.hrtime.bigint()
        try {
          for (let n = 0; n < BLOCK; n++) {
            await schemaTenancy.runAsInstance(pattern[(b * BLOCK + n) % pattern.length]!, async () => { await sdb.selectFrom('item').select('v').where('id', '=', 1).executeTakeFirst() })
          }
        } finally {
          SessionState.prototype.observe = observe
        }
        if (checked) on += process.hrtime.bigint() - start
        else off += process.hrtime.bigint() - start
      }
      const per = BLOCK * (blocks / 2) * 1e3
      return { on: Number(on) / per, off: Number(off) / per }
    }
    const sameOnOff: Array<{ on: number, off: number }> = []
    const alternatingOnOff: Array<{ on: number, off: number }> = []
    for (let round = 0; round < ROUNDS; round++) {
      sameOnOff.push(await paired(['a']))
      alternatingOnOff.push(await paired(['a', 'b']))
    }

    // A statement that changes the session on every checkout: each release destroys the connection.
    const destroying: number[] = []
    const DESTROY_OPS = Math.max(1, Math.floor(SWITCH_OPS / 10))
    for (let round = 0; round < ROUNDS; round++) {
      const start = process.hrtime.bigint()
      for (let n = 0; n < DESTROY_OPS; n++) {
        await schemaTenancy.runAsInstance('a', async () => { await sql`select v from item where id = 1; reset search_path`.execute(sdb) })
      }
      destroying.push(Number(process.hrtime.bigint() - start) / 1e3 / DESTROY_OPS)
    }
    await schemaTenancy.close()

    // The check alone, on texts built beforehand, each a new string as a compiled query is (so its
    // hash is computed): a builder text (no parse: a plain data statement), a text that needs the
    // parser and was seen before (a remembered verdict), and texts seen for the first time (parsed).
    const CHECKS = 20000
    const perCheck = (texts: string[]): number => {
      const start = process.hrtime.bigint()
      for (const text of texts) if (changesSession(text)) throw new Error('unexpected verdict')
      return Number(process.hrtime.bigint() - start) / texts.length
    }
    const copies = (parts: string[], count: number): string[] => Array.from({ length: count }, () => parts.join(''))
    const builderParts = ['select "v" from "item" where "iid" = $1', ' and "v" = $2 order by "id" limit $3']
    const parsedParts = ['select set_config(\'tenancy.x\', $1, true)', ', "v" from "item" where "iid" = $2']
    let fresh = 0
    const newTexts = (): string[] => Array.from({ length: CHECKS / 10 }, () => `${parsedParts.join('')} offset ${fresh++}`)
    perCheck(copies(builderParts, CHECKS))
    perCheck(copies(parsedParts, CHECKS))
    perCheck(newTexts())
    const builderCheck = median(Array.from({ length: ROUNDS }, () => perCheck(copies(builderParts, CHECKS))))
    const remembered = median(Array.from({ length: ROUNDS }, () => perCheck(copies(parsedParts, CHECKS))))
    const parsed = median(Array.from({ length: ROUNDS }, () => perCheck(newTexts())))

    const shared = median(results.shared!)
    const isolated = median(results.isolated!)
    const allopen = median(results.allopen!)
    const s = median(same)
    const a = median(alternating)
    console.log(`# Node.js ${process.version}, PostgreSQL ${server ? 'embedded' : 'from DATABASE_URL'}, ${new Date().toISOString()}`)
    console.log(`# N=${N} isolated instances, maxPools=${MAX_POOLS}, max=${POOL_MAX} per pool (shared pool max=${MAX_POOLS * POOL_MAX}), ${OPS} ops x ${ROUNDS} rounds, concurrency ${CONCURRENCY}`)
    console.log(`shared pool, N shared instances     ${shared.toFixed(0).padStart(8)} ops/s`)
    console.log(`isolated, maxPools=${MAX_POOLS} < N        ${isolated.toFixed(0).padStart(8)} ops/s   ratio to shared ${(isolated / shared).toFixed(2)}   (${median(evictions)} pool evictions per ${OPS} ops)`)
    console.log(`isolated, maxPools=N (no eviction)   ${allopen.toFixed(0).padStart(8)} ops/s   ratio to shared ${(allopen / shared).toFixed(2)}`)
    console.log(`memory per open pool (1 client)      ${Number.isNaN(perPool) ? 'run with node --expose-gc' : `${(perPool / 1024).toFixed(1)} KB JS heap + ${(perPoolExternal / 1024).toFixed(1)} KB external (buffers); each also holds one server backend`}`)
    console.log(`schema, no switch                    ${s.toFixed(1).padStart(8)} µs/query`)
    console.log(`schema, switch on every checkout     ${a.toFixed(1).padStart(8)} µs/query   ratio ${(a / s).toFixed(2)} (+${(a - s).toFixed(1)} µs)`)
    const onOff = (pairs: Array<{ on: number, off: number }>, what: string): void => {
      const on = median(pairs.map((p) => p.on))
      const off = median(pairs.map((p) => p.off))
      const ratio = median(pairs.map((p) => p.on / p.off))
      console.log(`${what} ${on.toFixed(1).padStart(8)} µs/query with the session check, ${off.toFixed(1)} without: on/off ${ratio.toFixed(3)} (median of ${pairs.length} paired runs)`)
    }
    onOff(sameOnOff, 'schema, no switch, check on | off  ')
    onOff(alternatingOnOff, 'schema, switch, check on | off     ')
    const d = median(destroying)
    console.log(`session changed on every checkout    ${d.toFixed(1).padStart(8)} µs/query   ratio to no switch ${(d / s).toFixed(2)} (a new connection each time)`)
    console.log(`session check, builder text          ${builderCheck.toFixed(0).padStart(8)} ns/statement (not parsed)`)
    console.log(`session check, remembered text       ${remembered.toFixed(0).padStart(8)} ns/statement`)
    console.log(`session check, new text (parsed)     ${(parsed / 1000).toFixed(1).padStart(8)} µs/statement`)
  } finally {
    for (const tenancy of tenancies) await tenancy.close().catch(() => {})
    await fleet?.drop()
    await server.stop()
  }
}

await main()
