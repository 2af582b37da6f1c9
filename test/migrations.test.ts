// Fleet migrations on a real PostgreSQL: shared tables, schemas and isolated
// databases, each target with its own migration table and lock. The tests
// run in order on one fleet, each starting from where the previous one left it
// (runs at once, locks and the budget: migrations-concurrency.test.ts).
import t from 'tap'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Generated } from 'kysely'
import { FileMigrationProvider, NO_MIGRATIONS } from 'kysely/migration'
import { createTenancy, type TenancyOptions } from '../lib/index.js'
import type { MigrationProgress } from '../lib/lifecycle/fleet-migrator.js'
import { createDatabase, query } from './helpers/database.js'
import { FLEET_MIGRATIONS, fleetMigrations } from './fixtures/migrations/fleet-migrations.js'
import { byTarget, columns, executed, ran, tables } from './fixtures/migrations/fleet-checks.js'

const main = await createDatabase(t, 'migrations')
const iso1 = await createDatabase(t, 'migrations_iso1')
const iso2 = await createDatabase(t, 'migrations_iso2')

const instances = [
  { name: '', id: 1 },
  { name: 'shareTest', id: 2 },
  { name: 'acme', id: 3, schema: 'tenant_acme' },
  { name: 'globex', id: 4, schema: 'tenant_globex' },
  { name: 'bad', id: 5, schema: 'tenant_bad' },
  { name: 'iso1', id: 1000, isolate: true, isolateClient: 'iso1' },
  { name: 'iso2', id: 1001, isolate: true, isolateClient: 'iso2' },
]
const HOST_MIGRATIONS = ['001_plan', '002_plan_seed']
const options: TenancyOptions = {
  instances,
  datasources: { default: main, iso1, iso2 },
  migrations: {
    instance: fleetMigrations(),
    host: new FileMigrationProvider({ fs, path, migrationFolder: fileURLToPath(new URL('./fixtures/migrations/host', import.meta.url)) }),
  },
}
// Made before any table exists, without a tables option: the tenant tables come from discovery.
const ten = await createTenancy(options)
t.teardown(() => ten.close())

interface StudentDB { student: { id: Generated<number>, iid: Generated<number>, name: string } }

/** Where each instance target's tables live: database and schema. */
const places: Record<string, [string, string]> = {
  'shared:default': [main, 'public'],
  'schema:default.tenant_acme': [main, 'tenant_acme'],
  'schema:default.tenant_globex': [main, 'tenant_globex'],
  'schema:default.tenant_bad': [main, 'tenant_bad'],
  'isolated:iso1': [iso1, 'public'],
  'isolated:iso2': [iso2, 'public'],
}
const INSTANCE_TARGETS = Object.keys(places)

t.test('the targets: the shared tables once, each schema, each isolated database, the host set apart', async (t) => {
  const status = await ten.migrationStatus()
  t.same(status.map((s) => [s.target, s.kind, s.set, s.instances]), [
    ['host', 'host', 'host', []],
    ['shared:default', 'shared', 'instance', ['', 'shareTest']],
    ['schema:default.tenant_acme', 'schema', 'instance', ['acme']],
    ['schema:default.tenant_globex', 'schema', 'instance', ['globex']],
    ['schema:default.tenant_bad', 'schema', 'instance', ['bad']],
    ['isolated:iso1', 'isolated', 'instance', ['iso1']],
    ['isolated:iso2', 'isolated', 'instance', ['iso2']],
  ])
  for (const entry of status) {
    t.equal(entry.version, null, `${entry.target} has no version yet`)
    t.same(entry.pending, entry.set === 'host' ? HOST_MIGRATIONS : FLEET_MIGRATIONS, `${entry.target}: everything is pending`)
    t.notOk(entry.error)
  }
  t.same(await query(main, "select nspname from pg_namespace where nspname like 'tenant_%'"), [], 'reading the status created no schema')
  await t.rejects(ten.runAsInstance('shareTest', () => ten.kysely<StudentDB>().selectFrom('student').selectAll().execute()),
    { code: 'TENANCY_UNKNOWN_TABLE' }, 'the filter does not know the table yet')
})

t.test('bad options throw before anything runs', async (t) => {
  await t.rejects(ten.migrate({ only: ['acme', 'nobody'] }), { code: 'TENANCY_UNKNOWN_INSTANCE', statusCode: 404 })
  await t.rejects(ten.migrate({ sets: 'instance', to: '009_nothing' }), { code: 'TENANCY_INVALID_OPTIONS' })
  await t.rejects(ten.migrate({ concurrency: 0 }), { code: 'TENANCY_INVALID_OPTIONS' })
  await t.rejects(ten.migrate({ sets: 'all', only: ['acme'] }), { code: 'TENANCY_INVALID_OPTIONS' })
  t.same(await query(main, "select nspname from pg_namespace where nspname like 'tenant_%'"), [], 'no schema was made')
  t.same(await tables(main, 'public'), [], 'no migration table was made')
})

t.test('one schema alone, to a named migration: its tables and its migration rows land in its schema', async (t) => {
  const report = await ten.migrate({ only: ['acme'], to: '001_student' })
  t.same(report.targets.map((target) => [target.target, target.status, target.schema]), [['schema:default.tenant_acme', 'success', 'tenant_acme']])
  t.same(report.targets[0]!.results, [{ migrationName: '001_student', direction: 'Up', status: 'Success' }])
  t.same(await tables(main, 'tenant_acme'), ['kysely_migration', 'kysely_migration_lock', 'student'])
  t.same(await executed(main, 'tenant_acme'), ['001_student'])
  t.same(await tables(main, 'public'), [], 'nothing in public: no student table, no migration table')
  t.same(await query(main, "select nspname from pg_namespace where nspname like 'tenant_%'"), [{ nspname: 'tenant_acme' }], 'no other schema was touched')
})

t.test('the fleet: targets at different versions, one schema failing while the others succeed', async (t) => {
  // tenant_bad already has a course table, so its 002 fails after it added student.course_id.
  await query(main, 'create schema tenant_bad; create table tenant_bad.course (x int)')
  const events: MigrationProgress[] = []
  const report = await ten.migrate({ onProgress: (event) => { events.push(event) } })
  const result = byTarget(report)
  t.same(report.targets.map((target) => target.target), ['host', ...INSTANCE_TARGETS], 'host first, then the configuration order')
  t.equal(report.ok, false)
  t.equal(report.changed, true)
  t.same(ran(result.host), HOST_MIGRATIONS, 'the host set from files')
  t.same(ran(result['schema:default.tenant_acme']), ['002_course', '003_backfill'], 'acme was at 001: only the rest ran')
  for (const key of ['shared:default', 'schema:default.tenant_globex', 'isolated:iso1', 'isolated:iso2']) {
    t.equal(result[key]!.status, 'success', key)
    t.same(ran(result[key]), FLEET_MIGRATIONS, `${key} ran everything`)
  }
  const bad = result['schema:default.tenant_bad']!
  t.equal(bad.status, 'error')
  t.equal(bad.failedMigration, '002_course')
  t.match(String(bad.error), /relation "course" already exists/)
  t.same(bad.results, [
    { migrationName: '001_student', direction: 'Up', status: 'Success' },
    { migrationName: '002_course', direction: 'Up', status: 'Error' },
    { migrationName: '003_backfill', direction: 'Up', status: 'NotExecuted' },
  ])
  t.same(await executed(main, 'tenant_bad'), ['001_student'], 'bad stays at its last good migration')
  t.same(await columns(main, 'tenant_bad', 'student'), ['id', 'iid', 'name'], "002's first statement was rolled back with it")

  // Each migration table holds its own target's rows; nothing of a schema landed in public.
  t.same(await executed(main, 'public'), FLEET_MIGRATIONS, 'shared')
  t.same(await executed(main, 'tenant_acme'), FLEET_MIGRATIONS)
  t.same(await executed(main, 'tenant_globex'), FLEET_MIGRATIONS)
  t.same(await executed(iso1, 'public'), FLEET_MIGRATIONS)
  t.same(await executed(main, 'public', 'tenancy_host_migration'), HOST_MIGRATIONS)
  t.same(await tables(main, 'public'), ['course', 'kysely_migration', 'kysely_migration_lock', 'plan', 'student', 'tenancy_host_migration', 'tenancy_host_migration_lock'])
  for (const schema of ['tenant_acme', 'tenant_globex']) t.same(await tables(main, schema), ['course', 'kysely_migration', 'kysely_migration_lock', 'student'], schema)
  t.same(await tables(iso1, 'public'), ['course', 'kysely_migration', 'kysely_migration_lock', 'student'], 'no host table in an isolated database')
  t.same(await query(main, 'select id, name from plan order by id'), [{ id: 1, name: 'free' }, { id: 2, name: 'pro' }])

  const ends = events.filter((event) => event.type === 'target-end')
  t.same(ends.map((event) => event.type === 'target-end' && event.result.target).sort(), [...report.targets.map((target) => target.target)].sort(), 'one end per target')
  t.same(ends.map((event) => event.type === 'target-end' && event.done), ends.map((_, i) => i + 1))
  const start = events.find((event) => event.type === 'target-start' && event.target.key === 'schema:default.tenant_acme')
  t.same(start?.type === 'target-start' && start.plan, ['002_course', '003_backfill'], 'the plan, for a progress bar')
  t.equal(events.filter((event) => event.type === 'migration').length, 2 + 2 + 3 * 4 + 2, 'one event per migration that ran or failed')
})

t.test('a second run picks up exactly what is left', async (t) => {
  await query(main, 'drop table tenant_bad.course')
  const report = await ten.migrate()
  const result = byTarget(report)
  t.equal(report.ok, true)
  t.same(ran(result['schema:default.tenant_bad']), ['002_course', '003_backfill'])
  for (const target of report.targets) {
    if (target.target !== 'schema:default.tenant_bad') t.same(target.results, [], `${target.target} had nothing left`)
  }
  t.same(await executed(main, 'tenant_bad'), FLEET_MIGRATIONS)
  t.same((await ten.migrationStatus()).map((s) => [s.target, s.version, s.pending]),
    [['host', '002_plan_seed', []], ...INSTANCE_TARGETS.map((key) => [key, '003_backfill', []])])
})

t.test("after a run that changed them, the filter's tenant tables are discovered again by themselves", async (t) => {
  const db = ten.kysely<StudentDB>()
  await ten.runAsInstance('', () => db.insertInto('student').values({ name: ' default one ' }).execute())
  await ten.runAsInstance('shareTest', () => db.insertInto('student').values({ name: 'share one' }).execute())
  await ten.runAsInstance('acme', () => db.insertInto('student').values({ name: 'acme one' }).execute())
  t.same(await ten.runAsInstance('shareTest', () => db.selectFrom('student').select(['iid', 'name']).execute()), [{ iid: 2, name: 'share one' }])
  t.same(await query(main, 'select iid, name from public.student order by id'), [{ iid: 1, name: ' default one ' }, { iid: 2, name: 'share one' }])
  t.same(await query(main, 'select iid, name from tenant_acme.student'), [{ iid: 3, name: 'acme one' }])
})

t.test('down migrations: the previous one, down to a named one, and back up', async (t) => {
  const previous = await ten.migrate({ to: 'previous' })
  t.same(previous.targets.map((target) => target.target), INSTANCE_TARGETS, 'the instance set only')
  for (const target of previous.targets) t.same(ran(target, 'Down'), ['003_backfill'], target.target)
  t.same(await query(main, "select conname from pg_constraint where conname = 'student_name_present'"), [])

  const named = await ten.migrate({ to: '001_student' })
  for (const target of named.targets) t.same(ran(target, 'Down'), ['002_course'], target.target)
  t.same(await columns(main, 'tenant_globex', 'student'), ['id', 'iid', 'name'])
  t.same(await tables(iso2, 'public'), ['kysely_migration', 'kysely_migration_lock', 'student'])
  const status = await ten.migrationStatus()
  t.same(status.map((s) => [s.target, s.version, s.pending]),
    [['host', '002_plan_seed', []], ...INSTANCE_TARGETS.map((key) => [key, '001_student', ['002_course', '003_backfill']])])

  const host = await ten.migrate({ sets: 'host', to: 'previous' })
  t.same(host.targets.map((target) => [target.target, ran(target, 'Down')]), [['host', ['002_plan_seed']]])
  t.same(await query(main, 'select * from plan'), [])

  const up = await ten.migrate()
  t.equal(up.ok, true)
  t.same(ran(byTarget(up).host), ['002_plan_seed'])
  for (const key of INSTANCE_TARGETS) t.same(ran(byTarget(up)[key]), ['002_course', '003_backfill'], key)
  t.same(await query(main, 'select iid, name from public.student order by id'), [{ iid: 1, name: 'default one' }, { iid: 2, name: 'share one' }], 'the backfill ran again')
})

t.test('an abort: the running target finishes its migration and stops, no new target starts', async (t) => {
  const none = await ten.migrate({ to: NO_MIGRATIONS })
  for (const target of none.targets) t.same(ran(target, 'Down'), ['003_backfill', '002_course', '001_student'], target.target)
  t.same(await tables(main, 'tenant_acme'), ['kysely_migration', 'kysely_migration_lock'])

  const controller = new AbortController()
  const report = await ten.migrate({
    concurrency: 1,
    signal: controller.signal,
    onProgress: (event) => { if (event.type === 'migration' && event.set === 'instance') controller.abort() },
  })
  const result = byTarget(report)
  t.equal(report.ok, false)
  t.same(result.host!.results, [], 'the host set was up to date')
  t.equal(result['shared:default']!.status, 'aborted')
  t.same(result['shared:default']!.results, [
    { migrationName: '001_student', direction: 'Up', status: 'Success' },
    { migrationName: '002_course', direction: 'Up', status: 'NotExecuted' },
    { migrationName: '003_backfill', direction: 'Up', status: 'NotExecuted' },
  ])
  t.same(report.notReached, INSTANCE_TARGETS.slice(1))
  for (const key of INSTANCE_TARGETS.slice(1)) t.equal(result[key]!.status, 'not-reached', key)
  t.same(await executed(main, 'public'), ['001_student'])
  t.same(await executed(main, 'tenant_acme'), [])

  const rest = await ten.migrate()
  t.same(ran(byTarget(rest)['shared:default']), ['002_course', '003_backfill'])
  for (const key of INSTANCE_TARGETS.slice(1)) t.same(ran(byTarget(rest)[key]), FLEET_MIGRATIONS, key)
})

t.test('a database that is down: its target says so with a 503, the others migrate', async (t) => {
  const withDown = await createTenancy({
    ...options,
    instances: [...instances, { name: 'gone', id: 1002, isolate: true, isolateClient: 'gone' }],
    datasources: { ...options.datasources, gone: { connectionString: 'postgres://postgres:postgres@127.0.0.1:1/gone', connectionTimeoutMillis: 500 } },
  })
  t.teardown(() => withDown.close())
  await withDown.migrate({ to: 'previous' })
  const report = await withDown.migrate()
  const gone = byTarget(report)['isolated:gone']!
  t.equal(gone.status, 'unavailable')
  t.match(gone.error, { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 })
  t.ok((gone.error as Error).cause, 'with the cause')
  t.same(gone.instances, ['gone'])
  for (const key of INSTANCE_TARGETS) t.same(ran(byTarget(report)[key]), ['003_backfill'], key)
  t.equal(report.ok, false)
  const status = await withDown.migrationStatus()
  const goneStatus = status.find((entry) => entry.target === 'isolated:gone')!
  t.match(goneStatus, { version: null, executed: [], pending: [], error: { code: 'TENANCY_DATASOURCE_UNAVAILABLE', statusCode: 503 } })
  t.same(status.filter((entry) => entry.error !== undefined).map((entry) => entry.target), ['isolated:gone'], 'the others are read')
})
