// The edges of the resolver chain that a one-line change went through
// unnoticed: a turned-off query field still read under the name "false", a
// one-letter cookie, a cookie value with spaces around it, a cookie pair with
// no "=", a path segment whose escape is malformed, a query parser that gives
// null. Each resolves to the instance the request names, or is refused: never
// the fallback instance instead.
import t from 'tap'
import { createInstanceResolver, readCookie, type ResolveRequest, type ResolveOptions } from '../lib/resolve/instance-resolver.js'
import { InstanceRegistry } from '../lib/instances/instance-registry.js'
import type { Instance } from '../lib/instances/instance.js'

const store = new InstanceRegistry([
  { name: '', id: 1 },
  { name: 'acme', id: 2 },
  { name: 'other', id: 3 },
], ['default'])

function request (parts: Partial<ResolveRequest> = {}): ResolveRequest {
  return { headers: {}, url: '/', ...parts }
}

async function nameOf (options: ResolveOptions, req: ResolveRequest): Promise<string | null> {
  const found: Instance | null = await createInstanceResolver(store, options)(req)
  return found === null ? null : found.name
}

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
