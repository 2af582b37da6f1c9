// instanceCache over a Map, an lru-cache and a Keyv: the same key in two
// instances holds two values, host context has its own, no context throws, and
// clear() removes one instance's keys only. The values come from PostgreSQL,
// where both instances have a row with the same primary key.
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { LRUCache } from 'lru-cache'
import Keyv from 'keyv'
import type { Generated } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { cacheKey, instanceCache } from '../lib/instance-cache.js'
import { createDatabase, query } from './helpers/database.js'

interface DB { person: { id: number, iid: Generated<number>, name: string } }

const url = await createDatabase(t, 'instance_cache')
await query(url, `
  create table person (id int not null, iid int not null, name text not null, primary key (iid, id));
  insert into person values (7, 1, 'Ada of a'), (7, 2, 'Bob of b'), (8, 1, 'Cy of a');
`)
const tenancy = await createTenancy({ instances: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }, { name: 'c', id: 23 }], datasources: { default: url }, tables: { person: 'must' } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<DB>()

async function load (id: number): Promise<string | undefined> {
  return (await db.selectFrom('person').select('name').where('id', '=', id).executeTakeFirst())?.name
}

t.test('Map and LRUCache: a cache-through read gives each instance its own row for the same key', async (t) => {
  for (const [label, store] of [['Map', new Map<string, string>()], ['LRUCache', new LRUCache<string, string>({ max: 100 })]] as const) {
    const people = instanceCache(store)
    const read = async (id: number): Promise<string | undefined> => {
      const hit = people.get(String(id))
      if (hit !== undefined) return hit
      const name = await load(id)
      if (name !== undefined) people.set(String(id), name)
      return name
    }
    // Interleaved, so both instances' frames are open while the cache fills.
    const [a, b] = await Promise.all([
      tenancy.runAsInstance('a', async () => { await sleep(2); return [await read(7), await read(7)] }),
      tenancy.runAsInstance('b', async () => [await read(7), await read(7)]),
    ])
    t.same(a, ['Ada of a', 'Ada of a'], `${label}: instance a reads its own row, then its own cached value`)
    t.same(b, ['Bob of b', 'Bob of b'], `${label}: instance b, the same key, its own value`)
    t.same([...store.keys()].sort(), ['1:7', '2:7'], `${label}: keys carry the instance id`)
    t.equal(tenancy.runAsInstance('c', () => people.get('7')), undefined, `${label}: instance 23 sees neither (no '2' + '3:7' confusion)`)
    tenancy.runAsHost(() => people.set('7', 'host value'))
    t.equal(tenancy.runAsHost(() => people.get('7')), 'host value', `${label}: host context has its own keys`)
    t.equal(tenancy.runAsInstance('a', () => people.get('7')), 'Ada of a')
    t.equal(tenancy.runAsInstance('b', () => people.has('7')), true)
    t.throws(() => people.get('7'), { code: 'TENANCY_NO_CONTEXT', message: /outside any instance/ }, `${label}: no context`)
    t.throws(() => people.set('7', 'x'), { code: 'TENANCY_NO_CONTEXT' })
    t.throws(() => tenancy.runAsHost(() => tenancy.unscoped(() => people.get('7'))), { code: 'TENANCY_NO_CONTEXT' }, `${label}: unscoped() from host names no instance`)
    t.equal(tenancy.runAsInstance('b', () => tenancy.unscoped(() => people.get('7'))), 'Bob of b', `${label}: unscoped() inside b is still b's keys`)
    tenancy.runAsInstance('a', () => people.set('8', 'Cy of a'))
    tenancy.runAsInstance('a', () => people.clear())
    t.same([...store.keys()].sort(), ['2:7', 'host:7'], `${label}: clear() as a removed a's keys only`)
    t.equal(tenancy.runAsInstance('a', () => people.delete('7')), false)
    t.equal(tenancy.runAsInstance('b', () => people.delete('7')), true)
    t.same([...store.keys()], ['host:7'])
    t.equal(people.store, store)
  }
})

t.test('LRUCache options pass through (ttl)', async (t) => {
  const store = new LRUCache<string, string>({ max: 10, ttlAutopurge: false })
  const cache = instanceCache(store)
  tenancy.runAsInstance('a', () => cache.set('k', 'v', { ttl: 60_000 }))
  t.ok(store.getRemainingTTL('1:k') > 0 && store.getRemainingTTL('1:k') <= 60_000, 'the ttl reached the LRUCache')
})

t.test('Keyv: the same key in two instances, host keys, clear() of one instance', async (t) => {
  for (const [label, make] of [['Keyv()', () => new Keyv<string>()], ['Keyv({ store: Map, namespace })', () => new Keyv<string>({ store: new Map(), namespace: 'app' })]] as const) {
    const keyv = make()
    const people = instanceCache<string>(keyv)
    await tenancy.runAsInstance('a', async () => { await people.set('7', (await load(7))!) })
    await tenancy.runAsInstance('b', async () => { await people.set('7', (await load(7))!) })
    await tenancy.runAsHost(() => people.set('7', 'host value'))
    t.equal(await tenancy.runAsInstance('a', () => people.get('7')), 'Ada of a', label)
    t.equal(await tenancy.runAsInstance('b', () => people.get('7')), 'Bob of b', label)
    t.equal(await tenancy.runAsInstance('c', () => people.get('7')), undefined, label)
    t.equal(await keyv.get('2:7'), 'Bob of b', `${label}: the key in the store`)
    await t.rejects(people.get('7'), { code: 'TENANCY_NO_CONTEXT' }, `${label}: no context`)
    await tenancy.runAsInstance('b', () => people.clear())
    t.equal(await keyv.get('2:7'), undefined, `${label}: b cleared`)
    t.equal(await keyv.get('1:7'), 'Ada of a', `${label}: a untouched`)
    t.equal(await keyv.get('host:7'), 'host value', `${label}: host untouched`)
    t.equal(await tenancy.runAsInstance('a', () => people.has('7')), true)
    t.equal(await tenancy.runAsInstance('a', () => people.delete('7')), true)
    t.equal(await keyv.get('1:7'), undefined)
  }
})

t.test('Keyv over a store that cannot list its keys: clear() refuses instead of clearing nothing or everything', async (t) => {
  const data = new Map<string, unknown>()
  // A legacy asynchronous store: get, set, delete, clear, no iterator().
  const store = {
    async get (key: string) { return data.get(key) },
    async set (key: string, value: unknown) { data.set(key, value); return true },
    async delete (key: string) { return data.delete(key) },
    async clear () { data.clear() },
  }
  const people = instanceCache<string>(new Keyv<string>({ store }))
  await tenancy.runAsInstance('a', () => people.set('7', 'x'))
  await tenancy.runAsInstance('b', () => people.set('7', 'y'))
  await t.rejects(tenancy.runAsInstance('a', () => people.clear()), { code: 'TENANCY_INVALID_OPTIONS', message: /cannot list its keys/ })
  t.equal(await tenancy.runAsInstance('b', () => people.get('7')), 'y', 'nothing was cleared')
  // The same store with an iterator() can.
  const listing = { ...store, async * iterator () { yield * data.entries() } }
  const keyv = new Keyv<string>({ store: listing })
  const listed = instanceCache<string>(keyv)
  await tenancy.runAsInstance('a', () => listed.set('8', 'z'))
  await tenancy.runAsInstance('a', () => listed.clear())
  t.same([...data.keys()].sort(), ['2:7'], 'a\'s keys went, b\'s stayed')
  // An LRUCache as a Keyv's store: the memory adapter lists it through entries().
  const lru = new LRUCache<string, any>({ max: 10 })
  const overLru = instanceCache<string>(new Keyv<string>({ store: lru }))
  await tenancy.runAsInstance('a', () => overLru.set('1', 'a1'))
  await tenancy.runAsInstance('b', () => overLru.set('1', 'b1'))
  await tenancy.runAsInstance('b', () => overLru.clear())
  t.equal(await tenancy.runAsInstance('a', () => overLru.get('1')), 'a1')
  t.equal(await tenancy.runAsInstance('b', () => overLru.get('1')), undefined)
})

t.test('cacheKey and a tenancy of its own', async (t) => {
  t.equal(tenancy.runAsInstance('b', () => cacheKey('user:7')), '2:user:7')
  t.equal(tenancy.runAsHost(() => cacheKey('user:7')), 'host:user:7')
  t.throws(() => cacheKey('user:7'), { code: 'TENANCY_NO_CONTEXT' })
  const other = await createTenancy({ instances: [{ name: 'x', id: 9 }], datasources: { default: url }, tables: { person: 'must' } })
  t.teardown(() => other.close())
  // Inside other's frame only: the tenancy's own cache has no context of its own there.
  t.throws(() => other.runAsInstance('x', () => cacheKey('k', { tenancy })), { code: 'TENANCY_NO_CONTEXT' })
  t.equal(other.runAsInstance('x', () => tenancy.runAsInstance('a', () => cacheKey('k', { tenancy: other }))), '9:k', 'reads the named tenancy\'s frame, not the innermost')
  t.throws(() => instanceCache(42 as any), { code: 'TENANCY_INVALID_OPTIONS' })
  t.throws(() => instanceCache({ get () {} } as any), { code: 'TENANCY_INVALID_OPTIONS', message: /no set\(\)/ })
})
