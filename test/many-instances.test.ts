import t from 'tap'
import { randomBytes } from 'node:crypto'
import { sql, type Generated } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { adminQuery, createDatabase, query, serverUrl, withDatabase } from './helpers/database.js'

// 100 isolated databases behind maxPools 10: random access from concurrent
// jobs must never reach a wrong database, and the pools must stay bounded.
interface DB { student: { id: Generated<number>, iid: number, name: string } }

const COUNT = 100
const MAX_POOLS = 10
const prefix = `many_${randomBytes(3).toString('hex')}`
const template = `${prefix}_tpl`
await adminQuery(`create database ${template}`)
await query(withDatabase(serverUrl(), template), 'create table student (id serial primary key, iid int not null, name text not null)')
const names = Array.from({ length: COUNT }, (_, i) => `${prefix}_${i}`)
t.teardown(async () => {
  for (let i = 0; i < names.length; i += 10) {
    await Promise.all(names.slice(i, i + 10).map(async (name) => await adminQuery(`drop database if exists ${name} with (force)`)))
  }
  await adminQuery(`drop database if exists ${template} with (force)`)
})
// One at a time: a template cannot be copied by two sessions at once.
for (const name of names) await adminQuery(`create database ${name} template ${template}`)

const defaultUrl = await createDatabase(t, 'many_default')
const instances = [
  { name: '', id: 1 },
  ...names.map((_, i) => ({ name: `t${i}`, id: 1000 + i, isolate: true, isolateClient: `d${i}` })),
]
const datasources: Record<string, string> = { default: defaultUrl }
names.forEach((name, i) => { datasources[`d${i}`] = withDatabase(serverUrl(), name) })
const ten = await createTenancy({ instances, datasources, tables: { student: 'must' }, maxPools: MAX_POOLS, pool: { max: 2, connectionTimeoutMillis: 20000 } })
t.teardown(() => ten.close())
const db = ten.kysely<DB>()

t.test(`${COUNT} isolated databases, maxPools ${MAX_POOLS}, random concurrent access`, async (t) => {
  const written = new Map<number, number>()
  let wrong = 0
  let maxPools = 0
  let maxOpen = 0
  let next = 0
  const OPS = 800
  // A fixed-seed generator, so a failure can be replayed.
  let seed = 42
  const random = (): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648 }
  const worker = async (): Promise<void> => {
    while (next < OPS) {
      const n = next++
      const i = Math.floor(random() * COUNT)
      const instance = instances[i + 1]!
      await ten.runAsInstance(instance.name, async () => {
        await db.insertInto('student').values({ iid: instance.id, name: `${instance.name}:${n}` }).execute()
        written.set(instance.id, (written.get(instance.id) ?? 0) + 1)
        const { rows } = await sql<{ database: string, iids: number[] }>`select current_database() as database, array_agg(distinct iid) as iids from student`.execute(db)
        if (rows[0]!.database !== names[i] || rows[0]!.iids.length !== 1 || rows[0]!.iids[0] !== instance.id) wrong++
      })
      const counts = ten.pools.counts()
      maxPools = Math.max(maxPools, counts.pools)
      maxOpen = Math.max(maxOpen, counts.open)
    }
  }
  await Promise.all(Array.from({ length: 32 }, worker))

  t.equal(wrong, 0, 'zero queries saw a wrong database or a foreign row')
  t.ok(maxPools <= MAX_POOLS, `at most ${MAX_POOLS} pools were open at once (saw ${maxPools})`)
  t.ok(maxOpen <= MAX_POOLS * 2, `at most ${MAX_POOLS * 2} clients were connected at once (saw ${maxOpen})`)
  t.ok(ten.pools.evictions > 0, `idle pools were closed to make room (${ten.pools.evictions} times)`)
  t.ok(written.size > COUNT / 2, `many instances were used (${written.size})`)

  const backends = await query<{ n: number }>(defaultUrl, 'select count(*)::int as n from pg_stat_activity where datname like $1', [`${prefix}\\_%`])
  t.ok(backends[0]!.n <= MAX_POOLS * 2, `the server sees at most ${MAX_POOLS * 2} connections to the instance databases (${backends[0]!.n})`)

  let misplaced = 0
  let miscounted = 0
  for (let i = 0; i < COUNT; i++) {
    const rows = await query<{ iid: number, n: number, bad: number }>(withDatabase(serverUrl(), names[i]!),
      'select iid, count(*)::int as n, count(*) filter (where name not like $1)::int as bad from student group by iid', [`t${i}:%`])
    const mine = 1000 + i
    misplaced += rows.filter((row) => row.iid !== mine).reduce((sum, row) => sum + row.n, 0)
    misplaced += rows.reduce((sum, row) => sum + row.bad, 0)
    if ((rows.find((row) => row.iid === mine)?.n ?? 0) !== (written.get(mine) ?? 0)) miscounted++
  }
  t.equal(misplaced, 0, 'direct connections find no row in a wrong database')
  t.equal(miscounted, 0, 'every database holds exactly the rows written for its instance')
  t.same(await query(defaultUrl, 'select count(*)::int as n from pg_catalog.pg_tables where tablename = \'student\''), [{ n: 0 }], 'nothing was written to the default database')
  t.equal(ten.pools.counts().leased, 0, 'nothing left checked out')
})
