// Fleet migrations side by side: two runs at once, schemas of one database in
// parallel, the pool budget, and what a migration can do to its session.
import t from 'tap'
import pg from 'pg'
import { sql } from 'kysely'
import { NO_MIGRATIONS } from 'kysely/migration'
import { createTenancy, type TenancyOptions } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { FLEET_MIGRATIONS, fleetMigrations } from './fixtures/migrations/fleet-migrations.js'
import { byTarget, executed, ran, tables } from './fixtures/migrations/fleet-checks.js'

const main = await createDatabase(t, 'migrations_side')
const iso1 = await createDatabase(t, 'migrations_side_iso')

const options: TenancyOptions = {
  instances: [
    { name: '', id: 1 },
    { name: 'shareTest', id: 2 },
    { name: 'acme', id: 3, schema: 'tenant_acme' },
    { name: 'globex', id: 4, schema: 'tenant_globex' },
    { name: 'initech', id: 5, schema: 'tenant_initech' },
    { name: 'iso1', id: 1000, isolate: true, isolateClient: 'iso1' },
  ],
  datasources: { default: main, iso1 },
  tables: {},
  migrations: { instance: fleetMigrations() },
}
const places: Record<string, [string, string]> = {
  'shared:default': [main, 'public'],
  'schema:default.tenant_acme': [main, 'tenant_acme'],
  'schema:default.tenant_globex': [main, 'tenant_globex'],
  'schema:default.tenant_initech': [main, 'tenant_initech'],
  'isolated:iso1': [iso1, 'public'],
}
const INSTANCE_TARGETS = Object.keys(places)

t.test('two migrate() calls at once never run a target\'s migration twice', async (t) => {
  // Two tenancies have pools of their own, as two processes would.
  const one = await createTenancy(options)
  t.teardown(() => one.close())
  const other = await createTenancy(options)
  t.teardown(() => other.close())
  const [a, b] = await Promise.all([one.migrate(), other.migrate()])
  for (const key of INSTANCE_TARGETS) {
    const first = byTarget(a)[key]!
    const second = byTarget(b)[key]!
    t.same([first.status, second.status], ['success', 'success'], key)
    t.same([...ran(first), ...ran(second)].sort(), FLEET_MIGRATIONS, `${key}: each migration ran once`)
    t.ok(ran(first).length === 0 || ran(second).length === 0, `${key}: one call ran the whole target, the other found nothing left`)
    t.same(await executed(...places[key]!), FLEET_MIGRATIONS)
  }
})

t.test('schemas of one database migrate side by side: one lock per target, not one per database', async (t) => {
  const LOCK = 4242
  const provider = {
    getMigrations: async () => ({
      '001_wait': {
        async up (db: any) {
          const { rows: [row] } = await sql<{ schema: string }>`select current_schema() as schema`.execute(db)
          if (row?.schema === 'tenant_p1') await sql`select pg_advisory_xact_lock(${sql.lit(LOCK)})`.execute(db)
          // p2 goes on only once p1 waits inside its own migration, holding its own target lock.
          if (row?.schema === 'tenant_p2') {
            await sql.raw(`do $$ begin
              for i in 1..200 loop
                if exists (select 1 from pg_locks where locktype = 'advisory' and objid = ${LOCK} and objsubid = 1 and not granted
                  and database = (select oid from pg_database where datname = current_database())) then return; end if;
                perform pg_sleep(0.05);
              end loop;
              raise exception 'tenant_p1 never got inside its migration';
            end $$`).execute(db)
          }
          await db.schema.createTable('marker').addColumn('x', 'integer').execute()
        },
      },
    }),
  }
  const side = await createTenancy({
    instances: [{ name: 'p1', id: 1, schema: 'tenant_p1' }, { name: 'p2', id: 2, schema: 'tenant_p2' }],
    datasources: { default: main },
    tables: {},
    migrations: { instance: provider, tableName: 'side_migration' },
  })
  t.teardown(() => side.close())
  const holder = new pg.Client({ connectionString: main })
  await holder.connect()
  t.teardown(() => holder.end())
  await holder.query(`select pg_advisory_lock(${LOCK})`)
  let held = true
  let p2EndedWhileHeld: boolean | undefined
  let p2Ended!: () => void
  const p2 = new Promise<void>((resolve) => { p2Ended = resolve })
  const run = side.migrate({
    concurrency: 2,
    onProgress: (event) => {
      if (event.type === 'target-end' && event.result.target === 'schema:default.tenant_p2') { p2EndedWhileHeld = held; p2Ended() }
    },
  })
  // Bounded, so a serialised run fails instead of hanging.
  await Promise.race([p2, new Promise((resolve) => setTimeout(resolve, 20_000))])
  held = false
  await holder.query(`select pg_advisory_unlock(${LOCK})`)
  const report = await run
  t.same(report.targets.map((target) => [target.target, target.status]), [['schema:default.tenant_p1', 'success'], ['schema:default.tenant_p2', 'success']])
  t.equal(p2EndedWhileHeld, true, 'p2 finished while p1 was still inside its migration')
})

t.test('at most half of a pool serves migrations, whatever concurrency asks for', async (t) => {
  let inFlight = 0
  let most = 0
  const provider = {
    getMigrations: async () => ({
      '001_probe': {
        async up () {
          inFlight++
          most = Math.max(most, inFlight)
          // Give the others a chance to overlap: the count can only go over the budget if they do.
          for (let i = 0; i < 50 && inFlight < 4; i++) await new Promise((resolve) => setTimeout(resolve, 10))
          inFlight--
        },
      },
    }),
  }
  const tight = await createTenancy({
    instances: Array.from({ length: 6 }, (_, i) => ({ name: `t${i}`, id: i + 1, schema: `tenant_t${i}` })),
    datasources: { default: main },
    tables: {},
    pool: { max: 4 },
    maxPools: 2,
    migrations: { instance: provider, tableName: 'probe_migration' },
  })
  t.teardown(() => tight.close())
  const report = await tight.migrate({ concurrency: 50 })
  t.equal(report.ok, true)
  t.equal(report.targets.length, 6)
  t.ok(most >= 1 && most <= 2, `at most two of the pool's four connections at once (${most})`)
})

t.test('reverting a migration without down fails its target after the ones before it were reverted', async (t) => {
  const provider = {
    getMigrations: async () => ({
      '001_oneway': { async up (db: any) { await db.schema.createTable('oneway').addColumn('x', 'integer').execute() } },
      '002_twoway': {
        async up (db: any) { await db.schema.createTable('twoway').addColumn('x', 'integer').execute() },
        async down (db: any) { await db.schema.dropTable('twoway').execute() },
      },
    }),
  }
  const oneway = await createTenancy({
    instances: [{ name: 'o', id: 1, schema: 'tenant_oneway' }],
    datasources: { default: main },
    tables: {},
    migrations: { instance: provider, tableName: 'oneway_migration' },
  })
  t.teardown(() => oneway.close())
  t.equal((await oneway.migrate()).ok, true)
  const report = await oneway.migrate({ to: NO_MIGRATIONS })
  const [target] = report.targets
  t.equal(target!.status, 'error')
  t.equal(target!.failedMigration, '001_oneway')
  t.match(String(target!.error), /has no down method/)
  t.same(target!.results.map((result) => [result.migrationName, result.direction, result.status]), [['002_twoway', 'Down', 'Success'], ['001_oneway', 'Down', 'Error']])
  t.same(await executed(main, 'tenant_oneway', 'oneway_migration'), ['001_oneway'], 'the revert of 002 stays')
  t.same(await tables(main, 'tenant_oneway'), ['oneway', 'oneway_migration', 'oneway_migration_lock'])
})

t.test('a migration that changes search_path cannot send the next one to public', async (t) => {
  const provider = {
    getMigrations: async () => ({
      '001_wander': { async up (db: any) { await sql`set search_path to public`.execute(db) } },
      '002_table': { async up (db: any) { await db.schema.createTable('landed').addColumn('x', 'integer').execute() } },
    }),
  }
  const wander = await createTenancy({
    instances: [{ name: 'w', id: 1, schema: 'tenant_wander' }],
    datasources: { default: main },
    tables: {},
    migrations: { instance: provider, tableName: 'wander_migration' },
  })
  t.teardown(() => wander.close())
  const report = await wander.migrate()
  t.same(ran(report.targets[0]), ['001_wander', '002_table'])
  t.same(await query(main, "select schemaname from pg_tables where tablename = 'landed'"), [{ schemaname: 'tenant_wander' }])
})
