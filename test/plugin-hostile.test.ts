// Hostile input to the resolver chain through the plugin: every answer is a
// 4xx in Fastify's error shape with the code of the error table, never a 500
// and never another instance. Raw sockets where the wire matters (latin1
// bytes, repeated headers, empty headers), inject elsewhere; and a
// property-based test of random header values.
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import net from 'node:net'
import fc from 'fast-check'
import tenancy from '../plugin/index.js'
import { createDatabase } from './helpers/database.js'

const url = await createDatabase(t, 'plugin_hostile')
const long63 = 'l'.repeat(63)
const instances = [
  { name: '', id: 1 },
  { name: 'acme', id: 2 },
  { name: 'other', id: 3 },
  { name: 'a.b-c_D9', id: 4 },
  { name: long63, id: 5 },
  { name: 'off', id: 6, disabled: true },
]
const names = new Set(instances.filter((i) => !('disabled' in i)).map((i) => i.name))

async function makeApp (resolve: Record<string, unknown> = {}): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(tenancy, { instances, datasources: { default: url }, resolve })
  app.get('/*', async (request) => ({ instance: request.instanceName }))
  return app
}

const app = await makeApp({ pathSegment: false })
t.teardown(() => app.close())
await app.listen({ port: 0, host: '127.0.0.1' })
const { port } = app.server.address() as net.AddressInfo

/** Sends raw request bytes on a fresh connection; returns status and parsed body. */
async function raw (head: Buffer | string): Promise<{ status: number, body: any }> {
  const socket = net.connect(port, '127.0.0.1')
  const chunks: Buffer[] = []
  socket.on('data', (chunk) => chunks.push(chunk))
  const ended = new Promise((resolve, reject) => { socket.once('end', resolve); socket.once('error', reject) })
  socket.write(Buffer.concat([Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n', 'latin1'), Buffer.isBuffer(head) ? head : Buffer.from(head, 'latin1'), Buffer.from('\r\n', 'latin1')]))
  await ended
  const text = Buffer.concat(chunks).toString('utf8')
  return { status: Number(text.slice(9, 12)), body: JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) }
}

const ERROR_KEYS = ['code', 'error', 'message', 'statusCode']
function isErrorShape (t: Test, body: any, statusCode: number, code: string, label: string): void {
  t.same(Object.keys(body).sort(), ERROR_KEYS, `${label}: Fastify's error shape`)
  t.equal(body.statusCode, statusCode, `${label}: statusCode ${statusCode}`)
  t.equal(body.code, code, `${label}: ${code}`)
}

t.test('hostile header values (inject)', async (t) => {
  const cases: Array<[string, number, string]> = [
    ['x'.repeat(64), 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['x'.repeat(5000), 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['../', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['acme/../other', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['acme%2F..%2Fother', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ["' or 1=1 --", 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['acme; drop table student', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    [' acme', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['ac me', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['acme\t', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['acme, other', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['caf\u00e9', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['acme\u0000', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['__proto__', 404, 'TENANCY_UNKNOWN_INSTANCE'],
    ['constructor', 404, 'TENANCY_UNKNOWN_INSTANCE'],
    ['..', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['.acme', 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['ACME', 404, 'TENANCY_UNKNOWN_INSTANCE'],
    ['nope', 404, 'TENANCY_UNKNOWN_INSTANCE'],
    ['1', 404, 'TENANCY_UNKNOWN_INSTANCE'],
    ['off', 403, 'TENANCY_INSTANCE_DISABLED'],
  ]
  for (const [value, status, code] of cases) {
    const res = await app.inject({ url: '/', headers: { 'x-instance-name': value } })
    t.equal(res.statusCode, status, `${JSON.stringify(value.slice(0, 30))} → ${status}`)
    isErrorShape(t, res.json(), status, code, JSON.stringify(value.slice(0, 30)))
  }
  t.ok((await app.inject({ url: '/', headers: { 'x-instance-name': 'x'.repeat(5000) } })).json().message.length < 300, 'the message quotes a cut-down value')
  for (const name of ['acme', 'a.b-c_D9', long63, '']) {
    t.same((await app.inject({ url: '/', headers: { 'x-instance-name': name } })).json(), { instance: name }, `valid ${JSON.stringify(name.slice(0, 10))} is served`)
  }
})

t.test('hostile query values', async (t) => {
  const bad = async (query: string, status: number, code: string): Promise<void> => {
    const res = await app.inject({ url: `/?${query}` })
    t.equal(res.statusCode, status, query)
    isErrorShape(t, res.json(), status, code, query)
  }
  await bad('x-instance-name=acme&x-instance-name=other', 400, 'TENANCY_INVALID_INSTANCE_NAME')
  await bad('x-instance-name=acme&x-instance-name=acme', 400, 'TENANCY_INVALID_INSTANCE_NAME')
  await bad('x-instance-name=%27%20or%201%3D1%20--', 400, 'TENANCY_INVALID_INSTANCE_NAME')
  await bad('x-instance-name=acme%2F..%2Fother', 400, 'TENANCY_INVALID_INSTANCE_NAME')
  await bad('x-instance-name=%E0%A4%A', 400, 'TENANCY_INVALID_INSTANCE_NAME')
  await bad('x-instance-name=nope', 404, 'TENANCY_UNKNOWN_INSTANCE')
  t.match((await app.inject({ url: '/?x-instance-name=a&x-instance-name=b' })).json().message, /more than once/)
  t.same((await app.inject({ url: '/?x-instance-name=acme', headers: { 'x-instance-name': 'other' } })).json(), { instance: 'acme' }, 'query before header')
  t.same((await app.inject({ url: '/?x-instance-name=' })).json(), { instance: '' }, 'an empty query value names the default instance')
})

t.test('on the wire: latin1 bytes, repeated headers, empty vs missing header', async (t) => {
  const latin1 = await raw(Buffer.concat([Buffer.from('x-instance-name: caf'), Buffer.from([0xe9]), Buffer.from('\r\n')]))
  t.equal(latin1.status, 400)
  isErrorShape(t, latin1.body, 400, 'TENANCY_INVALID_INSTANCE_NAME', 'latin1 byte')
  const high = await raw(Buffer.concat([Buffer.from('x-instance-name: '), Buffer.from([0x61, 0x63, 0x6d, 0x65, 0xff]), Buffer.from('\r\n')]))
  t.equal(high.status, 400, 'acme followed by 0xff is not acme')

  const repeated = await raw('x-instance-name: acme\r\nx-instance-name: other\r\n')
  t.equal(repeated.status, 400, 'Node joins repeated headers with ", ": refused')
  isErrorShape(t, repeated.body, 400, 'TENANCY_INVALID_INSTANCE_NAME', 'repeated header')
  const same = await raw('x-instance-name: acme\r\nx-instance-name: acme\r\n')
  t.equal(same.status, 400, 'even when both say the same')

  // Present but empty names the default instance; missing falls through to the host name.
  const emptyHeader = await rawWithHost('acme.com', 'x-instance-name:\r\n')
  t.same(emptyHeader.body, { instance: '' }, 'present but empty: the default instance')
  const missing = await rawWithHost('acme.com', '')
  t.same(missing.body, { instance: 'acme' }, 'missing: falls through to the host name')
  const padded = await raw('x-instance-name:   acme   \r\n')
  t.same(padded.body, { instance: 'acme' }, 'surrounding whitespace on the wire is not part of the value (HTTP trims it)')
})

/** Like raw(), with the Host header chosen. */
async function rawWithHost (host: string, head: string): Promise<{ status: number, body: any }> {
  const socket = net.connect(port, '127.0.0.1')
  const chunks: Buffer[] = []
  socket.on('data', (chunk) => chunks.push(chunk))
  const ended = new Promise((resolve) => socket.once('end', resolve))
  socket.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n${head}\r\n`)
  await ended
  const text = Buffer.concat(chunks).toString()
  return { status: Number(text.slice(9, 12)), body: JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) }
}

t.test('path segment and cookie resolvers refuse traversal', async (t) => {
  const pathApp = await makeApp({ pathSegment: true, cookie: 'tenant', queryField: false, headerField: false })
  t.teardown(() => pathApp.close())
  const cases: Array<[string, Record<string, string>, number, string | undefined]> = [
    ['/acme/x', {}, 200, 'acme'],
    ['/%2e%2e/x', {}, 404, 'TENANCY_UNKNOWN_INSTANCE'], // the URL is normalised to /x before any hook
    ['/.acme/x', {}, 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['/acme%2F..%2Fother/x', {}, 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['/%27%20or%201=1%20--/x', {}, 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['/', { cookie: 'tenant=other' }, 200, 'other'],
    ['/', { cookie: 'tenant=..%2Fother' }, 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['/', { cookie: 'tenant="acme"' }, 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['/', { cookie: 'tenant=acme; tenant=other' }, 400, 'TENANCY_INVALID_INSTANCE_NAME'],
    ['/', { cookie: 'tenant=acme; x=1; tenant=acme' }, 400, 'TENANCY_INVALID_INSTANCE_NAME'],
  ]
  for (const [path, headers, status, expected] of cases) {
    const res = await pathApp.inject({ url: path, headers })
    t.equal(res.statusCode, status, `${path} ${headers.cookie ?? ''}`)
    if (status === 200) t.same(res.json(), { instance: expected })
    else isErrorShape(t, res.json(), status, expected!, path)
  }
})

t.test('a cookie sent in two Cookie headers is a 400, not the first copy', async (t) => {
  const cookieApp = await makeApp({ cookie: 'tenant', queryField: false, headerField: false })
  t.teardown(() => cookieApp.close())
  await cookieApp.listen({ port: 0, host: '127.0.0.1' })
  const socket = net.connect((cookieApp.server.address() as net.AddressInfo).port, '127.0.0.1')
  const chunks: Buffer[] = []
  socket.on('data', (chunk) => chunks.push(chunk))
  const ended = new Promise((resolve, reject) => { socket.once('end', resolve); socket.once('error', reject) })
  socket.write('GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: tenant=acme\r\nCookie: tenant=other\r\n\r\n')
  await ended
  const text = Buffer.concat(chunks).toString()
  t.equal(Number(text.slice(9, 12)), 400)
  isErrorShape(t, JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)), 400, 'TENANCY_INVALID_INSTANCE_NAME', 'two Cookie headers')
})

t.test('object-valued query fields (qs plainObjects, allowPrototypes) are a 400, never a 500', async (t) => {
  // What qs makes of ?x-instance-name[a]=b with plainObjects: objects with no
  // prototype, whose String() throws.
  const bare = (entries: Record<string, unknown>): Record<string, unknown> => Object.assign(Object.create(null), entries)
  const parsers: Record<string, (text: string) => Record<string, unknown>> = {
    plainObjects: (text) => text.includes('[') ? bare({ 'x-instance-name': bare({ a: 'b' }) }) : bare(Object.fromEntries(new URLSearchParams(text))),
    allowPrototypes: () => ({ 'x-instance-name': { toString: 'x', valueOf: 'y' } }),
    nested: () => ({ 'x-instance-name': [bare({ a: 'b' })] }),
    number: () => ({ 'x-instance-name': 7 }),
  }
  for (const [label, querystringParser] of Object.entries(parsers)) {
    const qsApp = Fastify({ routerOptions: { querystringParser } })
    await qsApp.register(tenancy, { instances, datasources: { default: url } })
    qsApp.get('/', async (request) => ({ instance: request.instanceName }))
    const res = await qsApp.inject({ url: '/?x-instance-name[a]=b' })
    t.equal(res.statusCode, 400, `${label}: 400`)
    isErrorShape(t, res.json(), 400, 'TENANCY_INVALID_INSTANCE_NAME', label)
    await qsApp.close()
  }
})

t.test('fallback reject: 400 TENANCY_INSTANCE_REQUIRED', async (t) => {
  const strict = await makeApp({ fallback: 'reject' })
  t.teardown(() => strict.close())
  const res = await strict.inject({ url: '/' })
  t.equal(res.statusCode, 400)
  isErrorShape(t, res.json(), 400, 'TENANCY_INSTANCE_REQUIRED', 'nothing named')
  t.same((await strict.inject({ url: '/', headers: { 'x-instance-name': '' } })).json(), { instance: '' }, 'naming the default instance is allowed')
  t.same((await strict.inject({ url: '/', headers: { host: 'other.com' } })).json(), { instance: 'other' })
})

t.test('property: random header values get 200 for exactly the named instance, or 400/403/404', async (t) => {
  const seed = Number(process.env.FC_SEED ?? Date.now() % 2 ** 31)
  t.comment(`fast-check seed ${seed} (FC_SEED=${seed} replays this run)`)
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-'.split('')
  const value = fc.oneof(
    fc.constantFrom(...names, 'off', 'ACME', 'acme ', 'acme,other', '..', '../acme'),
    fc.string({ unit: fc.constantFrom(...alphabet), maxLength: 70 }),
    fc.string({ unit: 'binary', maxLength: 80 }),
    fc.string({ unit: fc.constantFrom(...alphabet, ' ', '/', '\'', ';', '=', ',', '%', '\u00e9', '\u00ff', '\u4e2d'), maxLength: 70 }),
  )
  let runs = 0
  try {
    await fc.assert(fc.asyncProperty(value, async (header) => {
      runs++
      const res = await app.inject({ url: '/', headers: { 'x-instance-name': header } })
      const valid = /^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,62})?$/.test(header)
      if (res.statusCode === 200) {
        return names.has(header) && res.json().instance === header
      }
      if (res.statusCode === 400) return !valid && res.json().code === 'TENANCY_INVALID_INSTANCE_NAME'
      if (res.statusCode === 403) return header === 'off'
      if (res.statusCode === 404) return valid && !names.has(header) && res.json().code === 'TENANCY_UNKNOWN_INSTANCE'
      return false
    }), { seed, numRuns: 200 })
  } catch (err) {
    t.comment(`failed with fast-check seed ${seed} (rerun with FC_SEED=${seed})`)
    throw err
  }
  t.equal(runs, 200, `200 random header values (seed ${seed})`)
})
