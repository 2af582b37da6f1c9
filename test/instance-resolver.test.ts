// The resolver chain on its own (lib/ knows nothing of Fastify): host-name
// vectors, the default order, a configurable order with function resolvers,
// the fallbacks, async custom resolvers, and option validation.
import t from 'tap'
import { createInstanceResolver, instanceNameFromHost, readCookie, type ResolveRequest, type ResolveOptions } from '../lib/resolve/instance-resolver.js'
import { InstanceRegistry } from '../lib/instances/instance-registry.js'
import type { Instance } from '../lib/instances/instance.js'

const store = new InstanceRegistry([
  { name: '', id: 1 },
  { name: 'cabloy', id: 2 },
  { name: 'cabloy.store', id: 3 },
  { name: 'store', id: 4 },
  { name: 'custom', id: 5 },
  { name: 'query', id: 6 },
  { name: 'header', id: 7 },
  { name: 'cookie', id: 8 },
  { name: 'path', id: 9 },
  { name: 'port', id: 10 },
  { name: 'host', id: 11 },
  { name: 'fn', id: 12 },
  { name: 'off', id: 13, disabled: true },
  { name: 'acme', id: 14 },
  { name: 'other', id: 15 },
], ['default'])

function request (parts: Partial<ResolveRequest> = {}): ResolveRequest {
  return { headers: {}, url: '/', ...parts }
}

/** The name a request resolves to (`null` for host context), awaiting async resolvers. */
async function nameOf (options: ResolveOptions, req: ResolveRequest): Promise<string | null> {
  const found: Instance | null = await createInstanceResolver(store, options)(req)
  return found === null ? null : found.name
}

t.test('host-name vectors', async (t) => {
  t.equal(instanceNameFromHost('cabloy.com', 1), 'cabloy')
  t.equal(instanceNameFromHost('store.cabloy.com', 1), 'cabloy.store')
  t.equal(instanceNameFromHost('cabloy.com', 2), '')
  t.equal(instanceNameFromHost('store.cabloy.com', 2), 'store')
  t.equal(instanceNameFromHost('a.b.store.cabloy.com', 2), 'store.b.a', 'deeper labels are read right to left')
  t.equal(instanceNameFromHost('store.cabloy.com.', 1), 'cabloy.store', 'the root\'s trailing dot is not a label')
  for (const host of ['localhost', '127.0.0.1', '10.1.2.3', '[::1]', '::1', '']) {
    t.equal(instanceNameFromHost(host, 1), undefined, `${JSON.stringify(host)} carries no name`)
  }

  // Through the chain: the resolver reads request.hostname (port already stripped).
  t.equal(await nameOf({}, request({ hostname: 'cabloy.com' })), 'cabloy')
  t.equal(await nameOf({}, request({ hostname: 'store.cabloy.com' })), 'cabloy.store')
  t.equal(await nameOf({}, request({ hostname: 'STORE.Cabloy.COM' })), 'cabloy.store', 'host names are case-insensitive')
  t.equal(await nameOf({ subdomainOffset: 2 }, request({ hostname: 'cabloy.com' })), '')
  t.equal(await nameOf({ subdomainOffset: 2 }, request({ hostname: 'store.cabloy.com' })), 'store')
  for (const hostname of ['localhost', '127.0.0.1', '[::1]']) {
    t.equal(await nameOf({}, request({ hostname })), '', `${hostname} gives the fallback, the default instance`)
    t.equal(await nameOf({ fallback: 'host' }, request({ hostname })), null, `${hostname} with fallback host gives host context`)
  }
  t.equal(await nameOf({ subdomainOffset: false }, request({ hostname: 'cabloy.com' })), '', 'subdomainOffset: false turns the host resolver off')
  await t.rejects(nameOf({}, request({ hostname: 'nobody.com' })), { code: 'TENANCY_UNKNOWN_INSTANCE', statusCode: 404 })
})

t.test('instance names in mixed case are reached by their lower-case host names, never by guess', async (t) => {
  const mixed = new InstanceRegistry([
    { name: '', id: 1 }, { name: 'shareTest', id: 2 }, { name: 'Twin', id: 3 }, { name: 'TWIN', id: 4 }, { name: 'exact', id: 5 }, { name: 'EXACT', id: 6 },
  ], ['default'])
  const resolve = createInstanceResolver(mixed)
  const nameFor = (hostname: string): string | null | undefined => {
    try { return (resolve(request({ hostname })) as Instance | null)?.name } catch (err) { return (err as { code: string }).code }
  }
  t.equal(nameFor('sharetest.localhost'), 'shareTest')
  t.equal(nameFor('ShareTest.localhost'), 'shareTest')
  t.equal(nameFor('twin.localhost'), 'TENANCY_UNKNOWN_INSTANCE', 'two names that fold alike: neither is chosen')
  t.equal(nameFor('EXACT.localhost'), 'exact', 'an exact lower-case name wins')
})

t.test('readCookie', async (t) => {
  t.equal(readCookie('a=1; tenant=acme; b=2', 'tenant'), 'acme')
  t.equal(readCookie('tenant=a%2Eb', 'tenant'), 'a.b', 'values are URI-decoded')
  t.equal(readCookie('tenant=%E0%A4%A', 'tenant'), '%E0%A4%A', 'a malformed escape is returned as it is')
  t.equal(readCookie('xtenant=acme', 'tenant'), undefined)
  t.equal(readCookie('tenant', 'tenant'), undefined)
  t.equal(readCookie('tenant=', 'tenant'), '')
  t.same(readCookie('tenant=a; x=1; tenant=b', 'tenant'), ['a', 'b'], 'a cookie given twice gives both values, for the chain to refuse')
  t.same(readCookie('tenant=a; tenant=a', 'tenant'), ['a', 'a'], 'even when both copies agree')
})

t.test('a cookie given twice, an object and a leading dot are 400 TENANCY_INVALID_INSTANCE_NAME', async (t) => {
  const resolve = createInstanceResolver(store, { cookie: 'tenant' })
  t.throws(() => resolve(request({ headers: { cookie: 'tenant=cookie; tenant=header' } })), { code: 'TENANCY_INVALID_INSTANCE_NAME', statusCode: 400, message: /given more than once/ })
  t.throws(() => resolve(request({ query: { 'x-instance-name': Object.assign(Object.create(null), { a: 'b' }) } })), { code: 'TENANCY_INVALID_INSTANCE_NAME', message: /an object/ })
  t.throws(() => resolve(request({ query: { 'x-instance-name': Symbol('x') } })), { code: 'TENANCY_INVALID_INSTANCE_NAME', message: /a symbol/ })
  for (const name of ['.', '..', '.cabloy']) {
    t.throws(() => resolve(request({ headers: { 'x-instance-name': name } })), { code: 'TENANCY_INVALID_INSTANCE_NAME' }, JSON.stringify(name))
  }
  t.equal((resolve(request({ headers: { 'x-instance-name': 'cabloy.store' } })) as Instance).name, 'cabloy.store', 'an inner dot stays valid')
})

t.test('default order: custom, query, header, cookie, path, port, host; first match wins', async (t) => {
  const options: ResolveOptions = {
    getInstanceName: (req) => req.headers['x-custom'] as string | undefined,
    cookie: 'tenant',
    pathSegment: true,
    ports: { 4321: 'port' },
  }
  const all: Record<string, () => Partial<ResolveRequest>> = {
    custom: () => ({ headers: { 'x-custom': 'custom' } }),
    query: () => ({ query: { 'x-instance-name': 'query' } }),
    header: () => ({ headers: { 'x-instance-name': 'header' } }),
    cookie: () => ({ headers: { cookie: 'tenant=cookie' } }),
    path: () => ({ url: '/path/rest?x=1' }),
    port: () => ({ socket: { localPort: 4321 } }),
    host: () => ({ hostname: 'host.com' }),
  }
  const order = Object.keys(all)
  // Drop resolvers from the front one at a time: the first remaining one wins.
  for (let first = 0; first < order.length; first++) {
    const req: { headers: Record<string, string>, url: string, [key: string]: unknown } = { headers: {}, url: '/' }
    for (const name of order.slice(first)) {
      const part = all[name]!()
      Object.assign(req.headers, part.headers)
      const { headers, ...rest } = part
      Object.assign(req, rest)
    }
    t.equal(await nameOf(options, req), order[first], `${order[first]} wins over ${order.slice(first + 1).join(', ') || 'nothing'}`)
  }
  t.equal(await nameOf(options, request()), '', 'nothing matched: the default instance')
})

t.test('configurable order, function resolvers, turned-off resolvers', async (t) => {
  const req = request({ query: { 'x-instance-name': 'query' }, headers: { 'x-instance-name': 'header' }, hostname: 'host.com' })
  t.equal(await nameOf({ order: ['host', 'header', 'query'] }, req), 'host')
  t.equal(await nameOf({ order: ['header', 'query'] }, req), 'header')
  t.equal(await nameOf({ order: [() => undefined, () => 'fn', 'header'] }, req), 'fn', 'a function passes with undefined and wins with a name')
  t.equal(await nameOf({ order: ['header', () => 'fn'] }, req), 'header')
  t.equal(await nameOf({ order: [async () => undefined, 'query'] }, req), 'query', 'an async function resolver passes too')
  t.equal(await nameOf({ order: [async () => 'fn', 'query'] }, req), 'fn')
  t.equal(await nameOf({ order: [] }, req), '', 'an empty order always falls back')
  t.equal(await nameOf({ queryField: false }, req), 'header', 'queryField: false')
  t.equal(await nameOf({ queryField: false, headerField: false }, req), 'host', 'headerField: false')
  t.equal(await nameOf({ headerField: 'X-Tenant' }, request({ headers: { 'x-tenant': 'header' } })), 'header', 'header names are matched lower-case')
  t.equal(await nameOf({ queryField: 'tenant' }, request({ query: { tenant: 'query' } })), 'query')
  t.equal(await nameOf({}, request({ headers: { cookie: 'x-instance-name=cookie' } })), '', 'the cookie resolver is off by default')
  t.equal(await nameOf({}, request({ url: '/path/x' })), '', 'the path resolver is off by default')
  t.equal(await nameOf({ pathSegment: true }, request({ url: '/' })), '', 'an empty first segment passes')
  t.equal(await nameOf({ pathSegment: true }, request({ url: '/path?x' })), 'path')
  t.equal(await nameOf({ pathSegment: true }, request({ url: '/pa%74h/x' })), 'path', 'the segment is URI-decoded')
  await t.rejects(nameOf({ pathSegment: true }, request({ url: '/a%2Fb/x' })), { code: 'TENANCY_INVALID_INSTANCE_NAME' }, 'an encoded slash cannot smuggle a path into the name')
  t.equal(await nameOf({ ports: { 4321: 'port' } }, request({ socket: { localPort: 1234 } })), '', 'an unmapped port passes')
  t.equal(await nameOf({ ports: { 4321: 'port' } }, request({})), '', 'no socket passes')
})

t.test('fallback', async (t) => {
  t.equal(await nameOf({}, request()), '')
  t.equal(await nameOf({ fallback: 'default' }, request()), '')
  t.equal(await nameOf({ fallback: 'host' }, request()), null)
  await t.rejects(nameOf({ fallback: 'reject' }, request()), { code: 'TENANCY_INSTANCE_REQUIRED', statusCode: 400 })
  t.equal(await nameOf({ fallback: 'reject' }, request({ headers: { 'x-instance-name': '' } })), '', 'naming the default instance is not "nothing"')
  const noDefault = new InstanceRegistry([{ name: 'a', id: 1 }], ['default'])
  t.throws(() => createInstanceResolver(noDefault), { code: 'TENANCY_INVALID_OPTIONS', message: /no default instance/ }, 'fallback default without a default instance is refused at start-up')
  t.throws(() => createInstanceResolver(noDefault, { fallback: 'reject' })(request()), { code: 'TENANCY_INSTANCE_REQUIRED' }, 'with another fallback it starts')
})

t.test('async getInstanceName', async (t) => {
  const slow = async (req: ResolveRequest): Promise<string | undefined> => {
    await new Promise((resolve) => setTimeout(resolve, 1))
    return req.headers['x-who'] as string | undefined
  }
  const resolve = createInstanceResolver(store, { getInstanceName: slow })
  const pending = resolve(request({ headers: { 'x-who': 'custom', 'x-instance-name': 'header' } }))
  t.ok(pending instanceof Promise, 'an async resolver makes the result a promise')
  t.equal((await pending)?.name, 'custom')
  t.equal((await resolve(request({ headers: { 'x-instance-name': 'header' } })))?.name, 'header', 'undefined passes to the next resolver')
  await t.rejects(async () => await resolve(request({ headers: { 'x-who': 'bad name' } })), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(async () => await resolve(request({ headers: { 'x-who': 'nope' } })), { code: 'TENANCY_UNKNOWN_INSTANCE' })
  await t.rejects(async () => await resolve(request({ headers: { 'x-who': 'off' } })), { code: 'TENANCY_INSTANCE_DISABLED', statusCode: 403 })
  const failing = createInstanceResolver(store, { getInstanceName: async () => { throw new Error('directory down') } })
  await t.rejects(async () => await failing(request()), { message: 'directory down' }, 'a failing custom resolver rejects; it does not fall back')
  const sync = createInstanceResolver(store, { getInstanceName: () => 'custom' })
  t.equal((sync(request()) as Instance).name, 'custom', 'sync resolvers stay synchronous')
})

t.test('values a resolver finds are validated', async (t) => {
  const resolve = createInstanceResolver(store, {})
  const bad = (value: unknown): Promise<unknown> => Promise.resolve().then(() => resolve(request({ headers: { 'x-instance-name': value as string } })))
  await t.rejects(bad(['a', 'b']), { code: 'TENANCY_INVALID_INSTANCE_NAME', message: /more than once/ })
  await t.rejects(bad('x'.repeat(64)), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(bad('acme/../other'), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(bad("' or 1=1 --"), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(bad('caf\u00e9'), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(bad('x'.repeat(63)), { code: 'TENANCY_UNKNOWN_INSTANCE' }, '63 characters is a valid name; this one is unknown')
  await t.rejects(Promise.resolve().then(() => resolve(request({ query: { 'x-instance-name': ['a', 'b'] } }))), { code: 'TENANCY_INVALID_INSTANCE_NAME' })
  await t.rejects(Promise.resolve().then(() => createInstanceResolver(store, { getInstanceName: () => 42 as unknown as string })(request())), { code: 'TENANCY_INVALID_INSTANCE_NAME' }, 'a custom resolver returning a non-string is refused')
  const long = 'y'.repeat(200)
  try {
    resolve(request({ headers: { 'x-instance-name': long } }))
    t.fail('should throw')
  } catch (err) {
    t.ok((err as Error).message.length < 300, 'the message quotes a cut-down value')
  }
})

t.test('option validation', async (t) => {
  const bad: Array<[unknown, RegExp]> = [
    [null, /resolve/],
    [{ getInstanceName: 'x' }, /getInstanceName must be a function/],
    [{ queryField: '' }, /queryField must be a non-empty string or false/],
    [{ headerField: 3 }, /headerField/],
    [{ cookie: true }, /cookie/],
    [{ pathSegment: 'yes' }, /pathSegment must be a boolean/],
    [{ subdomainOffset: -1 }, /subdomainOffset/],
    [{ subdomainOffset: 1.5 }, /subdomainOffset/],
    [{ ports: { abc: 'a' } }, /ports: "abc" is not a port number/],
    [{ ports: { 3000: 'bad name' } }, /is not an instance name/],
    [{ ports: 'x' }, /ports must be an object/],
    [{ fallback: 'nowhere' }, /fallback must be/],
    [{ order: 'header' }, /order must be an array/],
    [{ order: ['header', 'subdomain'] }, /order: "subdomain" is not a resolver/],
  ]
  for (const [options, message] of bad) {
    t.throws(() => createInstanceResolver(store, options as ResolveOptions), { code: 'TENANCY_INVALID_OPTIONS', message }, JSON.stringify(options))
  }
  const only = createInstanceResolver(store, { queryField: false, headerField: false, cookie: false, subdomainOffset: 0, ports: false, order: ['host'], fallback: 'reject' })
  t.equal((only(request({ hostname: 'cabloy', headers: { 'x-instance-name': 'store' } })) as Instance).name, 'cabloy', 'valid options: only the host resolver runs, offset 0')
  t.throws(() => only(request({ hostname: 'localhost' })), { code: 'TENANCY_INSTANCE_REQUIRED' }, 'and the reject fallback applies')
})

// The edges of the resolver chain that a one-line change went through
// unnoticed: a turned-off query field still read under the name "false", a
// one-letter cookie, a cookie value with spaces around it, a cookie pair with
// no "=", a path segment whose escape is malformed, a query parser that gives
// null. Each resolves to the instance the request names, or is refused: never
// the fallback instance instead.
t.test('a turned-off query field is not read under any name', async (t) => {
  const req = request({ query: { false: 'other', 'x-instance-name': 'other' }, headers: { 'x-instance-name': 'acme' } })
  t.equal(await nameOf({ queryField: false }, req), 'acme', 'the header decides, not ?false= nor ?x-instance-name=')
  t.equal(await nameOf({ queryField: false, headerField: false }, req), '', 'with both off: the fallback')
  t.equal(await nameOf({}, req), 'other', 'with the query field on, the query comes first')
})

t.test('a query parser that gives null or a string: the query holds no name', async (t) => {
  t.equal(await nameOf({}, request({ query: null, headers: { 'x-instance-name': 'acme' } })), 'acme', 'null: the next resolver decides')
  t.equal(await nameOf({}, request({ query: null })), '', 'null and nothing else: the fallback, not a 500')
  t.equal(await nameOf({ queryField: 'length' }, request({ query: 'acme' })), '', 'a string query is no object of fields')
})

t.test('cookies: one-letter names, spaces around values, pairs without "="', async (t) => {
  t.equal(readCookie('t=acme', 't'), 'acme', 'a one-letter cookie name')
  t.equal(readCookie('x=1;t=acme', 't'), 'acme')
  t.equal(readCookie('tenant= acme ; x=1', 'tenant'), 'acme', 'spaces around the value are not part of it')
  t.equal(readCookie('tenantX; x=1', 'tenant'), undefined, 'a pair with no "=" holds no value, even when it begins with the name')
  t.equal(readCookie('tenantacme', 'tenant'), undefined)
  t.equal(await nameOf({ cookie: 't' }, request({ headers: { cookie: 'x=1; t=acme' } })), 'acme', 'the chain reads a one-letter cookie')
  t.equal(await nameOf({ cookie: 'tenant' }, request({ headers: { cookie: 'tenant=other ' } })), 'other', 'and trims its value')
})

t.test('a path segment with a malformed escape is refused, never replaced by the fallback', async (t) => {
  t.equal(await nameOf({ pathSegment: true }, request({ url: '/acme/students' })), 'acme')
  t.equal(await nameOf({ pathSegment: true }, request({ url: '/ac%6De/students' })), 'acme', 'escapes are decoded')
  await t.rejects(nameOf({ pathSegment: true }, request({ url: '/%E0%A4%A/students' })), { code: 'TENANCY_INVALID_INSTANCE_NAME', statusCode: 400 })
  await t.rejects(nameOf({ pathSegment: true, fallback: 'host' }, request({ url: '/%zz' })), { code: 'TENANCY_INVALID_INSTANCE_NAME', statusCode: 400 }, 'nor by host context')
})
