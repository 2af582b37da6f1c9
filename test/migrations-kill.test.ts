// A process killed with SIGKILL in the middle of a migration leaves its target
// at its last good migration and no lock behind; a second run completes
// exactly what is left.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { createTenancy } from '../lib/index.js'
import { MIGRATION_LOCK_NAMESPACE } from '../lib/lifecycle/migration-lock.js'
import { createDatabase, query } from './helpers/database.js'
import { FLEET_MIGRATIONS, fleetMigrations } from './fixtures/migrations/fleet-migrations.js'
import { executed } from './fixtures/migrations/fleet-checks.js'

const main = await createDatabase(t, 'migrations_kill')
const iso = await createDatabase(t, 'migrations_kill_iso')
const child = (url: string): string => { const parsed = new URL(url); parsed.searchParams.set('application_name', 'migrate-child'); return parsed.toString() }

const instances = [
  { name: '', id: 1 },
  { name: 'shareTest', id: 2 },
  { name: 'acme', id: 3, schema: 'tenant_acme' },
  { name: 'globex', id: 4, schema: 'tenant_globex' },
  { name: 'initech', id: 5, schema: 'tenant_initech' },
  { name: 'iso', id: 1000, isolate: true, isolateClient: 'iso' },
]
const places: Record<string, [string, string]> = {
  'shared:default': [main, 'public'],
  'schema:default.tenant_acme': [main, 'tenant_acme'],
  'schema:default.tenant_globex': [main, 'tenant_globex'],
  'schema:default.tenant_initech': [main, 'tenant_initech'],
  'isolated:iso': [iso, 'public'],
}

t.test('killed with SIGKILL inside a migration, then a second run', async (t) => {
  // The loader tap runs TypeScript with, and nothing else of the test process.
  const loader = process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'))
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  const script = fileURLToPath(new URL('./fixtures/migrate-child.ts', import.meta.url))
  const config = { instances, datasources: { default: child(main), iso: child(iso) }, concurrency: 2, hangIn: 'tenant_globex' }
  const proc = spawn(process.execPath, [...loader, script, JSON.stringify(config)], { env, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = once(proc, 'exit')
  const seen: unknown[] = []
  let inside = false
  for await (const line of createInterface({ input: proc.stdout })) {
    const event = JSON.parse(line) as { inside?: string, schema?: string, type?: string }
    seen.push(event)
    if (event.inside === '002_course' && event.schema === 'tenant_globex') { inside = true; break }
    if (event.type === 'done') break
  }
  t.ok(inside, 'the child got inside globex\'s 002')
  proc.kill('SIGKILL')
  const [code, signal] = await exited
  t.same([code, signal], [null, 'SIGKILL'])

  // Its connections end with it; PostgreSQL rolls back what they had open and drops their locks.
  for (let i = 0; i < 200; i++) {
    const [{ count }] = await query<{ count: string }>(main, "select count(*) from pg_stat_activity where application_name = 'migrate-child'") as [{ count: string }]
    if (count === '0') break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.same(await query(main, "select objid from pg_locks where locktype = 'advisory' and classid = $1 and database = (select oid from pg_database where datname = current_database())", [MIGRATION_LOCK_NAMESPACE]), [], 'no migration lock is left')
  t.same(await executed(main, 'tenant_globex'), ['001_student'], 'globex stays at its last good migration')
  t.same(await query(main, "select column_name from information_schema.columns where table_schema = 'tenant_globex' and table_name = 'student' order by ordinal_position"),
    [{ column_name: 'id' }, { column_name: 'iid' }, { column_name: 'name' }], "what 002 had done was rolled back")
  t.same(await query(main, "select to_regclass('tenant_globex.course') as course"), [{ course: null }])

  const before: Record<string, string[]> = {}
  for (const [key, [url, schema]] of Object.entries(places)) before[key] = await executed(url, schema)

  const ten = await createTenancy({ instances, datasources: { default: main, iso }, tables: {}, migrations: { instance: fleetMigrations() } })
  t.teardown(() => ten.close())
  const report = await ten.migrate()
  t.equal(report.ok, true)
  for (const target of report.targets) {
    const left = FLEET_MIGRATIONS.filter((name) => !before[target.target]!.includes(name))
    t.same(target.results.map((result) => [result.migrationName, result.status]), left.map((name) => [name, 'Success']), `${target.target}: exactly what was left (${left.join(', ') || 'nothing'})`)
    t.same(await executed(...places[target.target]!), FLEET_MIGRATIONS)
  }
  t.same(report.targets.find((target) => target.target === 'schema:default.tenant_globex')!.results.map((result) => result.migrationName), ['002_course', '003_backfill'])
})
