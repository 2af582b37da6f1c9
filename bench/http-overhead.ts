// HTTP overhead of the plugin on a hello-world route, measured as the server
// process's own CPU time per request (process.cpuUsage() in the server, over a
// fixed number of requests: steadier than req/s on a shared machine) and as
// requests per second. Variants:
//   bare     Fastify alone
//   plugin   fastify-tenancy: header resolution, context, request.instance read in the handler
//   reqctx   @fastify/request-context, with an onRequest hook that sets the instance name from the header
//   alsrun   a bare onRequest hook: header → Map lookup → decorated request.instance → als.run(instance, done)
// Every server process first loads kysely and pg (see PRELOAD below).
// The tenancy gets `tables: {}` so createTenancy does not read the catalog:
// no database is needed (pools are lazy). Each variant runs in its own child process; autocannon runs in this process,
// so the load generator's CPU is not counted against any server. Variants
// alternate within each round (the order rotates); the medians are reported.
//
//   npm run bench:http                       # BENCH_REQUESTS=20000 BENCH_ROUNDS=6 BENCH_CONNECTIONS=10
//   node --cpu-prof dist/bench/http-overhead.js --server plugin   # one server, for profiling
import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createRequire } from 'node:module'
import os from 'node:os'
import { AsyncLocalStorage } from 'node:async_hooks'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance } from 'fastify'

const VARIANTS = ['bare', 'plugin', 'reqctx', 'alsrun'] as const
type Variant = typeof VARIANTS[number]
const INSTANCES = Array.from({ length: 20 }, (_, i) => ({ name: i === 0 ? '' : `instance${i}`, id: i + 1 }))
const HEADER = 'x-instance-name'
const NAME = 'instance7'

// ---------------------------------------------------------------- server side

async function buildServer (variant: Variant): Promise<FastifyInstance> {
  return await buildServerOn(Fastify(), variant)
}

async function buildServerOn (app: FastifyInstance, variant: Variant): Promise<FastifyInstance> {
  switch (variant) {
    case 'bare':
      app.get('/', async () => ({ hello: 'world' }))
      break
    case 'plugin': {
      const { tenancy, createTenancy } = await import('../plugin/index.js')
      const t = await createTenancy({ instances: INSTANCES, datasources: { default: process.env.DATABASE_URL ?? 'postgres://localhost/none' }, tables: {} })
      await app.register(tenancy, { tenancy: t, resolve: { headerField: HEADER } })
      app.get('/', async (request) => ({ hello: request.instance!.name === NAME ? 'world' : 'wrong' }))
      break
    }
    case 'reqctx': {
      const { fastifyRequestContext } = await import('@fastify/request-context')
      await app.register(fastifyRequestContext)
      app.addHook('onRequest', (request, _reply, done) => {
        request.requestContext.set('instance' as never, request.headers[HEADER] as never)
        done()
      })
      app.get('/', async (request) => ({ hello: request.requestContext.get('instance' as never) === NAME ? 'world' : 'wrong' }))
      break
    }
    case 'alsrun': {
      const als = new AsyncLocalStorage<{ name: string }>()
      const byName = new Map(INSTANCES.map((instance) => [instance.name, instance]))
      app.decorateRequest('benchInstance', null)
      app.addHook('onRequest', (request, _reply, done) => {
        const name = request.headers[HEADER]
        const instance = typeof name === 'string' ? byName.get(name) : byName.get('')
        ;(request as unknown as { benchInstance: unknown }).benchInstance = instance
        als.run(instance!, done)
      })
      app.get('/', async (request) => ({ hello: (request as unknown as { benchInstance: { name: string } }).benchInstance.name === NAME && als.getStore()?.name === NAME ? 'world' : 'wrong' }))
      break
    }
  }
  return app
}

// Every server loads what an application of this library loads anyway (Kysely
// and pg), so that the variants differ only in per-request work: loading those
// modules alone was measured to add about 3 µs to every request of a
// hello-world server on Node 24, whatever its hooks. BENCH_PRELOAD=0 turns it off.
const PRELOAD = process.env.BENCH_PRELOAD !== '0'

async function serve (variant: Variant): Promise<void> {
  if (PRELOAD) {
    await import('kysely')
    await import('pg')
  }
  const app = await buildServer(variant)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  if (!process.send) {
    console.log(`${variant} listening on http://127.0.0.1:${port}/ (send ${HEADER}: ${NAME}); Ctrl-C to stop`)
    process.on('SIGINT', () => { void app.close().then(() => process.exit(0)) })
    return
  }
  process.on('message', (message: string) => {
    if (message === 'cpu') process.send!({ cpu: process.cpuUsage() })
    if (message === 'stop') void app.close().then(() => process.exit(0))
  })
  process.send({ port })
}

// ------------------------------------------- the onRequest hook on its own
// The HTTP numbers carry the noise of a shared machine; the cost the plugin
// adds beyond a bare als.run hook is far smaller, so it is also measured on
// the hook alone: each variant's onRequest hook called directly with a
// request-shaped object (no logger), CPU ns per call.

type Hook = (request: unknown, reply: unknown, done: () => void) => void

async function hookOf (variant: 'plugin' | 'alsrun'): Promise<Hook> {
  const app = Fastify()
  const hooks: Hook[] = []
  const addHook = app.addHook.bind(app)
  ;(app as unknown as { addHook: unknown }).addHook = (name: string, fn: Hook) => {
    if (name === 'onRequest') hooks.push(fn)
    return addHook(name as 'onRequest', fn as never)
  }
  const built = await buildServerOn(app, variant)
  await built.ready()
  return hooks.at(-1)!
}

async function hookCost (calls: number): Promise<Record<'plugin' | 'alsrun', number>> {
  const best = { plugin: Infinity, alsrun: Infinity }
  const hooks = { plugin: await hookOf('plugin'), alsrun: await hookOf('alsrun') }
  const log = { child () { return this } }
  const reply = { log }
  let count = 0
  const done = (): void => { count++ }
  for (let round = 0; round < 5; round++) {
    for (const variant of ['plugin', 'alsrun'] as const) {
      const hook = hooks[variant]
      const before = process.cpuUsage()
      for (let i = 0; i < calls; i++) {
        hook({ headers: { [HEADER]: NAME, host: 'localhost' }, query: {}, url: '/', hostname: 'localhost', log, instance: null, instanceName: null, benchInstance: null }, reply, done)
      }
      const used = process.cpuUsage(before)
      best[variant] = Math.min(best[variant], (used.user + used.system) * 1000 / calls)
    }
  }
  if (count !== calls * 10) throw new Error('a hook did not call done()')
  return best
}

// ------------------------------------------------------------------ load side

interface AutocannonResult { requests: { total: number }, non2xx: number, errors: number, timeouts: number }
type Autocannon = (options: Record<string, unknown>) => Promise<AutocannonResult>

interface Server { variant: Variant, child: ChildProcess, port: number }

async function start (variant: Variant): Promise<Server> {
  const child = fork(fileURLToPath(import.meta.url), ['--server', variant], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const [message] = await once(child, 'message') as [{ port: number }]
  return { variant, child, port: message.port }
}

async function cpuOf (server: Server): Promise<number> {
  server.child.send('cpu')
  const [message] = await once(server.child, 'message') as [{ cpu: NodeJS.CpuUsage }]
  return message.cpu.user + message.cpu.system
}

async function load (autocannon: Autocannon, server: Server, amount: number, connections: number): Promise<{ cpuPerRequest: number, rps: number }> {
  const cpuBefore = await cpuOf(server)
  const started = process.hrtime.bigint()
  const result = await autocannon({
    url: `http://127.0.0.1:${server.port}/`,
    headers: { [HEADER]: NAME },
    amount,
    connections,
    pipelining: 1,
    // autocannon stops at a sampling tick: a short interval keeps the wall time (req/s) honest.
    sampleInt: 20,
  })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const cpu = await cpuOf(server) - cpuBefore
  if (result.non2xx !== 0 || result.errors !== 0 || result.timeouts !== 0) {
    throw new Error(`${server.variant}: ${result.non2xx} non-2xx, ${result.errors} errors, ${result.timeouts} timeouts`)
  }
  return { cpuPerRequest: cpu / result.requests.total, rps: result.requests.total / seconds }
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

async function main (): Promise<void> {
  const amount = Number(process.env.BENCH_REQUESTS ?? 20_000)
  const rounds = Number(process.env.BENCH_ROUNDS ?? 6)
  const connections = Number(process.env.BENCH_CONNECTIONS ?? 10)
  const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon

  const servers: Server[] = []
  for (const variant of VARIANTS) servers.push(await start(variant))
  try {
    // Check that every variant answers what it should before measuring.
    for (const server of servers) {
      const res = await fetch(`http://127.0.0.1:${server.port}/`, { headers: { [HEADER]: NAME } })
      const body = await res.json() as { hello: string }
      if (res.status !== 200 || body.hello !== 'world') throw new Error(`${server.variant} answered ${res.status} ${JSON.stringify(body)}`)
    }
    // Warm-up: JIT and connection set-up, not counted.
    for (const server of servers) await load(autocannon, server, Math.max(5000, amount / 2), connections)

    const samples = new Map<Variant, Array<{ cpuPerRequest: number, rps: number }>>(VARIANTS.map((v) => [v, []]))
    for (let round = 0; round < rounds; round++) {
      const order = VARIANTS.map((_, i) => servers[(i + round) % servers.length]!)
      const line: string[] = []
      for (const server of order) {
        const sample = await load(autocannon, server, amount, connections)
        samples.get(server.variant)!.push(sample)
        line.push(`${server.variant} ${sample.cpuPerRequest.toFixed(1)} µs ${Math.round(sample.rps)}/s`)
      }
      console.log(`round ${round + 1}/${rounds}: ${line.join(' | ')}`)
    }

    const cpu = (v: Variant): number => median(samples.get(v)!.map((s) => s.cpuPerRequest))
    const rps = (v: Variant): number => median(samples.get(v)!.map((s) => s.rps))
    console.log('')
    console.log(`Node ${process.version}, ${os.cpus()[0]?.model ?? 'unknown CPU'} × ${os.cpus().length}, ${os.platform()} ${os.release()}, servers preload kysely and pg: ${PRELOAD ? 'yes' : 'no'}`)
    console.log(`${amount} requests × ${rounds} rounds per variant, ${connections} connections, medians over rounds; server CPU = user + system of the server process`)
    console.log('')
    console.log('| variant | server CPU µs/request | req/s |')
    console.log('| --- | ---: | ---: |')
    const label: Record<Variant, string> = {
      bare: 'bare Fastify',
      plugin: 'fastify-tenancy plugin',
      reqctx: '@fastify/request-context',
      alsrun: 'bare als.run onRequest hook',
    }
    for (const v of VARIANTS) console.log(`| ${label[v]} | ${cpu(v).toFixed(1)} | ${Math.round(rps(v))} |`)
    console.log('')
    console.log(`bare/plugin CPU per request: ${(cpu('bare') / cpu('plugin')).toFixed(3)} (target ≥ 0.95)`)
    console.log(`plugin beyond a bare als.run hook: ${(cpu('plugin') - cpu('alsrun')).toFixed(2)} µs/request (plugin/als.run CPU ${(cpu('plugin') / cpu('alsrun')).toFixed(3)})`)
    console.log(`plugin vs @fastify/request-context: ${(cpu('plugin') - cpu('reqctx')).toFixed(2)} µs/request`)
    console.log(`req/s bare/plugin: ${(rps('bare') / rps('plugin')).toFixed(3)}, als.run/plugin: ${(rps('alsrun') / rps('plugin')).toFixed(3)}`)
    const hook = await hookCost(Number(process.env.BENCH_HOOK_CALLS ?? 1_000_000))
    console.log(`onRequest hook alone (best of 5 × ${process.env.BENCH_HOOK_CALLS ?? 1_000_000} calls): plugin ${hook.plugin.toFixed(0)} ns, als.run ${hook.alsrun.toFixed(0)} ns, difference ${(hook.plugin - hook.alsrun).toFixed(0)} ns/request`)
  } finally {
    for (const server of servers) server.child.send('stop')
    await Promise.all(servers.map(async (server) => { if (server.child.exitCode === null) await once(server.child, 'exit') }))
  }
}

const at = process.argv.indexOf('--server')
if (at !== -1) {
  const variant = process.argv[at + 1] as Variant
  if (!VARIANTS.includes(variant)) throw new Error(`--server wants one of ${VARIANTS.join(', ')}`)
  await serve(variant)
} else {
  await main()
}
