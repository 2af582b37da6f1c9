import t from 'tap'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import path from 'node:path'
import { createTenancy, databaseStore } from '../lib/index.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'
import { eventually } from './fixtures/store-helpers.js'

// The store across real processes: this one and test/fixtures/store-child.ts,
// each with its own tenancy on the same table.
const WITHIN = 1000

t.test('a real second process sees changes and makes them', async (t) => {
  const url = await createDatabase(t, 'store_child')
  await query(url, 'create table student (id serial primary key, iid int not null, name text not null)')
  const a = await createTenancy({ instances: databaseStore({ seed: [{ name: '', id: 1 }] }), datasources: { default: url }, tables: { student: 'must' } })
  t.teardown(() => a.close())
  const child = spawn(process.execPath, [...process.execArgv, path.resolve(import.meta.dirname, 'fixtures', 'store-child.ts'), url, 'tenancy_instance'],
    { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null) child.kill() })
  const lines: Array<Record<string, unknown>> = []
  createInterface({ input: child.stdout }).on('line', (line) => { lines.push(JSON.parse(line)) })
  const line = async (match: (l: Record<string, unknown>) => boolean, deadline: number): Promise<Record<string, unknown> | undefined> =>
    await eventually(() => lines.find(match), deadline)

  // Its start-up compiles the library's TypeScript: slow on a busy machine, and no measure of anything.
  t.ok(await line((l) => l.ready === true, 120000), 'the child process is up')
  const { instance } = await a.createInstance({ name: 'parent-made', title: 'Parent' })
  t.match(await line((l) => l.event === 'instanceCreated' && l.name === 'parent-made', WITHIN), { title: 'Parent' }, 'the child saw the create within a second')
  await a.updateInstance(instance.id, { disabled: true })
  t.match(await line((l) => l.event === 'instanceUpdated' && l.name === 'parent-made', WITHIN), { disabled: true }, 'and the disabling')

  child.stdin.write(JSON.stringify({ op: 'create', name: 'child-made' }) + '\n')
  const made = await line((l) => l.created === 'child-made', 60000)
  t.ok(made, 'the child created an instance')
  t.equal(await eventually(() => a.instances.byName('child-made')?.state === 'ready' && a.instances.byName('child-made')?.id, WITHIN), made!.id, 'the parent holds it within a second')

  await a.removeInstance('parent-made', { drop: true })
  t.ok(await line((l) => l.event === 'instanceRemoved' && l.name === 'parent-made', WITHIN), 'the child saw the removal')
  child.stdin.end()
  const [code] = await new Promise<[number | null]>((resolve) => child.once('exit', (c) => { resolve([c]) }))
  t.equal(code, 0, 'the child closed its tenancy and exited')
  await a.close()
  // A backend leaves pg_stat_activity a moment after its client has gone.
  const left = async (): Promise<number> => (await adminQuery(`select count(*)::int as n from pg_stat_activity where datname = '${new URL(url).pathname.slice(1)}' and application_name like 'fastify-tenancy instance store%'`)).rows[0].n
  t.equal(await eventually(async () => (await left()) === 0 || undefined, 5000), true, 'no store connection of either process is left')
})
