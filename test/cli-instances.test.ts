// The bin's instance commands, its config loading and its exit codes, run as a
// child process against a database store on the test server.
import t from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { adminQuery, createDatabase, query, serverUrl } from './helpers/database.js'
import { cli, cliJson, libEntry } from './helpers/cli.js'

const url = await createDatabase(t, 'cli_instances')
const prefix = `cli${randomBytes(3).toString('hex')}_`
const dir = await mkdtemp(path.join(os.tmpdir(), 'fastify-tenancy-cli-'))
t.teardown(async () => {
  await rm(dir, { recursive: true, force: true })
  // Whatever a failing assertion left behind.
  for (const { datname } of (await adminQuery(`select datname from pg_database where datname like '${prefix}%'`)).rows) await adminQuery(`drop database if exists "${datname}" with (force)`)
  for (const { rolname } of (await adminQuery(`select rolname from pg_roles where rolname like '${prefix}%'`)).rows) {
    await adminQuery(`drop owned by "${rolname}"`, url).catch(() => {})
    await adminQuery(`drop role if exists "${rolname}"`)
  }
})

await writeFile(path.join(dir, 'tenancy.config.mjs'), `import { databaseStore } from ${JSON.stringify(libEntry)}
export default async () => ({
  instances: databaseStore({ prefix: ${JSON.stringify(prefix)}, seed: [{ name: '', id: 1, title: 'Default' }] }),
  datasources: { default: ${JSON.stringify(url)} },
  servers: { main: ${JSON.stringify(serverUrl())} },
})
`)
const cwd = dir

t.test('instances create in each mode, then list --json', async (t) => {
  const shared = await cliJson(['instances', 'create', 'acme', '--title', 'Acme', '--config-json', '{"plan":"free"}', '--json'], { cwd })
  t.equal(shared.code, 0, shared.stderr)
  t.match(shared.json, { instance: { name: 'acme', mode: 'shared', title: 'Acme', config: { plan: 'free' }, state: 'ready' } })
  t.type(shared.json.password, 'string', 'the generated password is printed once')

  const schema = await cliJson(['instances', 'create', 'globex', '--mode', 'schema', '--role', '--json'], { cwd })
  t.equal(schema.code, 0, schema.stderr)
  t.match(schema.json, { instance: { name: 'globex', mode: 'schema', schema: `${prefix}globex`, role: `${prefix}globex` } })
  t.type(schema.json.rolePassword, 'string')
  t.same(await query(url, 'select nspname from pg_namespace where nspname = $1', [`${prefix}globex`]), [{ nspname: `${prefix}globex` }], 'the schema exists')
  t.equal((await adminQuery(`select 1 from pg_roles where rolname = '${prefix}globex'`)).rowCount, 1, 'and its role')

  const isolated = await cliJson(['instances', 'create', 'initech', '--mode', 'isolated', '--server', 'main', '--json'], { cwd })
  t.equal(isolated.code, 0, isolated.stderr)
  t.match(isolated.json, { instance: { name: 'initech', mode: 'isolated', datasource: `main/${prefix}initech` } })
  t.equal((await adminQuery(`select 1 from pg_database where datname = '${prefix}initech'`)).rowCount, 1, 'its database exists')

  const listed = await cliJson(['instances', 'list', '--json'], { cwd })
  t.equal(listed.code, 0)
  t.same(listed.json.instances.map((i: { name: string, mode: string, state: string, id: number }) => [i.name, i.mode, i.state]),
    [['', 'shared', 'ready'], ['acme', 'shared', 'ready'], ['globex', 'schema', 'ready'], ['initech', 'isolated', 'ready']])
  t.same(listed.json.instances.map((i: { id: number }) => i.id), [1, shared.json.instance.id, schema.json.instance.id, isolated.json.instance.id], 'with the ids createInstance gave')

  const piped = await cli(['instances', 'list'], { cwd })
  t.same(JSON.parse(piped.stdout), listed.json, 'stdout not a terminal: the same JSON without --json')

  const again = await cli(['instances', 'create', 'acme'], { cwd })
  t.equal(again.code, 1, 'a taken name fails')
  t.match(again.stderr, /^TENANCY_INSTANCE_EXISTS: /)
})

t.test('instances create --from hands the template to createInstance', async (t) => {
  // This config has no instance migrations, which a schema clone is made with: createInstance says so (test/instance-clone.test.ts clones for real).
  const copy = await cli(['instances', 'create', 'globex-copy', '--from', 'globex'], { cwd })
  t.equal(copy.code, 2, 'refused as an options error')
  t.match(copy.stderr, /TENANCY_INVALID_OPTIONS: .*cannot clone the template "globex"/)
  t.equal((await query(url, 'select 1 from pg_namespace where nspname = $1', [`${prefix}globex-copy`])).length, 0, 'nothing was created')
  const unknown = await cli(['instances', 'create', 'other-copy', '--from', 'no-such-template'], { cwd })
  t.equal(unknown.code, 1)
  t.match(unknown.stderr, /TENANCY_UNKNOWN_INSTANCE/)
})

t.test('show, update, disable, enable', async (t) => {
  const shown = await cliJson(['instances', 'show', 'acme'], { cwd })
  t.match(shown.json, { instance: { name: 'acme', disabled: false } })
  const updated = await cliJson(['instances', 'update', 'acme', '--title', 'Acme Inc', '--config-json', '{"plan":"pro"}'], { cwd })
  t.equal(updated.code, 0, updated.stderr)
  t.match(updated.json.instance, { title: 'Acme Inc', config: { plan: 'pro' } })
  t.match((await cliJson(['instances', 'disable', 'acme'], { cwd })).json.instance, { disabled: true })
  t.same(await query(url, 'select disabled from tenancy_instance where name = $1', ['acme']), [{ disabled: true }], 'stored')
  t.match((await cliJson(['instances', 'enable', 'acme'], { cwd })).json.instance, { disabled: false })

  const unknown = await cli(['instances', 'show', 'nope'], { cwd })
  t.equal(unknown.code, 1)
  t.equal(unknown.stderr, 'TENANCY_UNKNOWN_INSTANCE: There is no instance named or numbered "nope".\n', 'one line')
  t.equal(unknown.stdout, '')
  t.equal((await cli(['instances', 'disable', 'nope'], { cwd })).code, 1)
})

t.test('remove: without --drop the data stays; --drop needs --yes off a terminal', async (t) => {
  const kept = await cli(['instances', 'remove', 'acme'], { cwd })
  t.equal(kept.code, 0, kept.stderr)
  t.same(await query(url, 'select state from tenancy_instance where name = $1', ['acme']), [{ state: 'removed' }], 'marked removed, record kept')

  const refused = await cli(['instances', 'remove', 'globex', '--drop'], { cwd })
  t.equal(refused.code, 2, 'no --yes and no terminal: a usage error')
  t.match(refused.stderr, /confirm with --yes/)
  t.equal((await query(url, 'select 1 from pg_namespace where nspname = $1', [`${prefix}globex`])).length, 1, 'nothing was dropped')

  const dropped = await cliJson(['instances', 'remove', 'globex', '--drop', '--yes'], { cwd })
  t.equal(dropped.code, 0, dropped.stderr)
  t.match(dropped.json, { removed: { name: 'globex' }, dropped: true })
  t.equal((await query(url, 'select 1 from pg_namespace where nspname = $1', [`${prefix}globex`])).length, 0, 'the schema is gone')
  t.equal((await adminQuery(`select 1 from pg_roles where rolname = '${prefix}globex'`)).rowCount, 0, 'and its role')

  t.equal((await cli(['instances', 'remove', 'initech', '--drop', '--yes'], { cwd })).code, 0)
  t.equal((await adminQuery(`select 1 from pg_database where datname = '${prefix}initech'`)).rowCount, 0, 'the database is gone')
  t.same((await cliJson(['instances', 'list'], { cwd })).json.instances.map((i: { name: string }) => i.name), [''])
})

t.test('usage errors exit 2 with commander\'s message', async (t) => {
  for (const args of [['bogus'], ['instances', 'list', '--bogus'], ['instances', 'create'], ['migrate', '--concurrency', '0']]) {
    const result = await cli(args, { cwd })
    t.equal(result.code, 2, args.join(' '))
    t.not(result.stderr, '', 'says why')
  }
  const help = await cli(['--help'], { cwd })
  t.equal(help.code, 0)
  t.match(help.stdout, /instances[\s\S]*migrate[\s\S]*run[\s\S]*doctor/)
})

t.test('a missing or broken config is one sentence naming the file, exit 2', async (t) => {
  const empty = await mkdtemp(path.join(os.tmpdir(), 'fastify-tenancy-cli-empty-'))
  t.teardown(() => rm(empty, { recursive: true, force: true }))
  const none = await cli(['instances', 'list'], { cwd: empty })
  t.equal(none.code, 2)
  t.match(none.stderr, /^No config file: give --config <file>, or put one of tenancy\.config\.js, tenancy\.config\.ts, tenancy\.config\.mjs in /)

  const missing = await cli(['--config', 'nothere.mjs', 'instances', 'list'], { cwd: empty })
  t.equal(missing.code, 2)
  t.equal(missing.stderr, `The config file ${path.join(empty, 'nothere.mjs')} does not exist.\n`)

  const cases: Array<[string, string, RegExp]> = [
    ['syntax.mjs', 'export default {', /could not be loaded/],
    ['nodefault.mjs', 'export const x = 1', /must have a default export/],
    ['throws.mjs', 'export default () => { throw new Error("no secrets here") }', /default export threw: no secrets here/],
    ['invalid.mjs', 'export default { instances: [], datasources: {} }', /does not give a working tenancy: TENANCY_INVALID_OPTIONS: .*"default"/],
  ]
  for (const [name, text, message] of cases) {
    await writeFile(path.join(empty, name), text)
    const result = await cli(['--config', name, 'instances', 'list'], { cwd: empty })
    t.equal(result.code, 2, name)
    t.match(result.stderr, message, name)
    t.ok(result.stderr.includes(path.join(empty, name)), `${name}: names the file`)
    t.equal(result.stderr.trim().split('\n').length, 1, `${name}: one line, no stack`)
  }
  const verbose = await cli(['--config', 'invalid.mjs', '--verbose', 'instances', 'list'], { cwd: empty })
  t.match(verbose.stderr, /\n\s+at /, '--verbose shows the stack')
})

t.test('a tenancy.config.ts loads without a build step', async (t) => {
  const tsDir = await mkdtemp(path.join(os.tmpdir(), 'fastify-tenancy-cli-ts-'))
  t.teardown(() => rm(tsDir, { recursive: true, force: true }))
  await writeFile(path.join(tsDir, 'tenancy.config.ts'), `interface Options { instances: Array<{ name: string, id: number }>, datasources: Record<string, string> }
const options: Options = { instances: [{ name: '', id: 1 }, { name: 'typed', id: 2 }], datasources: { default: ${JSON.stringify(url)} } }
export default options
`)
  const result = await cliJson(['instances', 'list'], { cwd: tsDir })
  t.equal(result.code, 0, result.stderr)
  t.same(result.json.instances.map((i: { name: string }) => i.name), ['', 'typed'])
  const fixed = await cli(['instances', 'create', 'x'], { cwd: tsDir })
  t.equal(fixed.code, 2, 'a fixed list cannot create instances: the config is the problem')
  t.match(fixed.stderr, /TENANCY_INVALID_OPTIONS: .*databaseStore/)
})
