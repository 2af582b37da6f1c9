// Every mode through a real PgBouncer, in session and in transaction pooling:
// what each pooling mode allows works (rows, schema, role, setting and database
// seen inside the statements), and what transaction pooling cannot keep is
// refused at start-up, at checkout or before the statement is sent.
import t from 'tap'
import { Kysely, PostgresDialect, sql } from 'kysely'
import { createTenancy, databaseStore, RoutingPool, type Instance, type InstanceStore } from '../lib/index.js'
import { WholeCursor } from './helpers/whole-cursor.js'
import { TABLES as tables, pgbouncerFixture, startBouncer } from './helpers/pgbouncer-fixture.js'
import { query } from './helpers/database.js'
import type { TenantDB } from './helpers/tenant-schema.js'

const fixture = await pgbouncerFixture(t, 'pgbouncer_modes')
const session = await startBouncer(t, 'session', 4, [fixture.app])
const transaction = await startBouncer(t, 'transaction', 2, [fixture.app])
const [isoA, isoB] = fixture.isolated
const { shared, isolated, schemas } = fixture.instances

interface Seen { name: string, iid: number, schema: string, setting: string | null, database: string, login: string }
const seen = (db: Kysely<TenantDB>): Promise<Seen[]> => db.selectFrom('student').select(['name', 'iid',
  sql<string>`current_schema()`.as('schema'), sql<string | null>`current_setting('tenancy.iid', true)`.as('setting'),
  sql<string>`current_database()`.as('database'), sql<string>`current_user`.as('login')]).orderBy('id').execute()

function datasources (bouncer: typeof session, user?: typeof fixture.app): Record<string, string> {
  return { default: bouncer.url(fixture.database, user), isoA: bouncer.url(isoA.database, user), isoB: bouncer.url(isoB.database, user) }
}

for (const [pooling, bouncer] of [['session', session], ['transaction', transaction]] as const) {
t.test(`${pooling} pooling: shared, schema (with and without a role) and isolated instances`, async (t) => {
  const tenancy = await createTenancy({ instances: [...shared, ...schemas, ...isolated], datasources: datasources(bouncer), tables, pool: { max: 2 }, pgbouncer: pooling })
  t.teardown(() => tenancy.close())
  const db = tenancy.kysely<TenantDB>()
  const expected: Record<string, { schema: string, database: string, prefix: string, login: string }> = {
    a: { schema: 'public', database: fixture.database, prefix: 'student', login: 'postgres' },
    left: { schema: 'pgb_left', database: fixture.database, prefix: 'pgb_left', login: 'postgres' },
    right: { schema: 'pgb_right', database: fixture.database, prefix: 'pgb_right', login: 'postgres' },
    roled: { schema: 'pgb_roled', database: fixture.database, prefix: 'pgb_roled', login: fixture.schemaRole },
    isoA: { schema: 'public', database: isoA.database, prefix: isoA.database, login: 'postgres' },
    isoB: { schema: 'public', database: isoB.database, prefix: isoB.database, login: 'postgres' },
  }
  // Twice round, so that connections come back to instances after others used them.
  for (const round of [1, 2]) {
    for (const [name, want] of Object.entries(expected)) {
      const id = tenancy.getInstance(name).id
      const rows = await tenancy.runAsInstance(name, () => seen(db))
      t.same(rows.map((row) => row.name), [1, 2, 3, 4].map((s) => `${want.prefix} ${s} of ${id}`), `round ${round}: ${name} reads its own rows`)
      t.same([...new Set(rows.map((row) => `${row.schema} ${row.database} ${row.login}`))], [`${want.schema} ${want.database} ${want.login}`], `round ${round}: ${name} runs in its schema, database and role`)
    }
  }
  await t.rejects(tenancy.runAsInstance('roled', () => sql`select * from pgb_left.student`.execute(db)), /permission denied/, 'the role keeps the schema instance out of other schemas')
  const moved = await tenancy.runAsInstance('left', () => db.transaction().execute(async (trx) => {
    await sql`set local search_path to pgb_right`.execute(trx)
    return (await sql<{ schema: string }>`select current_schema() as schema`.execute(trx)).rows[0]!.schema
  }))
  t.equal(moved, 'pgb_right', 'SET LOCAL inside a transaction works')
  t.same([...new Set((await tenancy.runAsInstance('left', () => seen(db))).map((row) => row.schema))], ['pgb_left'], 'and ends with it')
})

t.test(`${pooling} pooling: row-level security as an ordinary login`, async (t) => {
  const tenancy = await createTenancy({ instances: shared, datasources: { default: bouncer.url(fixture.database, fixture.app) }, tables, pool: { max: 2 }, rls: true, pgbouncer: pooling })
  t.teardown(() => tenancy.close())
  const db = tenancy.kysely<TenantDB>()
  for (const id of [1, 2, 3, 1]) {
    const { rows } = await tenancy.runAsInstance(id, () => sql<{ iid: number, setting: string }>`select iid, current_setting('tenancy.iid', true) as setting from student`.execute(db))
    t.same([...new Set(rows.map((row) => `${row.iid} ${row.setting}`))], [`${id} ${id}`], `raw SQL of instance ${id} sees its rows only, with its setting`)
  }
  t.same((await sql`select * from student`.execute(db)).rows, [], 'no context: nothing')
  t.equal((await tenancy.unscoped(() => sql`select * from student`.execute(db))).rows.length, 12, 'unscoped: everything')
  await tenancy.runAsInstance(2, async () => {
    await t.rejects(sql`insert into student (id, iid, name) values (50, 1, 'intruder')`.execute(db), /row-level security/, 'cannot write another instance')
    await db.transaction().execute(async (trx) => {
      t.same((await trx.selectFrom('student').select('iid').distinct().execute()), [{ iid: 2 }], 'plugin and policy together, in a transaction')
    })
  })
})
}

t.test('transaction pooling: shared and isolated instances', async (t) => {
  const tenancy = await createTenancy({ instances: [...shared, ...isolated], datasources: datasources(transaction), tables, pool: { max: 4 }, pgbouncer: 'transaction' })
  t.teardown(() => tenancy.close())
  const db = tenancy.kysely<TenantDB>()
  const expected: Record<string, { database: string, prefix: string }> = {
    a: { database: fixture.database, prefix: 'student' },
    b: { database: fixture.database, prefix: 'student' },
    isoA: { database: isoA.database, prefix: isoA.database },
    isoB: { database: isoB.database, prefix: isoB.database },
  }
  for (const [name, want] of Object.entries(expected)) {
    const id = tenancy.getInstance(name).id
    const rows = await tenancy.runAsInstance(name, () => seen(db))
    t.same(rows.map((row) => row.name), [1, 2, 3, 4].map((s) => `${want.prefix} ${s} of ${id}`), `${name} reads its own rows`)
    t.same([...new Set(rows.map((row) => `${row.schema} ${row.database} ${row.setting ?? ''}`))], [`public ${want.database} `], `${name}: its database, the default schema, no setting`)
  }
  // A transaction keeps one server connection from BEGIN to COMMIT, and its local settings end with it.
  const inside = await tenancy.runAsInstance('a', () => db.transaction().execute(async (trx) => {
    await trx.insertInto('student').values({ id: 90, name: 'new of 1' }).execute()
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from student where iid = 1`.execute(trx)
    await trx.deleteFrom('student').where('id', '=', 90).execute()
    await sql`set local search_path to pgb_right`.execute(trx)
    return { ...rows[0], schema: (await sql<{ schema: string }>`select current_schema() as schema`.execute(trx)).rows[0]!.schema }
  }))
  t.same(inside, { n: 5, schema: 'pgb_right' }, 'a transaction sees its own insert and its SET LOCAL')
  t.same([...new Set((await tenancy.runAsInstance('a', () => seen(db))).map((row) => row.schema))], ['public'], 'the SET LOCAL ended with the transaction')
  t.same(await query(fixture.url, 'select count(*)::int as n from student where id = 90'), [{ n: 0 }], 'and its rows were deleted in it')
})

t.test('transaction pooling: each transaction gets the session state, and nothing outlives it', async (t) => {
  const tenancy = await createTenancy({ instances: [...shared, ...schemas], datasources: { default: transaction.url(fixture.database) }, tables, pool: { max: 1 }, pgbouncer: 'transaction' })
  t.teardown(() => tenancy.close())
  const db = tenancy.kysely<TenantDB>()
  const where = sql<string>`current_schema() || ' ' || current_setting('transaction_isolation')`.as('where')
  const serializable = await tenancy.runAsInstance('left', () => db.transaction().setIsolationLevel('serializable').execute(async (trx) =>
    (await trx.selectNoFrom(where).executeTakeFirstOrThrow()).where))
  t.equal(serializable, 'pgb_left serializable', 'START TRANSACTION ISOLATION LEVEL comes first, the set-up after it')
  const chained = await tenancy.runAsInstance('left', () => db.transaction().execute(async (trx) => {
    await sql`commit and chain`.execute(trx)
    return (await trx.selectNoFrom(where).executeTakeFirstOrThrow()).where
  }))
  t.equal(chained, 'pgb_left read committed', 'a chained transaction gets the set-up again')
  await t.rejects(tenancy.runAsInstance('left', () => sql`select 1; commit; select 2`.execute(db)), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /a text that ends or begins a transaction among other statements/ })
  // A statement outside a transaction commits in its own before it resolves, or fails and leaves nothing.
  await tenancy.runAsInstance('right', () => db.insertInto('student').values({ id: 90, name: 'pgb_right new' }).execute())
  t.same(await query(fixture.url, 'select iid, name from pgb_right.student where id = 90'), [{ iid: 12, name: 'pgb_right new' }], 'committed in its schema when the insert resolved')
  await t.rejects(tenancy.runAsInstance('right', () => db.insertInto('student').values({ id: 90, name: 'twice' }).execute()), /duplicate key/)
  t.same((await tenancy.runAsInstance('right', () => db.deleteFrom('student').where('id', '=', 90).returning('name').execute())), [{ name: 'pgb_right new' }], 'the next statement runs after the failed one')
  t.same(await query(fixture.url, 'select count(*)::int as n from pgb_right.student where id = 90'), [{ n: 0 }])
  t.same(await query(fixture.url, "select count(*)::int as n from pg_stat_activity where datname = $1 and state like 'idle in transaction%'", [fixture.database]), [{ n: 0 }], 'no transaction is left open on the server')
  t.same([...new Set((await tenancy.runAsInstance('a', () => seen(db))).map((row) => `${row.schema} ${row.login}`))], ['public postgres'], 'the one client connection, after schema instances, is at the defaults for a shared one')
})

t.test('transaction pooling: statements that would change the session are not sent', async (t) => {
  const tenancy = await createTenancy({ instances: shared, datasources: { default: transaction.url(fixture.database) }, tables, pool: { max: 1 }, pgbouncer: 'transaction' })
  t.teardown(() => tenancy.close())
  const db = tenancy.kysely<TenantDB>()
  const statements = [
    sql`set search_path to pgb_left`,
    sql`select set_config('tenancy.iid', '2', false)`,
    sql`select pg_advisory_lock(42)`,
    sql`create temp table leak (x int)`,
    sql`prepare leak as select 1`,
    sql`listen leak`,
    sql`select 1; reset role`,
  ]
  for (const statement of statements) {
    await t.rejects(tenancy.runAsInstance('a', () => statement.execute(db)), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /transaction pooling/ }, statement.compile(db).sql)
  }
  const after = await query<{ n: number }>(fixture.url, `select count(*)::int as n from pg_stat_activity where datname = $1 and pid <> pg_backend_pid() and (query ilike '%leak%' or query ilike 'set search_path%' or query ilike '%advisory_lock(42)%')`, [fixture.database])
  t.same(after, [{ n: 0 }], 'none of them reached the server')
  t.same([...new Set((await tenancy.runAsInstance('a', () => seen(db))).map((row) => `${row.schema} ${row.setting ?? ''}`))], ['public '], 'the sessions behind PgBouncer are untouched')
  t.same((await tenancy.runAsInstance('a', () => db.transaction().execute(async (trx) => await sql<{ v: string }>`select set_config('tenancy.iid', '7', true) as v, pg_advisory_xact_lock(42)::text`.execute(trx)))).rows[0]?.v, '7', 'transaction-scoped forms are sent')
})

t.test('transaction pooling: what needs session state is refused at start-up', async (t) => {
  const datasources = { default: transaction.url(fixture.database) }
  const refused: Array<[string, Parameters<typeof createTenancy>[0], RegExp]> = [
    ['watchTables', { instances: shared, datasources, watchTables: true }, /watchTables listens for catalog changes/],
    ['a databaseStore', { instances: databaseStore(), datasources, tables }, /a databaseStore listens for changes/],
  ]
  for (const [label, options, message] of refused) {
    await t.rejects(createTenancy({ ...options, pgbouncer: 'transaction' }), { code: 'TENANCY_INVALID_OPTIONS', message }, label)
  }
  await t.rejects(createTenancy({ instances: shared, datasources, tables, pgbouncer: 'statement' as any }), { code: 'TENANCY_INVALID_OPTIONS', message: /pgbouncer must be "session", "transaction" or false, not "statement"/ })

  // Discovery still works, without the watcher; migrations are refused when they would run.
  const tenancy = await createTenancy({ instances: shared, datasources, pgbouncer: 'transaction' })
  t.teardown(() => tenancy.close())
  t.equal(tenancy.tenantTables?.kind('student'), 'must', 'the tenant tables are discovered through PgBouncer')
  await t.rejects(tenancy.migrate(), { code: 'TENANCY_INVALID_OPTIONS', message: /migrate\(\) takes a session advisory lock/ })
})

t.test('transaction pooling: a schema instance a store adds later, and a role that does not exist', async (t) => {
  const list: Instance[] = []
  const store: InstanceStore = {
    byName: (name) => list.find((instance) => instance.name === name),
    byId: (id) => list.find((instance) => instance.id === id),
    list: () => list,
  }
  const tenancy = await createTenancy({ instances: store, datasources: { default: transaction.url(fixture.database) }, tables, pgbouncer: 'transaction' })
  t.teardown(() => tenancy.close())
  list.push({ name: 'late', id: 11, title: 'late', config: {}, mode: 'schema', datasource: 'default', schema: 'pgb_left', role: null, disabled: false })
  list.push({ name: 'ghost', id: 12, title: 'ghost', config: {}, mode: 'schema', datasource: 'default', schema: 'pgb_right', role: 'pgb_no_such_role', disabled: false })
  const db = tenancy.kysely<TenantDB>()
  t.same([...new Set((await tenancy.runAsInstance('late', () => seen(db))).map((row) => `${row.schema} ${row.name.split(' ')[0]}`))], ['pgb_left pgb_left'], 'a schema instance added later runs in its schema')
  await t.rejects(tenancy.runAsInstance('ghost', () => seen(db)), { code: 'TENANCY_SESSION_FAILED', message: /The transaction of a connection for instance "ghost" could not be prepared/ })
  await t.rejects(tenancy.runAsInstance('ghost', () => db.transaction().execute((trx) => seen(trx))), { code: 'TENANCY_SESSION_FAILED' }, 'in a transaction too')
  t.same(tenancy.pools.counts().leased, 0, 'no connection is left checked out')
  t.same([...new Set((await tenancy.runAsInstance('late', () => seen(db))).map((row) => row.schema))], ['pgb_left'], 'and the connection still works')
})

t.test('transaction pooling: a cursor (stream) runs inside a transaction that has the set-up', async (t) => {
  const tenancy = await createTenancy({ instances: [...shared, ...schemas], datasources: { default: transaction.url(fixture.database) }, tables, pool: { max: 1 }, pgbouncer: 'transaction' })
  t.teardown(() => tenancy.close())
  // Not destroyed: it would close the tenancy's pools.
  const db = new Kysely<TenantDB>({ dialect: new PostgresDialect({ pool: new RoutingPool(tenancy.pools, { context: () => tenancy.context(), transactionPooling: true }), cursor: WholeCursor }) })
  const streamed = await tenancy.runAsInstance('right', () => db.transaction().execute(async (trx) => {
    const rows = []
    for await (const row of trx.selectFrom('student').select(['name', sql<string>`current_schema()`.as('schema')]).where('iid', '=', 12).orderBy('id').stream()) rows.push(row)
    return rows
  }))
  t.same(streamed, [1, 2, 3, 4].map((s) => ({ name: `pgb_right ${s} of 12`, schema: 'pgb_right' })), 'rows of its schema, read in its schema')
  await t.rejects(tenancy.runAsInstance('right', async () => { for await (const row of db.selectFrom('student').selectAll().stream()) t.fail(`no row: ${JSON.stringify(row)}`) }),
    { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /stream inside db\.transaction\(\)/ }, 'outside a transaction it is refused')
  const plain = await tenancy.runAsInstance('a', async () => { const rows = []; for await (const row of db.selectNoFrom(sql<string>`current_schema()`.as('schema')).stream()) rows.push(row); return rows })
  t.same(plain, [{ schema: 'public' }], 'an instance that needs no set-up streams as it is')
})
