// The plugin on real sockets: keep-alive and pipelined requests for different
// instances on one connection, hundreds of concurrent requests, the port
// resolver, and fastify.close() ending the tenancy's pools (checked on the
// server in pg_stat_activity).
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import http from 'node:http'
import net from 'node:net'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { sql } from 'kysely'
import tenancy, { currentContext, currentInstance } from '../plugin/index.js'
import { adminQuery, createDatabase } from './helpers/database.js'

const url = await createDatabase(t, 'plugin_sockets')
const instances = [{ name: '', id: 1 }, ...Array.from({ length: 40 }, (_, i) => ({ name: `i${i}`, id: i + 2 }))]
const names = instances.map((i) => i.name)

/** The instance name the context holds: `null` in host context, `'-'` with no context. */
function here (): string | null {
  const context = currentContext()
  if (context === undefined) return '-'
  return context.kind === 'host' ? null : context.instance?.name ?? null
}

/** An app that echoes what the context holds in the handler, after awaits, and in its hooks and error handler. */
async function echoApp (): Promise<{ app: FastifyInstance, port: number, connections: () => number, hookSeen: Array<[string | null, string | null]> }> {
  const app = Fastify({ keepAliveTimeout: 10_000 })
  await app.register(tenancy, { instances, datasources: { default: url } })
  const hookSeen: Array<[string | null, string | null]> = []
  app.addHook('onResponse', (request, _reply, done) => { hookSeen.push([request.instanceName, here()]); done() })
  app.setErrorHandler(async (err, _request, reply) => reply.code((err as { statusCode?: number }).statusCode ?? 500).send({ code: (err as { code?: string }).code, context: here() }))
  app.get('/', async (request) => {
    const seen = [here()]
    const rounds = Math.floor(Math.random() * 4)
    for (let i = 0; i < rounds; i++) {
      const pick = Math.random()
      if (pick < 0.4) await sleep(Math.floor(Math.random() * 3))
      else if (pick < 0.7) await new Promise((resolve) => setImmediate(resolve))
      else await Promise.resolve()
      seen.push(here())
    }
    return { name: request.instanceName, seen, current: currentInstance()?.name }
  })
  let count = 0
  app.server.on('connection', () => { count++ })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, port: (app.server.address() as net.AddressInfo).port, connections: () => count, hookSeen }
}

async function get (port: number, agent: http.Agent, headers: Record<string, string>): Promise<{ status: number, body: any }> {
  const req = http.get({ host: '127.0.0.1', port, path: '/', agent, headers })
  const [res] = await once(req, 'response') as [http.IncomingMessage]
  const chunks: Buffer[] = []
  for await (const chunk of res) chunks.push(chunk as Buffer)
  return { status: res.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) }
}

t.test('keep-alive: sequential requests for different instances on one socket', async (t) => {
  const { app, port, connections, hookSeen } = await echoApp()
  t.teardown(() => app.close())
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  let mismatches = 0
  let leaks = 0
  for (let n = 0; n < 150; n++) {
    // Every fifth request names an unknown instance: its error handler runs
    // right after a request that did have an instance, on the same socket.
    if (n % 5 === 4) {
      const res = await get(port, agent, { 'x-instance-name': 'unknown' })
      if (res.status !== 404 || res.body.code !== 'TENANCY_UNKNOWN_INSTANCE' || res.body.context !== '-') leaks++
      continue
    }
    const name = names[(n * 7) % names.length]!
    const headers: Record<string, string> = n % 3 === 0 && name === '' ? {} : { 'x-instance-name': name }
    const res = await get(port, agent, headers)
    if (res.status !== 200 || res.body.name !== name || res.body.current !== name || res.body.seen.some((s: string) => s !== name)) mismatches++
  }
  t.equal(connections(), 1, 'all 150 requests went over one keep-alive connection')
  t.equal(mismatches, 0, 'no request saw another instance')
  t.equal(leaks, 0, 'a failed resolution never sees the previous request\'s instance')
  t.equal(hookSeen.length, 150)
  t.equal(hookSeen.filter(([name, seen]) => name === null ? seen !== '-' : seen !== name).length, 0, 'onResponse saw each request\'s own instance')
})

t.test('pipelining: many requests written at once on one socket', async (t) => {
  const { app, port } = await echoApp()
  t.teardown(() => app.close())
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const wanted = Array.from({ length: 60 }, (_, n) => n % 4 === 3 ? 'unknown' : names[(n * 11) % names.length]!)
  const text = wanted.map((name, n) => `GET / HTTP/1.1\r\nHost: localhost\r\nx-instance-name: ${name}\r\n${n === wanted.length - 1 ? 'Connection: close\r\n' : ''}\r\n`).join('')
  const chunks: Buffer[] = []
  socket.on('data', (chunk) => chunks.push(chunk))
  socket.write(text)
  await once(socket, 'end')
  const all = Buffer.concat(chunks).toString()
  const bodies: any[] = []
  let at = 0
  while (at < all.length) {
    const headEnd = all.indexOf('\r\n\r\n', at)
    const length = Number(/content-length: (\d+)/i.exec(all.slice(at, headEnd))![1])
    bodies.push({ status: Number(all.slice(at + 9, at + 12)), body: JSON.parse(all.slice(headEnd + 4, headEnd + 4 + length)) })
    at = headEnd + 4 + length
  }
  t.equal(bodies.length, wanted.length, 'one response per pipelined request')
  const wrong = bodies.filter(({ status, body }, n) => wanted[n] === 'unknown'
    ? status !== 404 || body.context !== '-'
    : status !== 200 || body.name !== wanted[n] || body.seen.some((s: string) => s !== wanted[n]))
  t.same(wrong, [], 'each pipelined response is its own request\'s instance')
})

t.test('concurrency: hundreds of concurrent requests for many instances', async (t) => {
  const { app, port } = await echoApp()
  t.teardown(() => app.close())
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 })
  t.teardown(() => agent.destroy())
  const total = 600
  const results = await Promise.all(Array.from({ length: total }, async (_, n) => {
    const name = names[(n * 13) % names.length]!
    const res = await get(port, agent, { 'x-instance-name': name })
    return res.status === 200 && res.body.name === name && res.body.current === name && res.body.seen.every((s: string) => s === name)
  }))
  t.equal(results.length, total)
  t.equal(results.filter((ok) => !ok).length, 0, 'zero mismatches')
  // The same through inject, which interleaves even more tightly.
  const injected = await Promise.all(Array.from({ length: total }, async (_, n) => {
    const name = names[(n * 17) % names.length]!
    const res = await app.inject({ url: '/', headers: { 'x-instance-name': name } })
    const body = res.json()
    return body.name === name && body.current === name && body.seen.every((s: string) => s === name)
  }))
  t.equal(injected.filter((ok) => !ok).length, 0, 'zero mismatches through inject')
})

t.test('port resolver: the instance served on each local port', async (t) => {
  // The servers listen first, so the ports are known before the plugin is registered.
  const servers = [http.createServer(), http.createServer(), http.createServer()]
  for (const server of servers) {
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
  }
  t.teardown(() => { for (const server of servers) server.close() })
  const [a, b, c] = servers.map((server) => (server.address() as net.AddressInfo).port) as [number, number, number]
  const app = Fastify({
    serverFactory: (handler) => {
      for (const server of servers) server.on('request', handler)
      return servers[0]!
    },
  })
  t.teardown(() => app.close())
  await app.register(tenancy, { instances, datasources: { default: url }, resolve: { ports: { [a]: 'i1', [b]: 'i2' } } })
  app.get('/', async (request) => ({ name: request.instanceName, current: currentInstance()?.name }))
  await app.ready()
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  for (let round = 0; round < 3; round++) {
    t.same((await get(a, agent, {})).body, { name: 'i1', current: 'i1' }, `port ${a}`)
    t.same((await get(b, agent, {})).body, { name: 'i2', current: 'i2' }, `port ${b}`)
    t.same((await get(c, agent, {})).body, { name: '', current: '' }, 'an unmapped port falls through to the default instance')
    t.same((await get(b, agent, { 'x-instance-name': 'i3' })).body, { name: 'i3', current: 'i3' }, 'the header comes before the port')
  }
})

t.test('fastify.close() ends the tenancy\'s pools', async (t) => {
  const isolatedUrl = await createDatabase(t, 'plugin_sockets_iso')
  const app = Fastify()
  await app.register(tenancy, {
    instances: [...instances, { name: 'iso', id: 500, isolate: true, isolateClient: 'iso' }],
    datasources: { default: url, iso: isolatedUrl },
  })
  app.get('/db', async () => {
    const { rows } = await sql<{ db: string }>`select current_database() as db`.execute(app.tenancy.kysely())
    return { db: rows[0]!.db }
  })
  const dbName = (u: string): string => new URL(u).pathname.slice(1)
  for (const name of ['i1', 'iso', 'i2']) {
    const res = await app.inject({ url: '/db', headers: { 'x-instance-name': name } })
    t.same(res.json(), { db: dbName(name === 'iso' ? isolatedUrl : url) }, `${name} queried its own database`)
  }
  const before = app.tenancy.pools.counts()
  t.equal(before.pools, 2, 'one pool per datasource used')
  t.ok(before.open >= 2, 'clients are open')
  const backends = async (): Promise<number> => Number((await adminQuery(`select count(*) as n from pg_stat_activity where datname in ('${dbName(url)}', '${dbName(isolatedUrl)}') and pid <> pg_backend_pid()`)).rows[0].n)
  t.ok(await backends() >= 2, 'the server shows the connections')
  const kysely = app.tenancy.kysely()

  await app.close()
  t.same(app.tenancy.pools.counts(), { pools: 0, open: 0, idle: 0, waiting: 0, leased: 0 }, 'no pool is left')
  await t.rejects(app.tenancy.runAsInstance('i1', async () => await sql`select 1`.execute(kysely)), 'a query afterwards fails')
  // A backend leaves pg_stat_activity shortly after its client hangs up: wait for it, boundedly.
  let left = await backends()
  for (let tries = 0; left > 0 && tries < 100; tries++) {
    await sleep(50)
    left = await backends()
  }
  t.equal(left, 0, 'the server shows no connection left from the tenancy')
})

t.test('closeOnShutdown: false leaves a tenancy made elsewhere open', async (t) => {
  const { createTenancy } = await import('../plugin/index.js')
  const own = await createTenancy({ instances, datasources: { default: url } })
  t.teardown(() => own.close())
  const app = Fastify()
  await app.register(tenancy, { tenancy: own, closeOnShutdown: false })
  await app.ready()
  await app.close()
  const { rows } = await own.runAsInstance('i1', async () => await sql<{ one: number }>`select 1 as one`.execute(own.kysely()))
  t.same(rows, [{ one: 1 }], 'the tenancy still answers after the app closed')
})
