// The demo: three instances as in a multi-instance framework's test setup,
// '' (the default) and shareTest sharing one database, isolateTest with a
// database of its own. The routes are written as for a single-tenant app: no
// iid, no branching on the instance. The tenancy confines and routes them.
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import { sql, type Generated, type Kysely } from 'kysely'
import type { MigrationProvider } from 'kysely/migration'
import tenancy, { createTenancy, type InstanceConfig, type InstanceDatabase, type Tenancy } from '../plugin/index.js'

// The tables as they are; InstanceDatabase makes `iid` optional on insert,
// since the tenant filter fills it in.
export type DemoDB = InstanceDatabase<{
  student: {
    id: Generated<number>
    iid: number
    name: string
    created_at: Generated<Date>
  }
}>

export const demoInstances: InstanceConfig[] = [
  { name: '', id: 1, title: 'Default' },
  { name: 'shareTest', id: 2, title: 'Shares the default database' },
  { name: 'isolateTest', id: 1000, title: 'Has a database of its own', isolate: true, isolateClient: 'isolateTest' },
]

// The demo's tables, as instance migrations: `t.migrate()` runs them once on
// the shared tables ('' and shareTest) and once in isolateTest's database,
// each with its own kysely_migration table. `ifNotExists` adopts a database
// made by an earlier version of the demo, which created the table by hand.
export const demoMigrations: MigrationProvider = {
  getMigrations: async () => ({
    '001_student': {
      async up (db: Kysely<any>) {
        await db.schema.createTable('student').ifNotExists()
          .addColumn('id', 'serial', (c) => c.primaryKey())
          .addColumn('iid', 'integer', (c) => c.notNull())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
          .execute()
        await db.schema.createIndex('student_iid').ifNotExists().on('student').column('iid').execute()
      },
      async down (db: Kysely<any>) {
        await db.schema.dropTable('student').execute()
      },
    },
  }),
}

const seed: Record<string, string[]> = { '': ['Ada', 'Grace'], shareTest: ['Linus', 'Ken'], isolateTest: ['Barbara', 'Edsger'] }

/** Creates the database named in `target` on its server if it is missing. */
async function ensureDatabase (server: string, target: string): Promise<void> {
  const name = new URL(target).pathname.slice(1)
  const admin = new pg.Client({ connectionString: server })
  await admin.connect()
  try {
    const { rowCount } = await admin.query('select 1 from pg_database where datname = $1', [name])
    if (rowCount === 0) await admin.query(`create database "${name.replaceAll('"', '""')}"`)
  } finally {
    await admin.end()
  }
}

/**
 * The demo's databases, tables, seed rows and Fastify app, on the server of
 * `serverUrl`: the default database is `<database>` (or `tenancy_demo` on the
 * maintenance database `postgres`), the isolated one `<that>_isolate`.
 */
export async function buildDemo (serverUrl: string, logger: boolean | object = false): Promise<{ app: FastifyInstance, defaultUrl: string, isolateUrl: string, migrations: Awaited<ReturnType<Tenancy['migrate']>> }> {
  const databaseUrl = (name: string): string => {
    const parsed = new URL(serverUrl)
    parsed.pathname = '/' + name
    return parsed.toString()
  }
  const own = new URL(serverUrl).pathname.slice(1) || 'postgres'
  const base = own === 'postgres' ? 'tenancy_demo' : own
  const defaultUrl = databaseUrl(base)
  const isolateUrl = databaseUrl(`${base}_isolate`)
  await ensureDatabase(serverUrl, defaultUrl)
  await ensureDatabase(serverUrl, isolateUrl)

  // No tables option: the tenant tables are discovered, again after migrations that change them.
  const t = await createTenancy({
    instances: demoInstances,
    datasources: { default: defaultUrl, isolateTest: isolateUrl },
    migrations: { instance: demoMigrations },
  })
  const db = t.kysely<DemoDB>()

  const migrations = await t.migrate()
  if (!migrations.ok) {
    await t.close()
    const failed = migrations.targets.filter((target) => target.status !== 'success')
    throw new Error(`The demo's migrations failed: ${failed.map((target) => `${target.target} ${target.status} ${String(target.error)}`).join('; ')}`)
  }

  // A few students for each instance, the first time.
  for (const [name, students] of Object.entries(seed)) {
    await t.runAsInstance(name, async () => {
      const { count } = await db.selectFrom('student').select((eb) => eb.fn.countAll<string>().as('count')).executeTakeFirstOrThrow()
      if (Number(count) === 0) await db.insertInto('student').values(students.map((student) => ({ name: student }))).execute()
    })
  }

  const app = Fastify({ logger })
  await app.register(tenancy, { tenancy: t })

  app.get('/', async (request) => ({ instance: request.instance }))

  app.get('/students', async () => {
    return await db.selectFrom('student').select(['id', 'name', 'created_at']).orderBy('id').execute()
  })

  app.post<{ Body: { name: string } }>('/students', {
    schema: {
      body: {
        type: 'object',
        required: ['name'],
        additionalProperties: false,
        properties: { name: { type: 'string', minLength: 1, maxLength: 100 } },
      },
    },
  }, async (request, reply) => {
    const student = await db.insertInto('student').values({ name: request.body.name })
      .returning(['id', 'name', 'created_at']).executeTakeFirstOrThrow()
    return reply.code(201).send(student)
  })

  return { app, defaultUrl, isolateUrl, migrations }
}
