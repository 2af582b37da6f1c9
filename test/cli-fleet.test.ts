// The bin over a fleet: migrate with one failing schema, run a module per
// instance, doctor on a correct set-up and on each broken one, and the
// progress bar in a pseudo-terminal.
import t from 'tap'
import { execFile, spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { createDatabase, query } from './helpers/database.js'
import { buildCli, cli, cliBin, cliJson } from './helpers/cli.js'

const url = await createDatabase(t, 'cli_fleet')
const dir = await mkdtemp(path.join(os.tmpdir(), 'fastify-tenancy-cli-fleet-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
for (const schema of ['fleet_ok1', 'fleet_bad', 'fleet_ok2']) await query(url, `create schema ${schema}`)

// CLI_STAGE 2 adds a migration that fails in fleet_bad; CLI_CASE breaks the set-up one way.
await writeFile(path.join(dir, 'tenancy.config.mjs'), `const url = ${JSON.stringify(url)}
export default () => {
  const stage = process.env.CLI_STAGE ?? '1'
  const broken = process.env.CLI_CASE ?? ''
  const migrations = {
    '001_student': {
      up: async (db) => {
        await db.schema.createTable('student').addColumn('id', 'serial', (c) => c.primaryKey())
          .addColumn('iid', 'integer', (c) => c.notNull()).addColumn('name', 'text', (c) => c.notNull()).execute()
        await db.schema.createIndex('student_iid').on('student').column('iid').execute()
      },
    },
  }
  if (stage === '2' || stage === '3') {
    migrations['002_course'] = {
      up: async (db) => {
        const { schema } = await db.selectNoFrom((eb) => eb.fn('current_schema', []).as('schema')).executeTakeFirstOrThrow()
        if (schema === 'fleet_bad') throw new Error('broken on purpose in ' + schema)
        await db.schema.createTable('course').addColumn('id', 'serial', (c) => c.primaryKey()).addColumn('iid', 'integer', (c) => c.notNull()).execute()
        await db.schema.createIndex('course_iid').on('course').column('iid').execute()
      },
      down: async (db) => { await db.schema.dropTable('course').execute() },
    }
  }
  if (stage === '3') {
    migrations['003_slow'] = {
      up: async (db) => {
        process.stderr.write('started 003\\n')
        await new Promise((resolve) => setTimeout(resolve, 1500))
        await db.schema.createTable('slow_mark').addColumn('id', 'integer').execute()
      },
    }
  }
  const instances = [
    { name: '', id: 1 },
    { name: 'ok1', id: 2, schema: 'fleet_ok1' },
    { name: 'bad', id: 3, schema: 'fleet_bad' },
    { name: 'ok2', id: 4, schema: 'fleet_ok2' },
  ]
  const datasources = { default: url }
  if (broken === 'schema') instances.push({ name: 'ghost', id: 5, schema: 'fleet_ghost' })
  if (broken === 'role') instances[1] = { ...instances[1], role: 'fleet_no_such_role' }
  if (broken === 'unreachable') {
    instances.push({ name: 'far', id: 6, isolate: true, isolateClient: 'far' })
    datasources.far = { connectionString: 'postgres://postgres:postgres@127.0.0.1:1/far', connectionTimeoutMillis: 500 }
  }
  return {
    instances,
    datasources,
    migrations: { instance: { getMigrations: async () => migrations } },
    ...(broken === 'rls' ? { rls: true } : {}),
    ...(broken === 'connections' ? { pool: { max: 500 } } : {}),
  }
}
`)
const cwd = dir
const stage2 = { CLI_STAGE: '2' }

t.test('migrate, then doctor on the correct set-up', async (t) => {
  const migrated = await cliJson(['migrate'], { cwd })
  t.equal(migrated.code, 0, migrated.stderr)
  t.same(migrated.json.targets.map((target: { target: string, status: string }) => [target.target, target.status]), [
    ['shared:default', 'success'], ['schema:default.fleet_ok1', 'success'], ['schema:default.fleet_bad', 'success'], ['schema:default.fleet_ok2', 'success'],
  ])
  const healthy = await cliJson(['doctor'], { cwd })
  t.equal(healthy.code, 0, JSON.stringify(healthy.json))
  t.same(healthy.json, { ok: true, findings: [] })
})

t.test('doctor names each broken set-up and exits 1', async (t) => {
  const cases: Array<[string, NodeJS.ProcessEnv, string, RegExp]> = [
    ['pending migrations', stage2, 'migrations-pending', /schema:default\.fleet_bad .*002_course/],
    ['a missing schema', { CLI_CASE: 'schema' }, 'schema-missing', /fleet_ghost/],
    ['a missing role', { CLI_CASE: 'role' }, 'role-missing', /fleet_no_such_role/],
    ['an unreachable database', { CLI_CASE: 'unreachable' }, 'datasource-unreachable', /"far"/],
    ['a superuser login with rls', { CLI_CASE: 'rls' }, 'login-bypasses-rls', /superuser/],
    ['tables without row-level security while rls is on', { CLI_CASE: 'rls' }, 'rls-not-enabled', /fleet_ok1\.student/],
    ['pools above max_connections', { CLI_CASE: 'connections' }, 'connections-over-limit', /max_connections of \d+/],
  ]
  // Read-only runs: side by side.
  const runs = await Promise.all(cases.map(async ([, env]) => await cliJson(['doctor', '--json'], { cwd, env })))
  cases.forEach(([what, , code, message], index) => {
    const run = runs[index]!
    t.equal(run.code, 1, `${what}: exit 1`)
    t.equal(run.json.ok, false)
    const finding = run.json.findings.find((f: { code: string, message: string }) => f.code === code && message.test(f.message))
    t.ok(finding, `${what}: ${code}, naming the problem`)
    t.type(finding?.fix, 'string', `${what}: says what to do`)
  })

  await query(url, 'create table fleet_ok1.extra (id integer, iid integer not null, code text)')
  t.teardown(() => query(url, 'drop table if exists fleet_ok1.extra'))
  const unindexed = await cliJson(['doctor'], { cwd })
  t.equal(unindexed.code, 1)
  t.match(unindexed.json.findings, [{ code: 'tenant-column-not-indexed', target: 'table:default:fleet_ok1.extra' }])

  await query(url, 'create index on fleet_ok1.extra (iid); create unique index extra_code on fleet_ok1.extra (code)')
  const unique = await cliJson(['doctor'], { cwd })
  t.equal(unique.code, 1)
  t.match(unique.json.findings, [{ code: 'unique-without-tenant-column', target: 'table:default:fleet_ok1.extra', message: /"extra_code"/ }])
  await query(url, 'drop table fleet_ok1.extra')
})

t.test('migrate a fleet with one failing schema: exit 1, the others migrated', async (t) => {
  const run = await cliJson(['migrate', '--concurrency', '2'], { cwd, env: stage2 })
  t.equal(run.code, 1)
  t.equal(run.json.ok, false)
  const byTarget = Object.fromEntries(run.json.targets.map((target: { target: string }) => [target.target, target]))
  t.match(byTarget['schema:default.fleet_bad'], { status: 'error', failedMigration: '002_course', error: /broken on purpose in fleet_bad/ })
  for (const key of ['shared:default', 'schema:default.fleet_ok1', 'schema:default.fleet_ok2']) {
    t.match(byTarget[key], { status: 'success', applied: [{ migration: '002_course', direction: 'Up' }] }, key)
  }
  const courses = await query(url, "select table_schema from information_schema.tables where table_name = 'course' order by 1")
  t.same(courses.map((row) => row.table_schema), ['fleet_ok1', 'fleet_ok2', 'public'], 'the table landed in every target but the failing one')
  t.same((await query(url, 'select name from fleet_bad.kysely_migration order by name')).map((row) => row.name), ['001_student'], 'fleet_bad stays at its last good migration')

  const status = await cliJson(['migrate', 'status'], { cwd, env: stage2 })
  t.equal(status.code, 0)
  t.same(status.json.targets.map((target: { target: string, pending: string[] }) => [target.target, target.pending]), [
    ['shared:default', []], ['schema:default.fleet_ok1', []], ['schema:default.fleet_bad', ['002_course']], ['schema:default.fleet_ok2', []],
  ])
})

t.test('migrate in a pseudo-terminal draws a progress bar, then a table', async (t) => {
  await buildCli()
  const command = [process.execPath, cliBin, 'migrate'].map((word) => `'${word}'`).join(' ')
  let output = ''
  let code = 0
  try {
    output = (await promisify(execFile)('script', ['-q', '-e', '-c', command, '/dev/null'], { cwd, env: { ...process.env, ...stage2, NO_COLOR: '1' } })).stdout
  } catch (err) {
    output = (err as { stdout: string }).stdout
    code = (err as { code: number }).code
  }
  t.equal(code, 1, 'fleet_bad still fails')
  t.match(output, /4\/4 targets \| 1 failed \| slowest: /, 'the bar: done/total, failures so far, the slowest target')
  t.match(output, /TARGET\s+INSTANCES\s+STATUS/, 'the table at the end')
  t.match(output, /schema:default\.fleet_bad\s+bad\s+error\s+0\s+002_course: broken on purpose/)
  t.notMatch(output, /^\s*\{/m, 'no JSON on a terminal')
})

t.test('run writes one row in each instance, each in its own', async (t) => {
  await writeFile(path.join(dir, 'write-row.mjs'), `export default async ({ instance, db }) => {
  await db.insertInto('student').values({ name: 'row of ' + instance.name }).execute()
  return { id: instance.id }
}
`)
  const run = await cliJson(['run', 'write-row.mjs', '--concurrency', '2'], { cwd })
  t.equal(run.code, 0, run.stderr)
  t.same(run.json.results.map((result: { instance: string, status: string, result: unknown }) => [result.instance, result.status, result.result]), [
    ['', 'success', { id: 1 }], ['ok1', 'success', { id: 2 }], ['bad', 'success', { id: 3 }], ['ok2', 'success', { id: 4 }],
  ])
  t.same(await query(url, 'select iid, name from public.student'), [{ iid: 1, name: 'row of ' }])
  for (const [schema, iid, name] of [['fleet_ok1', 2, 'ok1'], ['fleet_bad', 3, 'bad'], ['fleet_ok2', 4, 'ok2']] as const) {
    t.same(await query(url, `select iid, name from ${schema}.student`), [{ iid, name: `row of ${name}` }], `${schema} holds its own row only`)
  }

  await writeFile(path.join(dir, 'fail-one.mjs'), `export default async ({ instance }) => { if (instance.name === 'ok1') throw new Error('no luck in ' + instance.name) }
`)
  const failing = await cliJson(['run', 'fail-one.mjs', '--only', 'ok1,ok2'], { cwd })
  t.equal(failing.code, 1, 'one instance failed')
  t.match(failing.json.results, [{ instance: 'ok1', status: 'error', error: 'no luck in ok1' }, { instance: 'ok2', status: 'success' }], 'the rest still ran')
  const unknown = await cli(['run', 'fail-one.mjs', '--only', 'nope'], { cwd })
  t.equal(unknown.code, 1)
  t.match(unknown.stderr, /^TENANCY_UNKNOWN_INSTANCE: .*"nope"/)
})

t.test('migrate down reverts the last migration of the targets named', async (t) => {
  const down = await cliJson(['migrate', 'down', '--only', 'ok2'], { cwd, env: stage2 })
  t.equal(down.code, 0, down.stderr)
  t.match(down.json.targets, [{ target: 'schema:default.fleet_ok2', status: 'success', applied: [{ migration: '002_course', direction: 'Down' }] }])
  t.same(await query(url, "select 1 from information_schema.tables where table_schema = 'fleet_ok2' and table_name = 'course'"), [], 'its table is gone')
  t.same((await query(url, "select 1 from information_schema.tables where table_schema = 'fleet_ok1' and table_name = 'course'")).length, 1, 'the others keep theirs')
})

t.test('Ctrl-C: no new instance starts, the running one finishes, exit 130 with what was not reached', async (t) => {
  await buildCli()
  await writeFile(path.join(dir, 'slow.mjs'), `export default async ({ instance }) => {
  process.stderr.write('started ' + instance.name + '\\n')
  await new Promise((resolve) => setTimeout(resolve, 1500))
  return instance.id
}
`)
  const child = spawn(process.execPath, [cliBin, 'run', 'slow.mjs', '--json'], { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { if (chunk.includes('started')) child.kill('SIGINT') })
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  t.equal(code, 130)
  const json = JSON.parse(stdout)
  t.match(json, { ok: false, interrupted: true, results: [{ instance: '', status: 'success', result: 1 }], notReached: ['ok1', 'bad', 'ok2'] })
})

t.test('Ctrl-C during migrate: the running target finishes its migration, no other starts, exit 130', async (t) => {
  await buildCli()
  const child = spawn(process.execPath, [cliBin, 'migrate', '--concurrency', '1', '--json'], { cwd, env: { ...process.env, CLI_STAGE: '3' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let signalled = false
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    if (!signalled && chunk.includes('started 003')) { signalled = true; child.kill('SIGINT') }
  })
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  t.equal(code, 130)
  const json = JSON.parse(stdout)
  t.match(json, { ok: false, interrupted: true })
  const first = json.targets[0]
  t.match(first, { status: 'success', applied: [{ migration: '003_slow', direction: 'Up' }] }, 'the running target finished its migration')
  t.ok(json.notReached.length >= 1, `targets not reached: ${JSON.stringify(json.notReached)}`)
  const marked = await query<{ s: string }>(url, "select table_schema as s from information_schema.tables where table_name = 'slow_mark' order by 1")
  t.equal(marked.length, 1, `only the running target got the migration (${marked.map((m) => m.s).join(', ')})`)
})
