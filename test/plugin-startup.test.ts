// Start-up code and the context: a server started inside runAsInstance() must
// not make its requests (the resolver, hooks before the plugin's, hooks Fastify
// calls from socket events) run as that instance; inject() from inside a frame
// must not either. onRequestAbort and onTimeout run with no frame at all.
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import net from 'node:net'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import tenancy, { createTenancy, currentContext, type Tenancy } from '../plugin/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'plugin_startup')
await createTenantSchema(url)
const instances = [{ name: '', id: 4 }, { name: 'a', id: 1 }, { name: 'b', id: 2 }]

/** What the context holds: the instance name, 'host', or 'none'. */
function here (): string {
  const frame = currentContext()
  if (frame === undefined) return 'none'
  return frame.kind === 'host' ? 'host' : frame.instance?.name ?? 'unscoped'
}

async function makeApp (tenancyOf: Tenancy, seen: Record<string, string[]>, fastifyOptions: Record<string, unknown> = {}): Promise<FastifyInstance> {
  const app = Fastify(fastifyOptions)
  const note = (key: string): void => { (seen[key] ??= []).push(here()) }
  // Registered before the plugin, so it runs before the plugin's onRequest hook.
  app.addHook('onRequest', async () => { note('earlyHook') })
  await app.register(tenancy, {
    tenancy: tenancyOf,
    closeOnShutdown: false,
    resolve: { getInstanceName: () => { note('resolver'); return undefined } },
  })
  app.addHook('onRequestAbort', async (_request) => { note('onRequestAbort') })
  app.addHook('onTimeout', async (_request, _reply) => { note('onTimeout') })
  const db = tenancyOf.kysely<TenantDB>()
  app.get('/students', async () => {
    note('handler')
    return (await db.selectFrom('student').select(['id', 'iid']).orderBy('id').execute())
  })
  app.get('/slow', async () => {
    note('slow')
    await sleep(5000)
    return { late: true }
  })
  return app
}

async function get (port: number, path: string, header: string): Promise<{ status: number, body: any }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { 'x-instance-name': header } })
  return { status: res.status, body: await res.json() }
}

t.test('a server started inside runAsInstance() serves every request from no frame', async (t) => {
  const ten = await createTenancy({ instances, datasources: { default: url } })
  t.teardown(() => ten.close())
  const seen: Record<string, string[]> = {}
  const app = await makeApp(ten, seen)
  t.teardown(() => app.close())
  await ten.runAsInstance('a', () => app.listen({ port: 0, host: '127.0.0.1' }))
  const { port } = app.server.address() as net.AddressInfo

  const b = await get(port, '/students', 'b')
  t.equal(b.status, 200)
  t.same(new Set(b.body.map((row: { iid: number }) => row.iid)), new Set([2]), 'instance b sees only its rows')
  const fallback = await fetch(`http://127.0.0.1:${port}/students`)
  t.same(((await fallback.json()) as Array<{ iid: number }>).map((row) => row.iid), [], 'a request naming nothing gets the default instance (4, no rows), not a')
  t.same(seen.earlyHook, ['none', 'none'], 'a hook before the plugin\'s runs with no frame, not as a')
  t.same(seen.resolver, ['none', 'none'], 'the resolver runs with no frame')
  t.same(seen.handler, ['b', ''], 'handlers run as the resolved instance')
})

// light-my-request dispatches outside the caller's context already; the plugin's
// own exit keeps resolution frame-free whatever calls the request handler.
t.test('inject() from inside a frame resolves from no frame', async (t) => {
  const ten = await createTenancy({ instances, datasources: { default: url } })
  t.teardown(() => ten.close())
  const seen: Record<string, string[]> = {}
  const app = await makeApp(ten, seen)
  t.teardown(() => app.close())
  await app.ready()
  const res = await ten.runAsInstance('a', () => app.inject({ url: '/students', headers: { 'x-instance-name': 'b' } }))
  t.same(new Set((res.json() as Array<{ iid: number }>).map((row) => row.iid)), new Set([2]))
  t.same(seen.resolver, ['none'], 'the resolver does not see the caller\'s frame')
  t.same(seen.handler, ['b'])
})

t.test('onRequestAbort and onTimeout run with no frame, never as another instance', async (t) => {
  const ten = await createTenancy({ instances, datasources: { default: url } })
  t.teardown(() => ten.close())
  const seen: Record<string, string[]> = {}
  const app = await makeApp(ten, seen, { connectionTimeout: 300 })
  t.teardown(() => app.close())
  await ten.runAsInstance('a', () => app.listen({ port: 0, host: '127.0.0.1' }))
  const { port } = app.server.address() as net.AddressInfo

  // An aborted request: the client goes away while the handler runs.
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write('GET /slow HTTP/1.1\r\nHost: localhost\r\nx-instance-name: b\r\n\r\n')
  const deadline = Date.now() + 10_000
  while (seen.slow === undefined && Date.now() < deadline) await sleep(10)
  socket.destroy()
  while ((seen.onRequestAbort === undefined || seen.onTimeout === undefined) && Date.now() < deadline) await sleep(10)
  t.same(seen.slow, ['b'], 'the handler ran as b')
  t.same(seen.onRequestAbort, ['none'], 'onRequestAbort: no frame (Fastify calls it from the socket\'s close event)')

  // The socket timeout also fired for that request (connectionTimeout), or fires for a fresh one.
  t.ok(seen.onTimeout === undefined || seen.onTimeout.every((value) => value === 'none'), 'onTimeout: no frame')
  t.same(await query(url, 'select count(*)::int as n from student where iid = 1'), [{ n: 4 }], 'nothing ran as a')
})
