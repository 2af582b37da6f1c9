// Tokens bound to their instance, over HTTP with @fastify/jwt: a verified token
// of instance a that asks for b (query, header, cookie, host name, path) is
// 403 before any handler runs; a missing or forged token is @fastify/jwt's
// 401; host tokens reach instances only where the application allows it.
import t from 'tap'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import jwt from '@fastify/jwt'
import type { Generated } from 'kysely'
import tenancyPlugin, { createTenancy, createInstanceResolver, type ResolveOptions } from '../plugin/index.js'
import { createInstanceBinding } from '../lib/resolve/instance-binding.js'
import type { TokenOptions } from '../plugin/instance-binding.js'
import { createDatabase, query } from './helpers/database.js'
import { logLines } from './helpers/log-lines.js'

interface DB { note: { id: number, iid: Generated<number | null>, body: string } }

const url = await createDatabase(t, 'tokens')
await query(url, `
  create table note (id int not null, iid int, body text not null);
  insert into note values (1, 1, 'default 1'), (1, 2, 'a 1'), (2, 2, 'a 2'), (1, 3, 'b 1'), (1, 4, 'off 1'), (1, null, 'host 1');
`)
const tenancy = await createTenancy({
  instances: [{ name: '', id: 1 }, { name: 'a', id: 2 }, { name: 'b', id: 3 }, { name: 'off', id: 4, disabled: true }],
  datasources: { default: url },
  tables: { note: 'may' },
})
t.teardown(() => tenancy.close())
const db = tenancy.kysely<DB>()
const SECRET = 'a-secret-long-enough-for-hs256-0123456789'

const { lines, stream } = logLines()

interface App { app: FastifyInstance, handled: string[] }
/** An app with @fastify/jwt and the plugin; `/notes` (or `/:inst/notes`) needs a token, `/public` does not. */
async function makeApp (resolve: ResolveOptions, tokens?: TokenOptions, prefix = ''): Promise<App> {
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(jwt, { secret: SECRET })
  await app.register(tenancyPlugin, { tenancy, resolve: { claim: 'iid', ...resolve }, ...(tokens !== undefined ? { tokens } : {}), closeOnShutdown: false })
  const handled: string[] = []
  const authenticate = async (request: FastifyRequest, _reply: FastifyReply): Promise<void> => { await request.jwtVerify() }
  const list = async (request: FastifyRequest): Promise<unknown> => {
    handled.push(request.url)
    return { instance: request.instanceName, notes: (await db.selectFrom('note').select('body').orderBy('body').execute()).map((row) => row.body) }
  }
  app.get(`${prefix}/notes`, { onRequest: authenticate }, list)
  app.get(`${prefix}/admin/notes`, { onRequest: authenticate }, list)
  app.get(`${prefix}/public`, list)
  await app.ready()
  t.teardown(() => app.close())
  return { app, handled }
}

const other = Fastify()
await other.register(jwt, { secret: 'another-secret-that-this-server-does-not-know' })
await other.ready()
t.teardown(() => other.close())

const plain = await makeApp({ cookie: 'inst', subdomainOffset: 2 })
const byPath = await makeApp({ pathSegment: true, subdomainOffset: false }, undefined, '/:inst')
const sign = (claims: object): string => plain.app.jwt.sign(claims)
const tokenOf = (iid: number | string): string => sign({ sub: 'u', iid })
const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` })

/** A request for `/notes` that asks for `name` through `source`. */
function ask (source: 'query' | 'header' | 'cookie' | 'host' | 'path', name: string, headers: Record<string, string> = {}): { target: App, url: string, headers: Record<string, string> } {
  switch (source) {
    case 'query': return { target: plain, url: `/notes?x-instance-name=${encodeURIComponent(name)}`, headers }
    case 'header': return { target: plain, url: '/notes', headers: { ...headers, 'x-instance-name': name } }
    case 'cookie': return { target: plain, url: '/notes', headers: { ...headers, cookie: `inst=${encodeURIComponent(name)}` } }
    case 'host': return { target: plain, url: '/notes', headers: { ...headers, host: `${name}.example.com` } }
    case 'path': return { target: byPath, url: `/${encodeURIComponent(name)}/notes`, headers }
  }
}
const SOURCES = ['query', 'header', 'cookie', 'host', 'path'] as const

t.test('a token of instance a asking for b, through every resolver source: 403 before any handler; asking for a: a\'s rows only', async (t) => {
  for (const source of SOURCES) {
    const { target, url, headers } = ask(source, 'b', bearer(tokenOf(2)))
    const before = target.handled.length
    const res = await target.app.inject({ url, headers })
    t.equal(res.statusCode, 403, `${source}: forbidden`)
    t.match(res.json(), { statusCode: 403, code: 'TENANCY_INSTANCE_FORBIDDEN', message: /belongs to instance "a"/ })
    t.equal(target.handled.length, before, `${source}: no handler ran`)

    const own = ask(source, 'a', bearer(tokenOf(2)))
    const ok = await own.target.app.inject({ url: own.url, headers: own.headers })
    t.equal(ok.statusCode, 200, `${source}: its own instance`)
    t.same(ok.json(), { instance: 'a', notes: ['a 1', 'a 2'] }, `${source}: only a's rows`)

    for (const name of ['nope', 'off']) {
      const probe = ask(source, name, bearer(tokenOf(2)))
      const res = await probe.target.app.inject({ url: probe.url, headers: probe.headers })
      t.equal(res.statusCode, 403, `${source}: ${name} is forbidden too, not 404 or "disabled"`)
      t.equal(res.json().code, 'TENANCY_INSTANCE_FORBIDDEN')
    }
  }
})

t.test('a token that asks for nothing runs as its instance; an unauthenticated route is bound too', async (t) => {
  const res = await plain.app.inject({ url: '/notes', headers: bearer(tokenOf(3)) })
  t.same(res.json(), { instance: 'b', notes: ['b 1'] })
  const pub = await plain.app.inject({ url: '/public', headers: { ...bearer(tokenOf(3)), 'x-instance-name': 'a' } })
  t.equal(pub.statusCode, 403, 'the binding does not depend on the route checking the token')
})

t.test('no token, or a forged one: the auth layer\'s 401 where a route needs a token; resolution as usual elsewhere', async (t) => {
  for (const source of SOURCES) {
    const none = ask(source, 'b')
    const res = await none.target.app.inject({ url: none.url, headers: none.headers })
    t.equal(res.statusCode, 401, `${source}: no token`)
    t.equal(res.json().code, 'FST_JWT_NO_AUTHORIZATION_IN_HEADER')
    const forged = ask(source, 'b', bearer(other.jwt.sign({ sub: 'u', iid: 3 })))
    const bad = await forged.target.app.inject({ url: forged.url, headers: forged.headers })
    t.equal(bad.statusCode, 401, `${source}: forged`)
    t.equal(bad.json().code, 'FST_JWT_AUTHORIZATION_TOKEN_INVALID')
  }
  const pub = await plain.app.inject({ url: '/public', headers: { 'x-instance-name': 'b' } })
  t.same(pub.json(), { instance: 'b', notes: ['b 1'] }, 'a public route without a token resolves as before')
  const forgedPub = await plain.app.inject({ url: '/public', headers: { ...bearer(other.jwt.sign({ sub: 'u', iid: 3 })), 'x-instance-name': 'a' } })
  t.same(forgedPub.json(), { instance: 'a', notes: ['a 1', 'a 2'] }, 'a forged token binds nothing: it is no token')
  const fallback = await plain.app.inject({ url: '/public' })
  t.same(fallback.json(), { instance: '', notes: ['default 1'] }, 'the fallback still applies')
})

t.test('tokens whose claim cannot be read are refused', async (t) => {
  for (const [claims, status, code] of [
    [{ sub: 'u' }, 403, 'TENANCY_INSTANCE_FORBIDDEN'],
    [{ sub: 'u', iid: '2' }, 403, 'TENANCY_INSTANCE_FORBIDDEN'],
    [{ sub: 'u', iid: 1.5 }, 403, 'TENANCY_INSTANCE_FORBIDDEN'],
    [{ sub: 'u', iid: -2 }, 403, 'TENANCY_INSTANCE_FORBIDDEN'],
    [{ sub: 'u', iid: 'a' }, 403, 'TENANCY_INSTANCE_FORBIDDEN'],
    [{ sub: 'u', iid: 99 }, 404, 'TENANCY_UNKNOWN_INSTANCE'],
    [{ sub: 'u', iid: 4 }, 403, 'TENANCY_INSTANCE_DISABLED'],
  ] as const) {
    const before = plain.handled.length
    const res = await plain.app.inject({ url: '/notes', headers: bearer(sign(claims)) })
    t.equal(res.statusCode, status, JSON.stringify(claims))
    t.equal(res.json().code, code)
    t.equal(plain.handled.length, before, 'no handler ran')
  }
})

t.test('host tokens: host context by default, instances only where hostAccess allows, and marked in the log', async (t) => {
  const host = bearer(tokenOf('host'))
  const res = await plain.app.inject({ url: '/notes', headers: host })
  t.same(res.json(), { instance: null, notes: ['host 1'] }, 'a host token asking for nothing runs in host context')
  const denied = await plain.app.inject({ url: '/notes', headers: { ...host, 'x-instance-name': 'b' } })
  t.equal(denied.statusCode, 403)
  t.match(denied.json(), { code: 'TENANCY_INSTANCE_FORBIDDEN', message: /host token/ })

  const admin = await makeApp({}, { hostAccess: (request, instance) => request.url.startsWith('/admin/') && instance.name !== 'a' })
  const from = lines.length
  const allowed = await admin.app.inject({ url: '/admin/notes', headers: { ...host, 'x-instance-name': 'b' } })
  t.same(allowed.json(), { instance: 'b', notes: ['b 1'] }, 'where hostAccess allows it, as the instance asked for')
  const marked = lines.slice(from).filter((line) => line.hostToken === true)
  t.match(marked.find((line) => line.msg === 'request completed'), { hostToken: true, instance: 'b' }, 'the request\'s lines are marked')
  t.equal((await admin.app.inject({ url: '/notes', headers: { ...host, 'x-instance-name': 'b' } })).statusCode, 403, 'not on other routes')
  t.equal((await admin.app.inject({ url: '/admin/notes', headers: { ...host, 'x-instance-name': 'a' } })).statusCode, 403, 'not on instances it refuses')
  const normal = await admin.app.inject({ url: '/admin/notes', headers: { ...bearer(tokenOf(2)), 'x-instance-name': 'b' } })
  t.equal(normal.statusCode, 403, 'hostAccess never widens an instance\'s token')
  const unmarked = lines.filter((line) => line.msg === 'request completed' && line.hostToken === true)
  t.equal(unmarked.length, 1, 'only the host token\'s request is marked')

  const all = await makeApp({}, { hostAccess: true })
  t.same((await all.app.inject({ url: '/notes', headers: { ...host, 'x-instance-name': 'a' } })).json(), { instance: 'a', notes: ['a 1', 'a 2'] })
})

t.test('a custom verify, and options refused at start-up', async (t) => {
  const custom = await makeApp({}, { verify: (request) => request.headers['x-test-claims'] === undefined ? undefined : JSON.parse(String(request.headers['x-test-claims'])) })
  t.equal((await custom.app.inject({ url: '/public', headers: { 'x-test-claims': '{"iid":2}', 'x-instance-name': 'b' } })).statusCode, 403)
  t.same((await custom.app.inject({ url: '/public', headers: { 'x-test-claims': '{"iid":2}' } })).json(), { instance: 'a', notes: ['a 1', 'a 2'] })
  const throwing = await makeApp({}, { verify: () => { throw new Error('no') } })
  t.same((await throwing.app.inject({ url: '/public', headers: { 'x-instance-name': 'b' } })).json(), { instance: 'b', notes: ['b 1'] }, 'a verify that throws means no token')

  for (const [options, message] of [
    [{ tokens: {} }, /tokens needs resolve\.claim/],
    [{ resolve: { claim: 'iid' }, tokens: { hostAccess: 'yes' } }, /hostAccess/],
    [{ resolve: { claim: 'iid' }, tokens: { verify: 42 } }, /verify/],
    [{ resolve: { claim: '' } }, /resolve\.claim must be a non-empty string/],
  ] as const) {
    const app = Fastify()
    await t.rejects((async () => { await app.register(tenancyPlugin, { tenancy, closeOnShutdown: false, ...(options as object) }); await app.ready() })(), { code: 'TENANCY_INVALID_OPTIONS', message })
    await app.close()
  }
})

t.test('framework-free: the claim resolver in the chain, and createInstanceBinding', async (t) => {
  const resolve = createInstanceResolver(tenancy.instances, { claim: 'iid' })
  t.equal((resolve({ headers: { 'x-instance-name': 'b' }, url: '/', user: { iid: 2 } }) as any).name, 'a', 'the claim is tried first')
  t.equal((resolve({ headers: { 'x-instance-name': 'b' }, url: '/', user: { iid: 'host' } }) as any).name, 'b', 'a host claim names no instance')
  t.equal((resolve({ headers: {}, url: '/', user: null }) as any).name, '', 'no claims: the next resolvers, then the fallback')
  t.throws(() => resolve({ headers: {}, url: '/', user: { iid: '2' } }), { code: 'TENANCY_INSTANCE_FORBIDDEN' })
  t.throws(() => resolve({ headers: {}, url: '/', user: { iid: 77 } }), { code: 'TENANCY_UNKNOWN_INSTANCE' })
  // In the plugin the binding check refuses these first; the resolver alone must too (no 404 for a claim that is no id).
  for (const iid of [0, 1.5, -2]) {
    t.throws(() => resolve({ headers: {}, url: '/', user: { iid } }), { code: 'TENANCY_INSTANCE_FORBIDDEN', message: new RegExp(`its claim iid is "${iid}", not an instance id\\.$`) }, `claim ${iid}`)
  }
  const off = createInstanceResolver(tenancy.instances, {})
  t.equal((off({ headers: {}, url: '/', user: { true: 2, false: 2, iid: 2 } }) as any).name, '', 'without resolve.claim no claim is read')
  const length = createInstanceResolver(tenancy.instances, { claim: 'length' })
  t.equal((length({ headers: {}, url: '/', user: 'ab' }) as any).name, '', 'claims that are no object hold no claim, not even a string\'s length')
  t.throws(() => createInstanceBinding(tenancy.instances, {}), { code: 'TENANCY_INVALID_OPTIONS' })
  const bind = createInstanceBinding(tenancy.instances, { claim: 'iid', fallback: 'reject' })
  t.throws(() => bind({ headers: { 'x-instance-name': 'b' }, url: '/' }, { iid: 2 }), { code: 'TENANCY_INSTANCE_FORBIDDEN' })
  t.same(bind({ headers: {}, url: '/' }, { iid: 2 }), { resolution: tenancy.getInstance('a'), hostToken: false }, 'a token that asks for nothing needs no fallback')
  t.throws(() => bind({ headers: {}, url: '/' }, undefined), { code: 'TENANCY_INSTANCE_REQUIRED' }, 'no token, nothing asked: the fallback (reject)')
  t.throws(() => bind({ headers: {}, url: '/' }, 'a token whose claims are a string'), { code: 'TENANCY_INSTANCE_FORBIDDEN', message: /no iid claim/ }, 'claims that are no object hold no claim')
  t.same(bind({ headers: { 'x-instance-name': 'b' }, url: '/' }, { iid: 'host' }, (instance) => instance.id === 3), { resolution: tenancy.getInstance('b'), hostToken: true })
  const slow = createInstanceBinding(tenancy.instances, { claim: 'iid', getInstanceName: async () => 'nope' })
  await t.rejects(slow({ headers: {}, url: '/' }, { iid: 2 }) as Promise<unknown>, { code: 'TENANCY_INSTANCE_FORBIDDEN' }, 'an async resolver that names an unknown instance: forbidden for a token')
  await t.rejects(slow({ headers: {}, url: '/' }, undefined) as Promise<unknown>, { code: 'TENANCY_UNKNOWN_INSTANCE' }, 'and 404 without one')
})
