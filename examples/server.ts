// The demo: three instances as in a multi-instance framework's test setup,
// '' (the default) and shareTest sharing one database, isolateTest with a
// database of its own. The routes are written as for a single-tenant app: no
// iid, no branching on the instance. The tenancy confines and routes them.
import Fastify from 'fastify'
import pg from 'pg'
import { sql, type Generated } from 'kysely'
import tenancy, { createTenancy, type InstanceConfig } from '../plugin/index.js'

interface DB {
  student: {
    id: Generated<number>
    // Filled by the tenant filter on insert; never written by hand.
    iid: Generated<number>
    name: string
    created_at: Generated<Date>
  }
}

const url = process.env.DATABASE_URL
if (!url) throw new Error('Set DATABASE_URL, or run `npm start`, which starts an embedded PostgreSQL.')
const port = Number(process.env.PORT ?? 3000)

// The demo keeps its two databases beside the server's own.
function databaseUrl (name: string): string {
  const parsed = new URL(url!)
  parsed.pathname = '/' + name
  return parsed.toString()
}
const base = new URL(url).pathname.slice(1) || 'postgres'
const defaultUrl = databaseUrl(base === 'postgres' ? 'tenancy_demo' : base)
const isolateUrl = databaseUrl(`${base === 'postgres' ? 'tenancy_demo' : base}_isolate`)

async function ensureDatabase (target: string): Promise<void> {
  const name = new URL(target).pathname.slice(1)
  const admin = new pg.Client({ connectionString: url })
  await admin.connect()
  try {
    const { rowCount } = await admin.query('select 1 from pg_database where datname = $1', [name])
    if (rowCount === 0) await admin.query(`create database "${name.replaceAll('"', '""')}"`)
  } finally {
    await admin.end()
  }
}
await ensureDatabase(defaultUrl)
await ensureDatabase(isolateUrl)

const instances: InstanceConfig[] = [
  { name: '', id: 1, title: 'Default' },
  { name: 'shareTest', id: 2, title: 'Shares the default database' },
  { name: 'isolateTest', id: 1000, title: 'Has a database of its own', isolate: true, isolateClient: 'isolateTest' },
]
const t = await createTenancy({
  instances,
  datasources: { default: defaultUrl, isolateTest: isolateUrl },
  tables: { student: 'must' },
})
const db = t.kysely<DB>()

// Schema set-up runs once per database, outside the tenant filter.
for (const name of ['', 'isolateTest']) {
  await t.runAsInstance(name, () => t.unscoped(async () => {
    await db.schema.createTable('student').ifNotExists()
      .addColumn('id', 'serial', (c) => c.primaryKey())
      .addColumn('iid', 'integer', (c) => c.notNull())
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('created_at', 'timestamptz', (c) => c.notNull().defaultTo(sql`now()`))
      .execute()
  }))
}

// A few students for each instance, the first time.
const seed: Record<string, string[]> = { '': ['Ada', 'Grace'], shareTest: ['Linus', 'Ken'], isolateTest: ['Barbara', 'Edsger'] }
for (const [name, students] of Object.entries(seed)) {
  await t.runAsInstance(name, async () => {
    const { count } = await db.selectFrom('student').select((eb) => eb.fn.countAll<string>().as('count')).executeTakeFirstOrThrow()
    if (Number(count) === 0) await db.insertInto('student').values(students.map((student) => ({ name: student }))).execute()
  })
}

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
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

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.log.info(`${signal}: closing`)
    app.close().then(() => process.exit(0), () => process.exit(1))
  })
}

await app.listen({ port, host: '127.0.0.1' })
const origin = `http://127.0.0.1:${port}`
console.log(`
fastify-tenancy demo on ${origin}

  Each instance sees only its own students:
    curl ${origin}/students                                       # the default instance ''
    curl -H 'x-instance-name: shareTest' ${origin}/students       # by header
    curl '${origin}/students?x-instance-name=isolateTest'          # by query field (its own database)
    curl -H 'Host: shareTest.localhost' ${origin}/students         # by host name

  Add one:
    curl -X POST -H 'content-type: application/json' -H 'x-instance-name: shareTest' \\
         -d '{"name":"Alan"}' ${origin}/students

  Unknown instance (404) and a bad name (400):
    curl -i -H 'x-instance-name: nobody' ${origin}/students
    curl -i -H 'x-instance-name: ../etc' ${origin}/students

Ctrl-C stops it.
`)
