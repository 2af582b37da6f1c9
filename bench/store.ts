// Instance store benchmark, against one PostgreSQL server:
//   creates    createInstance() per second in each mode, with the instance
//              migrations (one table) and an onProvision that inserts one row:
//              shared (a row), schema (a schema; its role and grants with
//              BENCH_ROLE=1), isolated
//              (a database on the server); one at a time, as an operator would
//   propagate  a second process (this file with `child`) on the same store;
//              this one changes an instance's title, the other reports when
//              its store holds the change: p50/p99 from the write's start
//   lookups    byName/byId with 1,000 instances in the store against a fixed
//              list of 10: O(1) means the same cost per lookup
//
//   npm run bench:store   # BENCH_SHARED=200 BENCH_SCHEMA=50 BENCH_ISOLATED=10 BENCH_UPDATES=300 BENCH_STORE=1000 BENCH_ROLE=0
// Uses DATABASE_URL when set, otherwise starts an embedded PostgreSQL in .data/.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import type { Kysely } from 'kysely'
import type { MigrationProvider } from 'kysely/migration'
import { InstanceRegistry, createTenancy, databaseStore, type Tenancy } from '../lib/index.js'
import { benchServer, run, withDatabase } from './bench-database.js'

const SHARED = Number(process.env.BENCH_SHARED ?? 200)
const SCHEMA = Number(process.env.BENCH_SCHEMA ?? 50)
const ISOLATED = Number(process.env.BENCH_ISOLATED ?? 10)
const UPDATES = Number(process.env.BENCH_UPDATES ?? 300)
const STORE = Number(process.env.BENCH_STORE ?? 1000)
// Schema instances with roles: off by default, as in the runs recorded in bench/RESULTS.md (a
// connection still SET ROLE to the previous instance failed them before the migrator reset roles).
const ROLE = process.env.BENCH_ROLE === '1'
const LOOKUPS = 2_000_000


function percentile (values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!
}

const migrations: MigrationProvider = {
  getMigrations: async () => ({
    '001_item': {
      async up (db: Kysely<any>) {
        await db.schema.createTable('item').ifNotExists()
          .addColumn('id', 'serial', (c) => c.primaryKey())
          .addColumn('iid', 'integer', (c) => c.notNull())
          .addColumn('v', 'text', (c) => c.notNull())
          .execute()
      },
    },
  }),
}

async function open (url: string, serverUrl: string, prefix: string): Promise<Tenancy> {
  return await createTenancy({
    instances: databaseStore({ prefix, seed: [{ name: '', id: 1 }] }),
    datasources: { default: url },
    servers: { main: serverUrl },
    tables: { item: 'must' },
    migrations: { instance: migrations },
    maxPools: 20,
    pool: { max: 4 },
    onProvision: async ({ db }) => { await db.insertInto('item').values({ v: 'admin' }).execute() },
  })
}

/** The second process: reports each instance title it holds, as soon as its store holds it. */
async function child (url: string, serverUrl: string, prefix: string): Promise<void> {
  const tenancy = await open(url, serverUrl, prefix)
  tenancy.on('instanceUpdated', (instance) => { process.stdout.write(JSON.stringify({ title: instance.title, at: performance.timeOrigin + performance.now() }) + '\n') })
  process.stdout.write(JSON.stringify({ ready: true }) + '\n')
  for await (const _ of createInterface({ input: process.stdin })) { /* runs until stdin ends */ }
  await tenancy.close()
}

async function timed (count: number, make: (i: number) => Promise<unknown>): Promise<number[]> {
  const times: number[] = []
  for (let i = 0; i < count; i++) {
    const start = performance.now()
    await make(i)
    times.push(performance.now() - start)
  }
  return times
}

async function main (): Promise<void> {
  const server = await benchServer('bench-store')
  const url = server.url
  const tag = `bench_store_${randomBytes(3).toString('hex')}`
  const prefix = `${tag}_`
  const appUrl = withDatabase(url, tag)
  let tenancy: Tenancy | undefined
  let second: ReturnType<typeof spawn> | undefined
  try {
    await run(url, `create database ${tag}`)
    tenancy = await open(appUrl, url, prefix)
    await tenancy.migrate({ sets: 'instance', only: [1] })

    const shared = await timed(SHARED, async (i) => await tenancy!.createInstance({ name: `s${i}` }))
    const schema = await timed(SCHEMA, async (i) => await tenancy!.createInstance({ name: `c${i}`, mode: 'schema', role: ROLE }))
    const isolated = await timed(ISOLATED, async (i) => await tenancy!.createInstance({ name: `d${i}`, mode: 'isolated' }))

    second = spawn(process.execPath, [fileURLToPath(import.meta.url), 'child', appUrl, url, prefix], { stdio: ['pipe', 'pipe', 'inherit'] })
    const seen = new Map<string, number>()
    let ready!: () => void
    const up = new Promise<void>((resolve) => { ready = resolve })
    createInterface({ input: second.stdout! }).on('line', (line) => {
      const message = JSON.parse(line) as { ready?: boolean, title?: string, at?: number }
      if (message.ready === true) ready()
      else seen.set(message.title!, message.at!)
    })
    await up
    const latencies: number[] = []
    for (let i = 0; i < UPDATES; i++) {
      const title = `t${i}`
      const start = performance.timeOrigin + performance.now()
      await tenancy.updateInstance('s0', { title })
      while (!seen.has(title)) await new Promise((resolve) => setTimeout(resolve, 1))
      latencies.push(seen.get(title)! - start)
    }

    for (let i = SHARED; i < STORE; i++) await tenancy.createInstance({ name: `s${i}` })
    const names = tenancy.instances.list().map((instance) => instance.name)
    const ids = tenancy.instances.list().map((instance) => instance.id)
    const small = new InstanceRegistry(names.slice(0, 10).map((name, i) => ({ name, id: ids[i]! })), ['default'])
    const perLookup = (store: { byName (n: string): unknown, byId (i: number): unknown }, count: number): number => {
      let found = 0
      const start = process.hrtime.bigint()
      for (let i = 0; i < LOOKUPS; i++) {
        if (store.byName(names[i % count]!) !== undefined) found++
        if (store.byId(ids[i % count]!) !== undefined) found++
      }
      if (found !== 2 * LOOKUPS) throw new Error('a lookup missed')
      return Number(process.hrtime.bigint() - start) / (2 * LOOKUPS)
    }
    perLookup(small, 10)
    perLookup(tenancy.instances, names.length)
    const fixed = Math.min(...[0, 1, 2].map(() => perLookup(small, 10)))
    const large = Math.min(...[0, 1, 2].map(() => perLookup(tenancy!.instances, names.length)))

    const rate = (times: number[]): string => `${(1000 * times.length / times.reduce((a, b) => a + b, 0)).toFixed(1).padStart(7)} creates/s   p50 ${percentile(times, 0.5).toFixed(0)} ms, p99 ${percentile(times, 0.99).toFixed(0)} ms`
    console.log(`# Node.js ${process.version}, PostgreSQL ${server ? 'embedded' : 'from DATABASE_URL'}, ${new Date().toISOString()}`)
    console.log(`# creates one at a time, each with its migrations and onProvision; ${UPDATES} updates propagated to a second process; lookups over ${names.length} instances`)
    console.log(`create shared   (${String(SHARED).padStart(4)})  ${rate(shared)}`)
    console.log(`create schema   (${String(SCHEMA).padStart(4)})  ${rate(schema)}   (schema${ROLE ? ', role, grants' : ''}, migration)`)
    console.log(`create isolated (${String(ISOLATED).padStart(4)})  ${rate(isolated)}   (CREATE DATABASE, migration)`)
    console.log(`propagation to a second process     p50 ${percentile(latencies, 0.5).toFixed(1)} ms, p99 ${percentile(latencies, 0.99).toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms (from the write's start)`)
    console.log(`lookup, store of ${names.length}              ${large.toFixed(1).padStart(6)} ns   fixed list of 10 ${fixed.toFixed(1)} ns   ratio ${(large / fixed).toFixed(2)}`)
  } finally {
    second?.stdin?.end()
    if (second !== undefined && second.exitCode === null) await new Promise((resolve) => second!.once('exit', resolve))
    await tenancy?.close().catch(() => {})
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      const { rows } = await client.query<{ datname: string }>('select datname from pg_database where datname like $1', [`${tag}%`])
      for (const { datname } of rows) await client.query(`drop database if exists "${datname}" with (force)`)
      const roles = await client.query<{ rolname: string }>('select rolname from pg_roles where rolname like $1', [`${prefix}%`])
      for (const { rolname } of roles.rows) await client.query(`drop role if exists "${rolname}"`)
    } finally {
      await client.end()
    }
    await server.stop()
  }
}

if (process.argv[2] === 'child') await child(process.argv[3]!, process.argv[4]!, process.argv[5]!)
else await main()
