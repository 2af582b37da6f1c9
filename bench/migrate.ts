// Fleet migrations benchmark, in one run against one PostgreSQL server:
//   schemas    BENCH_SCHEMAS schema instances in one database, 5 migrations
//              each (two tables with indexes, a column, a backfill, a
//              constraint), at concurrency 1 and at the default concurrency
//   isolated   the same 5 migrations on BENCH_ISOLATED isolated instances,
//              one database each, at concurrency 1 and at the default
// Wall time of `tenancy.migrate()`, and the peak of server connections to the
// fleet's databases, polled from pg_stat_activity every 20 ms by a client on
// the maintenance database (so not counted itself).
//
//   npm run build && node dist/bench/migrate.js    # BENCH_SCHEMAS=1000 BENCH_ISOLATED=50 BENCH_ROWS=20
// Uses DATABASE_URL when set, otherwise starts an embedded PostgreSQL in .data/.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { sql, type Kysely } from 'kysely'
import type { MigrationProvider } from 'kysely/migration'
import { createTenancy, type InstanceConfig } from '../lib/index.js'
import type { MigrationReport } from '../lib/lifecycle/fleet-migrator.js'
import { benchServer, run, withDatabase } from './bench-database.js'

const SCHEMAS = Number(process.env.BENCH_SCHEMAS ?? 1000)
const ISOLATED = Number(process.env.BENCH_ISOLATED ?? 50)
const ROWS = Number(process.env.BENCH_ROWS ?? 20)
const MAX_POOLS = 10
const POOL_MAX = 10


const migrations: MigrationProvider = {
  getMigrations: async () => ({
    '001_item': {
      async up (db: Kysely<any>) {
        await db.schema.createTable('item')
          .addColumn('id', 'serial', (c) => c.primaryKey())
          .addColumn('iid', 'integer', (c) => c.notNull())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
          .execute()
        await db.schema.createIndex('item_iid_name').on('item').columns(['iid', 'name']).execute()
        await sql`insert into item (iid, name) select 1, 'item ' || n from generate_series(1, ${sql.lit(ROWS)}) n`.execute(db)
      },
    },
    '002_tag': {
      async up (db: Kysely<any>) {
        await db.schema.createTable('tag')
          .addColumn('id', 'serial', (c) => c.primaryKey())
          .addColumn('iid', 'integer', (c) => c.notNull())
          .addColumn('item_id', 'integer', (c) => c.notNull().references('item.id'))
          .addColumn('label', 'text', (c) => c.notNull())
          .execute()
        await db.schema.createIndex('tag_item').on('tag').columns(['iid', 'item_id']).execute()
      },
    },
    '003_price': {
      async up (db: Kysely<any>) {
        await db.schema.alterTable('item').addColumn('price', 'numeric').execute()
      },
    },
    '004_backfill': {
      async up (db: Kysely<any>) {
        await db.updateTable('item').set({ price: sql`length(name) * 1.5` }).where('price', 'is', null).execute()
      },
    },
    '005_constraint': {
      async up (db: Kysely<any>) {
        await db.schema.alterTable('item').addCheckConstraint('item_price_positive', sql`price > 0`).execute()
        await db.schema.alterTable('item').alterColumn('price', (c) => c.setNotNull()).execute()
      },
    },
  }),
}

interface Measure { seconds: number, peak: number, migrations: number, failed: number, concurrency: string }

/** Runs `migrate` while polling the connections to `databases`; the peak is the most seen at once. */
async function measure (url: string, databases: string[], concurrency: number | undefined, migrate: () => Promise<MigrationReport>): Promise<Measure> {
  const poller = new pg.Client({ connectionString: url })
  await poller.connect()
  let peak = 0
  let polling = true
  const poll = (async () => {
    while (polling) {
      const { rows } = await poller.query<{ count: string }>("select count(*) from pg_stat_activity where datname = any($1) and backend_type = 'client backend'", [databases])
      peak = Math.max(peak, Number(rows[0]!.count))
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  })()
  const start = process.hrtime.bigint()
  const report = await migrate()
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  polling = false
  await poll
  await poller.end()
  const ran = report.targets.reduce((sum, target) => sum + target.results.filter((result) => result.status === 'Success').length, 0)
  const failed = report.targets.filter((target) => target.status !== 'success')
  for (const target of failed.slice(0, 3)) console.error(`# ${target.target}: ${target.status} ${String(target.error)}`)
  return { seconds, peak, migrations: ran, failed: failed.length, concurrency: concurrency === undefined ? 'default' : String(concurrency) }
}

function line (what: string, m: Measure): string {
  return `${what.padEnd(34)} concurrency ${m.concurrency.padEnd(8)} ${m.seconds.toFixed(1).padStart(7)} s  ${(m.migrations / m.seconds).toFixed(0).padStart(5)} migrations/s  peak ${String(m.peak).padStart(3)} connections  ${m.migrations} migrations, ${m.failed} targets failed`
}

async function main (): Promise<void> {
  const server = await benchServer('bench-migrate')
  const url = server.url
  const prefix = `bench_mig_${randomBytes(3).toString('hex')}`
  const schemaDb = `${prefix}_schemas`
  const isolatedDbs = Array.from({ length: ISOLATED }, (_, i) => `${prefix}_iso_${i}`)
  const lines: string[] = []
  try {
    const schemaInstances: InstanceConfig[] = Array.from({ length: SCHEMAS }, (_, i) => ({ name: `s${i}`, id: i + 1, schema: `tenant_s${i}` }))
    const isolatedInstances: InstanceConfig[] = isolatedDbs.map((name, i) => ({ name: `i${i}`, id: 10000 + i, isolate: true, isolateClient: `i${i}` }))
    for (const concurrency of [1, undefined]) {
      await run(url, `drop database if exists ${schemaDb} with (force)`)
      await run(url, `create database ${schemaDb}`)
      const tenancy = await createTenancy({
        instances: schemaInstances,
        datasources: { default: withDatabase(url, schemaDb) },
        tables: {},
        maxPools: MAX_POOLS,
        pool: { max: POOL_MAX },
        migrations: { instance: migrations },
      })
      try {
        const m = await measure(url, [schemaDb], concurrency, () => tenancy.migrate({ concurrency }))
        lines.push(line(`${SCHEMAS} schemas x 5 migrations`, m))
        console.log(lines.at(-1))
      } finally {
        await tenancy.close()
      }
    }
    for (const concurrency of [1, undefined]) {
      for (const name of isolatedDbs) {
        await run(url, `drop database if exists ${name} with (force)`)
        await run(url, `create database ${name}`)
      }
      const tenancy = await createTenancy({
        instances: isolatedInstances,
        datasources: { default: withDatabase(url, isolatedDbs[0]!), ...Object.fromEntries(isolatedDbs.map((name, i) => [`i${i}`, withDatabase(url!, name)])) },
        tables: {},
        maxPools: MAX_POOLS,
        pool: { max: POOL_MAX },
        migrations: { instance: migrations },
      })
      try {
        const m = await measure(url, isolatedDbs, concurrency, () => tenancy.migrate({ concurrency }))
        lines.push(line(`${ISOLATED} isolated databases x 5 migrations`, m))
        console.log(lines.at(-1))
      } finally {
        await tenancy.close()
      }
    }
    console.log(`# Node.js ${process.version}, PostgreSQL ${server ? 'embedded' : 'from DATABASE_URL'}, ${new Date().toISOString()}`)
    console.log(`# maxPools=${MAX_POOLS}, pool.max=${POOL_MAX} (budget ${MAX_POOLS * POOL_MAX} connections), ${ROWS} rows backfilled per target`)
  } finally {
    for (const name of [schemaDb, ...isolatedDbs]) await run(url, `drop database if exists ${name} with (force)`).catch(() => {})
    await server.stop()
  }
}

await main()
