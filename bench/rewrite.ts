// The tenant filter's cost. 1) Compile time of a realistic set of queries with
// the plugin vs the same queries with `where iid =` written by hand (target
// ≤ 1.3×). 2) End-to-end queries per second on PostgreSQL: hand-written, with
// the plugin, and with the plugin plus `rls` (target ≥ 97% of hand-written).
// Baselines are measured in the same run, interleaved. Uses DATABASE_URL, or
// starts an embedded PostgreSQL.
//   npm run bench:rewrite
import path from 'node:path'
import { PerformanceObserver } from 'node:perf_hooks'
import { rm } from 'node:fs/promises'
import pg from 'pg'
import { Kysely, PostgresDialect, type KyselyPlugin, type PluginTransformQueryArgs, type PluginTransformResultArgs, type QueryResult, type RootOperationNode, type UnknownRow } from 'kysely'
import { createTenancy, currentContext, currentInstance, rowLevelSecurityStatements, InstanceFilterPlugin, DEFAULT_POOL_SETTINGS, PoolManager, RoutingPool, SessionState, type Tenancy } from '../lib/index.js'
import { RoutedClient } from '../lib/routing/routed-client.js'
import { pathToFileURL } from 'node:url'
import type { EmbeddedServer } from '../scripts/embedded-postgres.js'
import { basePool, courseStudentQueries, courseStudentTables, type CourseStudentDB } from './bench-database.js'

type DB = CourseStudentDB
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
  ${courseStudentTables()}
  drop role if exists bench_app; create role bench_app login password 'bench' nosuperuser nobypassrls;
  grant select, insert, update, delete on student, course to bench_app;`)
for (const statement of rowLevelSecurityStatements({ student: 'must', course: 'must' })) await admin.query(statement)
const appUrl = new URL(url)
appUrl.username = 'bench_app'
appUrl.password = 'bench'

const tables = { student: 'must', course: 'must' } as const
// Every pool keeps its connections between its samples: with pg's default
// idle timeout (10 s) a variant's connections closed while the others ran,
// and a sample began with 8 connects, or not, as the shuffled order fell.
const IDLE = { idleTimeoutMillis: 600_000 }
// The socket reads of the pool that hand-written, the plugin and the no-op
// plugin share: whether a variant gets its replies in more, smaller reads
// (more event-loop turns per query) is what its client CPU could hide.
let socketReads = 0
const sharedPool = basePool({ connectionString: url, max: CONCURRENCY, ...IDLE })
sharedPool.on('connect', (client) => { (client as unknown as { connection: { stream: NodeJS.EventEmitter } }).connection.stream.on('data', () => { socketReads++ }) })
const hand = new Kysely<DB>({ dialect: new PostgresDialect({ pool: sharedPool }) })
// The same queries on a pg pool with the settings the tenancy gives its own
// pools (a checkout timeout, which pg-pool arms and clears on every checkout,
// and allowExitOnIdle): how much of tenancy.kysely()'s cost is the pool's settings.
const handSettings = new Kysely<DB>({ dialect: new PostgresDialect({ pool: basePool({ ...DEFAULT_POOL_SETTINGS, connectionString: url, max: CONCURRENCY, ...IDLE }) }) })
// The like-for-like baseline of the prepared variant: hand-written, each text
// with parameters sent as a named statement, as pg does when given a name.
const handNames = new Map<string, string>()
const handPool = basePool({ connectionString: url, max: CONCURRENCY, ...IDLE })
const nameOf = (text: string): string => handNames.get(text) ?? handNames.set(text, `hand_${handNames.size + 1}`).get(text)!
const handPrepared = new Kysely<DB>({
  dialect: new PostgresDialect({
    pool: {
      connect: async () => {
        const client = await handPool.connect()
        return {
          query: (text: string, values?: unknown[]) => values !== undefined && values.length > 0 ? client.query({ name: nameOf(text), text, values }) : client.query(text, values),
          release: () => { client.release() },
        }
      },
      end: async () => { await handPool.end() },
    } as never,
  }),
})
const filtered = hand.withPlugin(new InstanceFilterPlugin({ tables }))
// The hand-written queries on a routing pool of their own (no filter): what the
// routing pool costs on this mix, apart from the filter.
const routedHand = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(new PoolManager({ default: url }, { pool: { max: CONCURRENCY, ...IDLE } })) }) })
// Both sides run as the application role; the policies are bypassed by the
// table owner only without FORCE, so hand-written and plugin runs see RLS cost too
// unless the session setting says unscoped: they run as the superuser instead.
const instances = [{ name: '', id: 1 }, { name: 'b', id: ID }]
const rlsTenancy = await createTenancy({ instances, datasources: { default: appUrl.toString() }, tables, rls: true, pool: { max: CONCURRENCY, ...IDLE } })
const rls = rlsTenancy.kysely<DB>()
// The same with `preparedStatements`: each text planned once per connection.
const rlsPreparedTenancy = await createTenancy({ instances, datasources: { default: appUrl.toString() }, tables, rls: true, preparedStatements: true, pool: { max: CONCURRENCY, ...IDLE } })
const rlsPrepared = rlsPreparedTenancy.kysely<DB>()
// What an application uses: the tenancy's own Kysely (routing pool and filter), as the same user as hand-written.
const plainTenancy = await createTenancy({ instances, datasources: { default: url }, tables, pool: { max: CONCURRENCY, ...IDLE } })
const tenancyDb = plainTenancy.kysely<DB>()
const preparedTenancy = await createTenancy({ instances, datasources: { default: url }, tables, preparedStatements: true, pool: { max: CONCURRENCY, ...IDLE } })
const tenancyPreparedDb = preparedTenancy.kysely<DB>()

const queries = (db: Kysely<DB>, byHand: boolean): ReturnType<typeof courseStudentQueries> => courseStudentQueries(db, byHand, ID)

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
// tenancy.kysely()'s own filter reads the tenancy's frames and its discovered tables through functions.
const tenancySet = queries(tenancyDb, false)
const compile = { hand: Infinity, plugin: Infinity, tenancy: Infinity }
await plainTenancy.runAsInstance(ID, async () => {
  compileRun(handSet); compileRun(pluginSet); compileRun(tenancySet) // warm-up
  for (let round = 0; round < 5; round++) {
    compile.hand = Math.min(compile.hand, compileRun(handSet))
    compile.plugin = Math.min(compile.plugin, compileRun(pluginSet))
    compile.tenancy = Math.min(compile.tenancy, compileRun(tenancySet))
  }
})

// The same mix executed through Kysely on a pool whose one client answers
// every query at once with no rows: the client's work per query apart from
// the server and the socket (compile, Kysely's execution path, the plugin's
// transformResult), by the same 8 callers. Best of 5 rounds.
const EXECUTE_ROUNDS = 20_000
const answer = { command: 'SELECT', rowCount: 0, rows: [] }
const instantClient = { query: async () => answer, release: () => {} }
const instant = new Kysely<DB>({ dialect: new PostgresDialect({ pool: { connect: async () => instantClient, end: async () => {} } as never }) })
// The filter's transformQuery timed inside each query, with no server here and
// end to end below: the same code on the same trees, so a difference between
// the two is what running between round trips does to it. The timer's own
// two performance.now() calls cost about 0.1 µs.
class TimedFilter implements KyselyPlugin {
  readonly #filter = new InstanceFilterPlugin({ tables })
  millis = 0
  calls = 0
  transformQuery (args: PluginTransformQueryArgs): RootOperationNode {
    const start = performance.now()
    const node = this.#filter.transformQuery(args)
    this.millis += performance.now() - start
    this.calls++
    return node
  }

  async transformResult (args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> { return await this.#filter.transformResult(args) }
  reset (): void { this.millis = this.calls = 0 }
  micros (): number { return this.millis * 1000 / this.calls }
}
// The same for the pool: a wrapper that times the pool's connect (call to
// resolution), the client's query (the call, up to the promise pg returns) and
// its release, around a pg pool and around a routing pool. The difference
// between the two, end to end and in a checkout loop with nothing sent, is the
// routing pool's own cost in each setting. One wrapper per client, as Kysely
// keeps one connection object per client.
interface PoolClientLike { query: (...args: any[]) => any, release: (destroy?: boolean) => void }
interface PoolLike { connect: () => Promise<PoolClientLike>, end: () => Promise<void> }
class TimedPool {
  readonly #inner: PoolLike
  readonly #clients = new WeakMap<object, PoolClientLike>()
  connectMillis = 0
  queryMillis = 0
  releaseMillis = 0
  checkouts = 0
  queries = 0
  constructor (inner: unknown) { this.#inner = inner as PoolLike }
  async connect (): Promise<unknown> {
    const start = performance.now()
    const client = await this.#inner.connect()
    this.connectMillis += performance.now() - start
    this.checkouts++
    let timed = this.#clients.get(client)
    if (timed === undefined) {
      timed = {
        query: (...args: any[]) => {
          const begun = performance.now()
          const result = client.query(...args)
          this.queryMillis += performance.now() - begun
          this.queries++
          return result
        },
        release: (destroy?: boolean) => {
          const begun = performance.now()
          client.release(destroy)
          this.releaseMillis += performance.now() - begun
        },
      }
      this.#clients.set(client, timed)
    }
    return timed
  }

  async end (): Promise<void> { await this.#inner.end() }
  reset (): void { this.connectMillis = this.queryMillis = this.releaseMillis = this.checkouts = this.queries = 0 }
  /**
   * Wall µs per checkout of connect (across its awaits, so with whatever the
   * other callers ran meanwhile), of release and of both; wall µs per query of
   * the query call (for pg, mostly the socket write of the statement).
   */
  micros (): { connect: number, release: number, checkout: number, query: number } {
    const connect = this.connectMillis * 1000 / this.checkouts
    const release = this.releaseMillis * 1000 / this.checkouts
    return { connect, release, checkout: connect + release, query: this.queries === 0 ? 0 : this.queryMillis * 1000 / this.queries }
  }
}
const timedPgPool = new TimedPool(basePool({ connectionString: url, max: CONCURRENCY, ...IDLE }))
const timedRoutingPool = new TimedPool(new RoutingPool(new PoolManager({ default: url }, { pool: { max: CONCURRENCY, ...IDLE } })))
const timedPg = new Kysely<DB>({ dialect: new PostgresDialect({ pool: timedPgPool as never }) })
const timedRouted = new Kysely<DB>({ dialect: new PostgresDialect({ pool: timedRoutingPool as never }) })
const instantTimed = new TimedFilter()
const e2eTimed = new TimedFilter()
// The routed client's statement path on that client (the transaction guard,
// observe, the async function around pg's call): eight RoutedClients, one per
// caller at a time, each around the client that answers at once.
await SessionState.load()
const instantPg = { ...instantClient, on: () => {}, getTransactionStatus: () => 'I' }
const freeRouted: RoutedClient[] = []
for (let i = 0; i < CONCURRENCY; i++) {
  const client: RoutedClient = new RoutedClient(instantPg as never, new SessionState(), () => { freeRouted.push(client) }, currentContext)
  freeRouted.push(client)
}
const routedInstant = new Kysely<DB>({
  dialect: new PostgresDialect({
    pool: {
      connect: async () => {
        const client = freeRouted.pop()!
        client.checkout({ client: instantPg, datasource: 'default' } as never, currentInstance())
        return client
      },
      end: async () => {},
    } as never,
  }),
})
const instantSets = { hand: queries(instant, true), routed: queries(routedInstant, true), plugin: queries(instant.withPlugin(new InstanceFilterPlugin({ tables })), false), timed: queries(instant.withPlugin(instantTimed), false) }
async function executeRun (set: ReturnType<typeof queries>): Promise<number> {
  const start = process.cpuUsage()
  let i = 0
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (i < EXECUTE_ROUNDS) await set[i++ % set.length]!().execute()
  }))
  const used = process.cpuUsage(start)
  return (used.user + used.system) / EXECUTE_ROUNDS
}
const executed = { hand: Infinity, routed: Infinity, plugin: Infinity }
await plainTenancy.runAsInstance(ID, async () => {
  await executeRun(instantSets.hand); await executeRun(instantSets.routed); await executeRun(instantSets.plugin) // warm-up
  for (let round = 0; round < 5; round++) {
    executed.hand = Math.min(executed.hand, await executeRun(instantSets.hand))
    executed.routed = Math.min(executed.routed, await executeRun(instantSets.routed))
    executed.plugin = Math.min(executed.plugin, await executeRun(instantSets.plugin))
  }
  await executeRun(instantSets.timed) // warm-up
  instantTimed.reset()
  for (let round = 0; round < 5; round++) await executeRun(instantSets.timed)
})

// The two timed pools in a checkout loop with nothing sent (an idle connection
// is always there, so nothing waits for the network), 5 rounds each,
// alternating. One caller: with more, a connect's time across its awaits
// would hold the others' work too.
const CHECKOUT_ROUNDS = 20_000
async function checkoutRun (db: Kysely<DB>): Promise<void> {
  for (let i = 0; i < CHECKOUT_ROUNDS; i++) await db.connection().execute(async () => {})
}
const checkoutLoop = await plainTenancy.runAsInstance(ID, async () => {
  await checkoutRun(timedPg); await checkoutRun(timedRouted) // warm-up: connections open, code compiled
  timedPgPool.reset(); timedRoutingPool.reset()
  for (let round = 0; round < 5; round++) { await checkoutRun(timedPg); await checkoutRun(timedRouted) }
  return { pg: timedPgPool.micros(), routed: timedRoutingPool.micros() }
})

interface Throughput { qps: number, cpu: number, gc: number, reads: number }

// Time spent in garbage collection (ms), from V8's gc entries: the filter's
// tree copy makes garbage, and a scavenge's cost grows with what is in flight.
let gcMillis = 0
new PerformanceObserver((list) => { for (const entry of list.getEntries()) gcMillis += entry.duration }).observe({ entryTypes: ['gc'] })

// Queries per second, and this process's CPU time per query: on a 2-core
// machine shared with the server the second is the steadier figure.
// Each tenancy reads only its own frames: the rls variant runs in rlsTenancy's,
// the others in plainTenancy's (the standalone plugin reads any frame).
async function qps (set: ReturnType<typeof queries>, tenancy: Tenancy = plainTenancy): Promise<Throughput> {
  let done = 0
  const started = performance.now()
  const until = started + E2E_SECONDS * 1000
  const cpu = process.cpuUsage()
  const gc = gcMillis
  const reads = socketReads
  await tenancy.runAsInstance(ID, async () => {
    await Promise.all(Array.from({ length: CONCURRENCY }, async (_, worker) => {
      let i = worker
      while (performance.now() < until) { await set[i++ % set.length]!().execute(); done++ }
    }))
  })
  const used = process.cpuUsage(cpu)
  // gc entries are delivered after the collection: let those of this sample arrive.
  await new Promise((resolve) => setImmediate(resolve))
  return { qps: done / ((performance.now() - started) / 1000), cpu: (used.user + used.system) / done, gc: (gcMillis - gc) * 1000 / done, reads: (socketReads - reads) / done }
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const rlsSet = queries(rls, false)
// The hand-written queries through a plugin that changes nothing: what Kysely's
// plugin path (a transformQuery call, an awaited transformResult) costs by itself.
const noop = hand.withPlugin({ transformQuery: (args) => args.node, transformResult: async (args) => args.result })
const variants = { hand: handSet, handNoop: queries(noop, true), routedHand: queries(routedHand, true), routedPlugin: queries(routedHand.withPlugin(new InstanceFilterPlugin({ tables })), false), handSettings: queries(handSettings, true), handPrepared: queries(handPrepared, true), plugin: pluginSet, pluginTimed: queries(hand.withPlugin(e2eTimed), false), pgTimed: queries(timedPg, true), routedTimed: queries(timedRouted, true), tenancy: tenancySet, tenancyPrepared: queries(tenancyPreparedDb, false), rls: rlsSet, rlsPrepared: queries(rlsPrepared, false) }
const samples = Object.fromEntries(Object.keys(variants).map((name): [string, Throughput[]] => [name, []])) as Record<keyof typeof variants, Throughput[]>
const tenancyOf = (name: keyof typeof variants): Tenancy => name === 'rls' ? rlsTenancy : name === 'rlsPrepared' ? rlsPreparedTenancy : name === 'tenancyPrepared' ? preparedTenancy : plainTenancy
for (const name of Object.keys(variants) as Array<keyof typeof variants>) await qps(variants[name], tenancyOf(name)) // warm-up
// The order is shuffled each round (seeded, printed): a rotation keeps every
// variant behind the same neighbour, and runs showed a variant's client CPU
// moving by 15 µs per query with the variant before it.
const SEED = Number(process.env.BENCH_SEED ?? Date.now() % 100_000)
let state = SEED
const random = (): number => { state = (state * 1103515245 + 12345) % 2147483648; return state / 2147483648 }
e2eTimed.reset()
timedPgPool.reset(); timedRoutingPool.reset()
for (let round = 0; round < ROUNDS; round++) {
  const names = Object.keys(variants) as Array<keyof typeof variants>
  for (let i = names.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[names[i], names[j]] = [names[j]!, names[i]!]
  }
  for (const name of names) samples[name].push(await qps(variants[name], tenancyOf(name)))
}
const e2e = Object.fromEntries(Object.entries(samples).map(([name, runs]) => [name, {
  qps: median(runs.map((run) => run.qps)),
  cpu: median(runs.map((run) => run.cpu)),
  gc: median(runs.map((run) => run.gc)),
  reads: median(runs.map((run) => run.reads)),
}])) as Record<keyof typeof variants, Throughput>

// Each round's own ratio to the hand-written line of that round, median over
// the rounds: a slow minute on the shared machine moves both sides of a pair.
// The hand-written queries on a pool with the tenancy's settings do the same
// work as the baseline: their ratio shows what a run's noise alone gives.
const paired = (name: keyof typeof variants): number => median(samples[name].map((run, round) => run.qps / samples.hand[round]!.qps)) * 100

const statements = COMPILE_ROUNDS * handSet.length
console.log(`# Rewrite benchmark — Node ${process.version}, ${process.platform}/${process.arch}, PostgreSQL ${(await admin.query('show server_version')).rows[0].server_version}`)
console.log(`compile: ${statements} statements (${handSet.length} shapes × ${COMPILE_ROUNDS}), best of 5 rounds, CPU time`)
console.log(`  hand-written where iid =  ${compile.hand.toFixed(0)} ms  (${(compile.hand * 1000 / statements).toFixed(2)} µs/statement)`)
console.log(`  plugin                    ${compile.plugin.toFixed(0)} ms  (${(compile.plugin * 1000 / statements).toFixed(2)} µs/statement)`)
console.log(`  ratio plugin / hand       ${(compile.plugin / compile.hand).toFixed(2)}×  (target ≤ 1.30×)`)
console.log(`  tenancy.kysely()          ${compile.tenancy.toFixed(0)} ms  (${(compile.tenancy * 1000 / statements).toFixed(2)} µs/statement, ${(compile.tenancy / compile.hand).toFixed(2)}× hand)`)
console.log(`executed with no server (a client that answers at once): ${EXECUTE_ROUNDS} queries by ${CONCURRENCY} callers, best of 5 rounds, CPU time`)
console.log(`  hand-written              ${executed.hand.toFixed(2)} µs/query`)
console.log(`  plugin                    ${executed.plugin.toFixed(2)} µs/query  (+${(executed.plugin - executed.hand).toFixed(2)} µs)`)
console.log(`  hand-written, routed client ${executed.routed.toFixed(2)} µs/query  (+${(executed.routed - executed.hand).toFixed(2)} µs: its statement path, no checkout)`)
console.log(`  the filter's transformQuery, timed in each query: ${instantTimed.micros().toFixed(2)} µs/query`)
console.log(`end to end: ${CONCURRENCY} concurrent callers, ${E2E_SECONDS} s × ${ROUNDS} rounds each in a shuffled order (BENCH_SEED=${SEED}), same mix; medians`)
const line = (label: string, run: Throughput, note: string): void => {
  console.log(`  ${label.padEnd(28)}${run.qps.toFixed(0).padStart(6)} q/s ${run.cpu.toFixed(1).padStart(6)} µs client CPU/query (${run.gc.toFixed(1)} in GC)${note}`)
}
line('hand-written', e2e.hand, '')
line('plugin', e2e.plugin, `  (${(e2e.plugin.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s, target ≥ 97%; CPU +${(e2e.plugin.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
line('plugin, timed', e2e.pluginTimed, `  (${(e2e.pluginTimed.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; its transformQuery ${e2eTimed.micros().toFixed(2)} µs/query, ` +
  `${(e2eTimed.micros() / instantTimed.micros()).toFixed(1)}× the same call with no server)`)
line('hand, a no-op plugin', e2e.handNoop, `  (${(e2e.handNoop.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; CPU +${(e2e.handNoop.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
line('hand, routing pool', e2e.routedHand, `  (${(e2e.routedHand.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; CPU +${(e2e.routedHand.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
line('plugin, routing pool', e2e.routedPlugin, `  (${(e2e.routedPlugin.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; CPU +${(e2e.routedPlugin.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
line('tenancy.kysely()', e2e.tenancy, `  (${(e2e.tenancy.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; CPU +${(e2e.tenancy.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
line('hand, tenancy pool settings', e2e.handSettings, `  (${(e2e.handSettings.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; CPU +${(e2e.handSettings.cpu - e2e.hand.cpu).toFixed(1)} µs; ` +
  `tenancy.kysely() is ${(e2e.tenancy.qps / e2e.handSettings.qps * 100).toFixed(1)}% of it)`)
line('tenancy.kysely() + rls', e2e.rls, `  (${(e2e.rls.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; CPU +${(e2e.rls.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
line('hand-written, prepared', e2e.handPrepared, `  (${(e2e.handPrepared.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s)`)
line('tenancy.kysely(), prepared', e2e.tenancyPrepared, `  (${(e2e.tenancyPrepared.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s; ` +
  `${(e2e.tenancyPrepared.qps / e2e.handPrepared.qps * 100).toFixed(1)}% of hand-written prepared; CPU +${(e2e.tenancyPrepared.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
line('+ rls, preparedStatements', e2e.rlsPrepared, `  (${(e2e.rlsPrepared.qps / e2e.hand.qps * 100).toFixed(1)}% of hand-written q/s, target ≥ 90%; ` +
  `${(e2e.rlsPrepared.qps / e2e.handPrepared.qps * 100).toFixed(1)}% of hand-written prepared; CPU +${(e2e.rlsPrepared.cpu - e2e.hand.cpu).toFixed(1)} µs)`)
const inSitu = { pg: timedPgPool.micros(), routed: timedRoutingPool.micros() }
const poolLine = (label: string, loop: ReturnType<TimedPool['micros']>, e2eRun: ReturnType<TimedPool['micros']>): void => {
  console.log(`    ${label.padEnd(14)} connect ${loop.connect.toFixed(2)} → ${e2eRun.connect.toFixed(2)} µs, release ${loop.release.toFixed(2)} → ${e2eRun.release.toFixed(2)} µs, query call ${e2eRun.query.toFixed(2)} µs`)
}
console.log('  the pools timed inside each query, wall µs: in a checkout loop with nothing sent, one caller → end to end (timed variants, hand-written mix; a connect there spans its awaits and what other callers ran meanwhile):')
poolLine('pg pool', checkoutLoop.pg, inSitu.pg)
poolLine('routing pool', checkoutLoop.routed, inSitu.routed)
console.log(`    routing pool − pg pool: checkout +${(checkoutLoop.routed.checkout - checkoutLoop.pg.checkout).toFixed(2)} µs in the loop, +${(inSitu.routed.checkout - inSitu.pg.checkout).toFixed(2)} µs end to end; ` +
  `release +${(inSitu.routed.release - inSitu.pg.release).toFixed(2)} and query call +${(inSitu.routed.query - inSitu.pg.query).toFixed(2)} µs end to end; ${e2e.pgTimed.qps.toFixed(0)} against ${e2e.routedTimed.qps.toFixed(0)} q/s, CPU +${(e2e.routedTimed.cpu - e2e.pgTimed.cpu).toFixed(1)} µs`)
console.log(`  socket reads per query on the pool they share: hand-written ${e2e.hand.reads.toFixed(3)}, plugin ${e2e.plugin.reads.toFixed(3)}, a no-op plugin ${e2e.handNoop.reads.toFixed(3)}`)
console.log(`  per-round ratios to hand-written, median of ${ROUNDS}: plugin ${paired('plugin').toFixed(1)}%, a no-op plugin ${paired('handNoop').toFixed(1)}%, tenancy.kysely() ${paired('tenancy').toFixed(1)}%, ` +
  `hand on a routing pool ${paired('routedHand').toFixed(1)}%, plugin on a routing pool ${paired('routedPlugin').toFixed(1)}%; the same work on other pool settings (noise alone) ${paired('handSettings').toFixed(1)}%`)

await hand.destroy()
await routedHand.destroy()
await timedPg.destroy()
await timedRouted.destroy()
await handSettings.destroy()
await rlsTenancy.close()
await rlsPreparedTenancy.close()
await preparedTenancy.close()
await handPrepared.destroy()
await plainTenancy.close()
await admin.query('drop table if exists student, course; drop role if exists bench_app')
await admin.end()
if (server) { await server.stop(); await rm(server.dir, { recursive: true, force: true }) }
