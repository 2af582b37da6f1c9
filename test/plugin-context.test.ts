// The plugin's decorations and the request context: it holds through every
// later hook, async work the handler starts, the error handler, a body being
// parsed over a real socket; request.log (and reply.log) carry the instance.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { sql } from 'kysely'
import tenancy, { createTenancy, currentInstance, currentContext, type Tenancy } from '../plugin/index.js'
import { createDatabase } from './helpers/database.js'
import { logLines } from './helpers/log-lines.js'

const url = await createDatabase(t, 'plugin_context')
const instances = [
  { name: '', id: 1, title: 'Default' },
  { name: 'acme', id: 2, title: 'Acme' },
  { name: 'beta', id: 3, config: { colour: 'blue' } },
]

type Seen = Record<string, string | null | undefined>
/** The instance name the context holds, `null` in host context, `undefined` with no context. */
function here (): string | null | undefined {
  const context = currentContext()
  if (context === undefined) return undefined
  return context.kind === 'host' ? null : context.instance?.name
}

const HOOKS = ['preParsing', 'preValidation', 'preHandler', 'preSerialization', 'onSend', 'onResponse'] as const

/** An app whose hooks record what the context holds; `seen` is keyed by request id. */
async function appWithProbes (options: Record<string, unknown> = {}, fastifyOptions: Record<string, unknown> = {}): Promise<{ app: FastifyInstance, seen: Map<string, Seen> }> {
  const app = Fastify(fastifyOptions)
  await app.register(tenancy, { instances, datasources: { default: url }, ...options })
  const seen = new Map<string, Seen>()
  const record = (id: string, key: string): void => {
    if (!seen.has(id)) seen.set(id, {})
    seen.get(id)![key] = here()
  }
  app.addHook('preParsing', async (request, _reply, payload) => { record(request.id, 'preParsing'); return payload })
  app.addHook('preValidation', (request, _reply, done) => { record(request.id, 'preValidation'); done() })
  app.addHook('preHandler', async (request) => { await sleep(1); record(request.id, 'preHandler') })
  app.addHook('preSerialization', async (request, _reply, payload) => { record(request.id, 'preSerialization'); return payload })
  app.addHook('onSend', async (request, _reply, payload) => { record(request.id, 'onSend'); return payload })
  app.addHook('onResponse', (request, _reply, done) => { record(request.id, 'onResponse'); done() })
  app.addHook('onError', async (request) => { record(request.id, 'onError') })
  app.setErrorHandler(async (err, request, reply) => {
    record(request.id, 'errorHandler')
    return reply.code((err as { statusCode?: number }).statusCode ?? 500).send({ message: (err as Error).message, instance: here() })
  })
  return { app, seen }
}

t.test('decorations: fastify.tenancy, request.instance, request.instanceName', async (t) => {
  const own: Tenancy = await createTenancy({ instances, datasources: { default: url } })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(tenancy, { tenancy: own })
  app.get('/', async (request) => ({ instance: request.instance, name: request.instanceName, same: app.tenancy === own }))
  const res = await app.inject({ url: '/', headers: { 'x-instance-name': 'beta' } })
  t.equal(res.statusCode, 200)
  t.same(res.json(), {
    instance: { name: 'beta', id: 3, title: 'beta', config: { colour: 'blue' }, mode: 'shared', datasource: 'default', schema: null, role: null, disabled: false },
    name: 'beta',
    same: true,
  })
  const def = await app.inject({ url: '/' })
  t.equal(def.json().name, '', 'nothing named: the default instance')
  t.equal(def.json().instance.title, 'Default')
})

t.test('the context holds through every later hook, the handler and its async work (inject)', async (t) => {
  const { app, seen } = await appWithProbes()
  t.teardown(() => app.close())
  app.get('/work', async (request) => {
    const found: Seen = { handler: here() }
    await new Promise<void>((resolve) => setTimeout(() => { found.setTimeout = here(); resolve() }, 2))
    await new Promise<void>((resolve) => setImmediate(() => { found.setImmediate = here(); resolve() }))
    await new Promise<void>((resolve) => process.nextTick(() => { found.nextTick = here(); resolve() }))
    found.promise = await Promise.resolve().then(() => here())
    // Work the handler starts and does not wait for still runs as the request's instance.
    const late = new Promise<string | null | undefined>((resolve) => setTimeout(() => resolve(here()), 20))
    found.query = (await sql<{ db: string }>`select current_database() as db`.execute(app.tenancy.kysely())).rows[0]!.db
    seen.set(`${request.id}:late`, { late: await late })
    return { ...found, request: request.instanceName, current: currentInstance()?.name }
  })
  for (const name of ['acme', 'beta', '']) {
    const res = await app.inject({ url: '/work', headers: { 'x-instance-name': name } })
    t.equal(res.statusCode, 200)
    const body = res.json()
    t.same(body, { handler: name, setTimeout: name, setImmediate: name, nextTick: name, promise: name, query: new URL(url).pathname.slice(1), request: name, current: name }, `handler and its async work as ${JSON.stringify(name)}`)
  }
  t.equal(here(), undefined, 'no context leaks into the test')
  t.equal(seen.size, 6)
  for (const [id, hooks] of seen) {
    if (id.endsWith(':late')) continue
    const name = seen.get(`${id}:late`)!.late
    t.same(hooks, Object.fromEntries(HOOKS.map((hook) => [hook, name])), `every hook of ${id} saw ${JSON.stringify(name)}`)
  }
})

t.test('the error handler and onError run in the request\'s context', async (t) => {
  const { app, seen } = await appWithProbes()
  t.teardown(() => app.close())
  app.get('/sync', () => { throw Object.assign(new Error('sync boom'), { statusCode: 418 }) })
  app.get('/async', async () => { await sleep(1); throw new Error('async boom') })
  for (const path of ['/sync', '/async']) {
    const res = await app.inject({ url: path, headers: { 'x-instance-name': 'acme' } })
    t.equal(res.statusCode, path === '/sync' ? 418 : 500)
    t.same(res.json(), { message: `${path.slice(1)} boom`, instance: 'acme' })
  }
  for (const hooks of seen.values()) {
    t.equal(hooks.errorHandler, 'acme')
    t.equal(hooks.onError, 'acme')
    t.equal(hooks.onSend, 'acme')
    t.equal(hooks.onResponse, 'acme')
  }
  // A resolution error never enters a frame: the error handler sees no instance.
  const bad = await app.inject({ url: '/sync', headers: { 'x-instance-name': 'nope' } })
  t.equal(bad.statusCode, 404)
  t.same(bad.json(), { message: 'There is no instance named or numbered "nope".' }, 'no instance (undefined is left out of the JSON)')
})

t.test('the context holds while a body is parsed over a real socket, in slow chunks', async (t) => {
  const { app, seen } = await appWithProbes()
  t.teardown(() => app.close())
  app.post('/echo', async (request) => ({ body: request.body, handler: here() }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as net.AddressInfo
  const body = JSON.stringify({ text: 'x'.repeat(2000) })
  const sendSlowly = async (name: string): Promise<string> => {
    const socket = net.connect(port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    const chunks: Buffer[] = []
    socket.on('data', (chunk) => chunks.push(chunk))
    const ended = new Promise((resolve) => socket.once('end', resolve))
    socket.write(`POST /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nx-instance-name: ${name}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`)
    for (let at = 0; at < body.length; at += 700) {
      await sleep(5)
      socket.write(body.slice(at, at + 700))
    }
    await ended
    return Buffer.concat(chunks).toString()
  }
  // Two interleaved slow uploads for different instances.
  const [a, b] = await Promise.all([sendSlowly('acme'), sendSlowly('beta')])
  for (const [name, raw] of [['acme', a], ['beta', b]] as const) {
    t.match(raw, /^HTTP\/1\.1 200/)
    const json = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4))
    t.equal(json.handler, name, `handler after a chunked body as ${name}`)
    t.equal(json.body.text.length, 2000)
  }
  await sleep(10)
  t.equal(seen.size, 2)
  for (const hooks of seen.values()) {
    const name = hooks.preParsing
    t.ok(name === 'acme' || name === 'beta')
    t.same(hooks, Object.fromEntries(HOOKS.map((hook) => [hook, name])), `every hook saw ${name}`)
  }
})

t.test('fallback host: host context, instance decorations null', async (t) => {
  const { app, seen } = await appWithProbes({ resolve: { fallback: 'host' } })
  t.teardown(() => app.close())
  app.get('/', async (request) => ({ instance: request.instance, name: request.instanceName, kind: currentContext()?.kind, handler: here() }))
  const res = await app.inject({ url: '/' })
  t.same(res.json(), { instance: null, name: null, kind: 'host', handler: null })
  const [hooks] = [...seen.values()]
  t.same(hooks, Object.fromEntries(HOOKS.map((hook) => [hook, null])), 'every hook in host context')
  t.equal((await app.inject({ url: '/', headers: { 'x-instance-name': 'acme' } })).json().handler, 'acme')
})

t.test('async getInstanceName, and one that fails', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(tenancy, {
    instances,
    datasources: { default: url },
    resolve: {
      getInstanceName: async (request) => {
        await sleep(1)
        const who = request.headers['x-who']
        if (who === 'crash') throw new Error('directory down')
        return typeof who === 'string' ? who : undefined
      },
    },
  })
  app.get('/', async (request) => {
    await sleep(1)
    return { name: request.instanceName, current: here() }
  })
  t.same((await app.inject({ url: '/', headers: { 'x-who': 'beta', 'x-instance-name': 'acme' } })).json(), { name: 'beta', current: 'beta' })
  t.same((await app.inject({ url: '/', headers: { 'x-instance-name': 'acme' } })).json(), { name: 'acme', current: 'acme' }, 'undefined falls through')
  const unknown = await app.inject({ url: '/', headers: { 'x-who': 'nope' } })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'TENANCY_UNKNOWN_INSTANCE')
  const crash = await app.inject({ url: '/', headers: { 'x-who': 'crash', 'x-instance-name': 'acme' } })
  t.equal(crash.statusCode, 500, 'a failing custom resolver is a server error, never a fall-through to another instance')
  t.equal(crash.json().message, 'directory down')
})

t.test('request.log and reply.log carry the instance name', async (t) => {
  const { lines, stream } = logLines()
  const { app } = await appWithProbes({}, { logger: { level: 'info', stream } })
  t.teardown(() => app.close())
  app.get('/log', async (request) => {
    request.log.info({ marker: request.instanceName }, 'from the handler')
    await sleep(1)
    return 'ok'
  })
  for (const name of ['acme', 'beta', '']) {
    t.equal((await app.inject({ url: '/log', headers: { 'x-instance-name': name } })).statusCode, 200)
  }
  const mine = lines.filter((line) => line.msg === 'from the handler')
  t.equal(mine.length, 3)
  for (const line of mine) t.equal(line.instance, line.marker, `the handler's line carries instance ${JSON.stringify(line.marker)}`)
  const completed = lines.filter((line) => line.msg === 'request completed')
  t.equal(completed.length, 3)
  t.same(completed.map((line) => line.instance), ['acme', 'beta', ''], 'Fastify\'s own "request completed" lines (reply.log) carry it too')
  const incoming = lines.filter((line) => line.msg === 'incoming request')
  t.same(incoming.map((line) => line.instance), [undefined, undefined, undefined], '"incoming request" is logged before resolution')
})
