import t from 'tap'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { sql, type Kysely } from 'kysely'
import type { Migration, MigrationProvider } from 'kysely/migration'
import { createTenancy, databaseStore, rowLevelSecurityStatements, type Instance, type ProvisionContext } from '../lib/index.js'
import { adminQuery, createDatabase, query, serverUrl, withDatabase } from './helpers/database.js'

// createInstance({ from }): a schema template copied into a new schema, an
// isolated one copied by the server, the tenant column rewritten, and the
// templates that cannot be copied refused before anything is made.
const url = await createDatabase(t, 'clone')
const prefix = `c${randomBytes(3).toString('hex')}_`
t.teardown(async () => {
  const { rows } = await adminQuery(`select datname from pg_database where datname like '${prefix}%'`)
  for (const { datname } of rows) await adminQuery(`drop database if exists "${datname}" with (force)`)
})

// Tables with a foreign key, one on the tenant column too, serial and identity
// columns, and a trigger that changes every name it sees written.
let withThird = false
const records: Record<string, Migration> = {
  '001_tables': {
    async up (db: Kysely<any>) {
      await sql`create table course (id serial primary key, iid integer not null, title text not null);
        create table student (id serial primary key, iid integer not null, name text not null, course_id integer references course (id), unique (iid, id));
        create table enrolment (id serial primary key, iid integer not null, student_id integer not null, foreign key (iid, student_id) references student (iid, id));
        create table note (id integer generated always as identity primary key, iid integer not null, body text not null);
        create function mark() returns trigger language plpgsql as $$ begin new.name := new.name || '!'; return new; end $$;
        create trigger student_mark before insert or update on student for each row execute function mark()`.execute(db)
    },
  },
  '002_grade': {
    async up (db: Kysely<any>) {
      await db.schema.alterTable('student').addColumn('grade', 'integer', (c) => c.notNull().defaultTo(0)).execute()
    },
  },
}
const third: Migration = { async up (db: Kysely<any>) { await db.schema.alterTable('course').addColumn('room', 'text').execute() } }
const migrations: MigrationProvider = { getMigrations: async () => withThird ? { ...records, '003_room': third } : records }

const seen = new Map<string, number>()
const failOnce = new Set<string>()
const tenancy = await createTenancy({
  instances: databaseStore({ prefix, seed: [{ name: '', id: 1 }, { name: 'shareTest', id: 2 }] }),
  datasources: { default: url },
  servers: { main: serverUrl() },
  tables: { course: 'must', student: 'must', enrolment: 'must', note: 'must' },
  migrations: { instance: migrations },
  pool: { max: 4 },
  onProvision: async ({ instance, db }: ProvisionContext) => {
    const [row] = await db.selectFrom('student').select((eb) => eb.fn.countAll<string>().as('n')).execute()
    seen.set(instance.name, Number(row!.n))
    if (failOnce.delete(instance.name)) throw new Error(`onProvision refused ${instance.name}`)
  },
})
t.teardown(() => tenancy.close())
const db = tenancy.kysely<any>()

async function fill (name: string): Promise<void> {
  await tenancy.runAsInstance(name, async () => {
    const courses = await db.insertInto('course').values([{ title: 'maths' }, { title: 'art' }]).returning('id').execute()
    const students = await db.insertInto('student').values([
      { name: 'ann', course_id: courses[0]!.id }, { name: 'bob', course_id: courses[1]!.id }, { name: 'cy', course_id: null },
    ]).returning('id').execute()
    await db.insertInto('enrolment').values(students.slice(0, 2).map((s: { id: number }) => ({ student_id: s.id }))).execute()
    await db.insertInto('note').values([{ body: 'one' }, { body: 'two' }]).execute()
  })
}

/** Every table's rows at `place` (a URL and a schema), ordered, the tenant column included. */
async function contents (at: string, schema: string): Promise<Record<string, any[]>> {
  const out: Record<string, any[]> = {}
  for (const table of ['course', 'student', 'enrolment', 'note']) out[table] = await query(at, `select * from "${schema}".${table} order by id`)
  return out
}

function withIid (rows: Record<string, any[]>, iid: number): Record<string, any[]> {
  return Object.fromEntries(Object.entries(rows).map(([table, list]) => [table, list.map((row) => ({ ...row, iid }))]))
}

async function places (): Promise<{ schemas: string[], databases: string[] }> {
  const like = prefix.replace(/_/g, '\\_') + '%'
  return {
    schemas: (await query(url, 'select nspname from pg_namespace where nspname like $1 order by 1', [like])).map((r) => r.nspname),
    databases: (await query(url, 'select datname from pg_database where datname like $1 order by 1', [like])).map((r) => r.datname),
  }
}

const { instance: template } = await tenancy.createInstance({ name: 'tpl', mode: 'schema', title: 'Template' })
await fill('tpl')
// Sequence positions past the rows: a deleted row's id must not come back in the copy either.
await tenancy.runAsInstance('tpl', () => db.deleteFrom('note').where('body', '=', 'two').execute())
const templateRows = await contents(url, template.schema!)

t.test('a schema clone has the template\'s rows, ids and sequences, with its own id in the tenant column', async (t) => {
  const { instance } = await tenancy.createInstance({ name: 'copy', from: 'tpl', title: 'Copy' })
  t.match(instance, { name: 'copy', mode: 'schema', schema: `${prefix}copy`, datasource: 'default', state: 'ready', title: 'Copy' })
  t.not(instance.id, template.id)
  t.same(templateRows.student!.map((r) => r.name), ['ann!', 'bob!', 'cy!'], 'the template\'s trigger ran on its own inserts')
  t.same(await contents(url, instance.schema!), withIid(templateRows, instance.id), 'every row copied as it stands (the trigger off), iid rewritten')
  t.same(await contents(url, template.schema!), templateRows, 'the template is untouched')
  t.equal(seen.get('copy'), 3, 'onProvision ran after the copy and saw its rows')

  const added = await tenancy.runAsInstance('copy', async () => ({
    student: await db.insertInto('student').values({ name: 'dee' }).returning(['id', 'iid', 'name']).executeTakeFirstOrThrow(),
    note: await db.insertInto('note').values({ body: 'three' }).returning(['id', 'iid']).executeTakeFirstOrThrow(),
    visible: (await db.selectFrom('student').select('name').orderBy('id').execute()).map((r: { name: string }) => r.name),
  }))
  t.same(added.student, { id: 4, iid: instance.id, name: 'dee!' }, 'the serial goes on after the template\'s last id, and its trigger is on again')
  t.same(added.note, { id: 3, iid: instance.id }, 'the identity goes on where the template\'s stood (after the deleted row)')
  t.same(added.visible, ['ann!', 'bob!', 'cy!', 'dee!'], 'the tenant filter sees the copied rows as the new instance\'s')
  t.same(await query(url, 'select conname from pg_constraint where connamespace = $1::regnamespace and contype = \'f\' order by 1', [instance.schema]),
    [{ conname: 'enrolment_iid_student_id_fkey' }, { conname: 'student_course_id_fkey' }], 'with the foreign keys the migrations made')

  const [status] = await tenancy.migrationStatus({ only: ['copy'] })
  t.match(status, { executed: ['001_tables', '002_grade'], pending: [] }, 'its migration table says it is up to date')
  const report = await tenancy.migrate({ only: ['copy'] })
  t.equal(report.ok, true)
  t.equal(report.changed, false, 'a migrate run has nothing to do on it')
})

t.test('a template behind the migrations: copied at its version, then the rest runs on the copy only', async (t) => {
  withThird = true
  // A template kept disabled, so that it serves no request, is copied all the same.
  await tenancy.updateInstance('tpl', { disabled: true })
  t.teardown(async () => {
    withThird = false
    await tenancy.updateInstance('tpl', { disabled: false })
  })
  const { instance } = await tenancy.createInstance({ name: 'later', from: 'tpl' })
  t.equal(instance.disabled, false, 'the copy is not disabled')
  t.same((await tenancy.migrationStatus({ only: ['later', 'tpl'] })).map((s) => [s.instances, s.executed, s.pending]), [
    [['tpl'], ['001_tables', '002_grade'], ['003_room']],
    [['later'], ['001_tables', '002_grade', '003_room'], []],
  ])
  t.same((await query(url, `select title, room, iid from "${instance.schema}".course order by id`)), [
    { title: 'maths', room: null, iid: instance.id }, { title: 'art', room: null, iid: instance.id },
  ])
})

t.test('an isolated clone is a copy of the template\'s database, the tenant column rewritten', async (t) => {
  const { instance: iso } = await tenancy.createInstance({ name: 'isotpl', mode: 'isolated' })
  await fill('isotpl')
  const templateUrl = withDatabase(serverUrl(), `${prefix}isotpl`)
  const before = await contents(templateUrl, 'public')
  // A session of another process on the template: CREATE DATABASE … TEMPLATE cannot start while it is there.
  const other = new pg.Client({ connectionString: templateUrl })
  other.on('error', () => {})
  await other.connect()
  t.teardown(() => other.end().catch(() => {}))
  const { instance } = await tenancy.createInstance({ name: 'isocopy', from: 'isotpl' })
  await t.rejects(other.query('select 1'), { message: /terminat|not queryable|Connection/ }, 'the other session on the template was ended')
  t.match(instance, { name: 'isocopy', mode: 'isolated', datasource: `main/${prefix}isocopy`, state: 'ready' })
  const copyUrl = withDatabase(serverUrl(), `${prefix}isocopy`)
  t.same(await contents(copyUrl, 'public'), withIid(before, instance.id), 'every row, iid rewritten, names as they stood')
  t.same(await contents(templateUrl, 'public'), before, 'the template\'s database is untouched')
  t.same(await query(copyUrl, 'select conname from pg_constraint where contype = \'f\' and connamespace = \'public\'::regnamespace order by 1'),
    [{ conname: 'enrolment_iid_student_id_fkey' }, { conname: 'student_course_id_fkey' }], 'the foreign key on the tenant column is back')
  t.same(await query(copyUrl, 'select tgenabled from pg_trigger where tgname = \'student_mark\''), [{ tgenabled: 'O' }], 'so is the trigger')
  t.match((await query(copyUrl, 'select shobj_description(oid, \'pg_database\') as marker from pg_database where datname = current_database()'))[0],
    { marker: `fastify-tenancy: instance ${instance.id} of ` }, 'marked as the new instance\'s, so removal may drop it')
  t.equal(seen.get('isocopy'), 3, 'onProvision ran after the copy')

  const added = await tenancy.runAsInstance('isocopy', () => db.insertInto('student').values({ name: 'dee' }).returning(['id', 'iid']).executeTakeFirstOrThrow())
  t.same(added, { id: 4, iid: instance.id }, 'its sequence goes on from the template\'s')
  t.same(await tenancy.runAsInstance('isotpl', () => db.selectFrom('student').select('name').orderBy('id').execute()),
    [{ name: 'ann!' }, { name: 'bob!' }, { name: 'cy!' }], 'the template serves again after the copy')
  t.match((await tenancy.migrationStatus({ only: ['isocopy'] }))[0], { executed: ['001_tables', '002_grade'], pending: [] })
  t.equal((await tenancy.migrate({ only: ['isocopy'] })).changed, false)
  t.equal(iso.mode, 'isolated')
})

t.test('templates that cannot be copied are refused, and nothing is created', async (t) => {
  failOnce.add('broken')
  await t.rejects(tenancy.createInstance({ name: 'broken', mode: 'schema' }), { message: 'onProvision refused broken' })
  const before = await places()
  const count = async (): Promise<number> => Number((await query(url, 'select count(*)::int as n from tenancy_instance'))[0].n)
  const rows = await count()
  const cases: Array<[string, object, any]> = [
    ['unknown', { name: 'x1', from: 'nobody' }, { code: 'TENANCY_UNKNOWN_INSTANCE', statusCode: 404, message: /"nobody"/ }],
    ['a removed template', { name: 'x1', from: 'gone' }, { code: 'TENANCY_UNKNOWN_INSTANCE' }],
    ['shared', { name: 'x2', from: 'shareTest' }, { code: 'TENANCY_INVALID_OPTIONS', message: /"shareTest": it is a shared instance/ }],
    ['not ready', { name: 'x3', from: 'broken' }, { code: 'TENANCY_INSTANCE_NOT_READY', statusCode: 503, message: /"broken"/ }],
    ['mode mismatch', { name: 'x4', mode: 'isolated', from: 'tpl' }, { code: 'TENANCY_INVALID_OPTIONS', message: /"tpl": it is a schema instance and a clone has its template's mode, not "isolated"/ }],
    ['mode mismatch, isolated', { name: 'x5', mode: 'schema', from: 'isotpl' }, { code: 'TENANCY_INVALID_OPTIONS', message: /an isolated instance/ }],
    ['another server', { name: 'x6', from: 'isotpl', server: 'other' }, { code: 'TENANCY_INVALID_OPTIONS' }],
    ['not a name', { name: 'x7', from: 7 }, { code: 'TENANCY_INVALID_OPTIONS', message: /from must be the name/ }],
  ]
  await tenancy.createInstance({ name: 'gone', mode: 'schema' })
  await tenancy.removeInstance('gone')
  for (const [what, input, error] of cases) await t.rejects(tenancy.createInstance(input as never), error, what)
  t.equal(await count(), rows + 1, 'no record was made (but the removed one\'s, kept)')
  t.same(await places(), { ...before, schemas: [...before.schemas, `${prefix}gone`].sort() }, 'no schema or database was made')
  t.notOk(['x1', 'x2', 'x3', 'x4', 'x5', 'x6', 'x7'].some((name) => tenancy.instances.byName(name) !== undefined))
  await tenancy.removeInstance('gone', { drop: true })
  await tenancy.removeInstance('broken', { drop: true })
})

t.test('a clone that fails half-way is failed; a retry starts the copy over, and removal cleans up', async (t) => {
  // A table made by hand in the template is not one the migrations make: the copy step fails.
  await query(url, `create table "${template.schema}".scratch (id int)`)
  await t.rejects(tenancy.createInstance({ name: 'halfway', from: 'tpl' }), { message: /the template's table ".+\.scratch" is not one the instance migrations make/ })
  const failed = tenancy.instances.byName('halfway') as Instance
  t.match(failed, { state: 'failed', error: /scratch/ })
  t.same(await query(url, `select count(*)::int as n from "${prefix}halfway".student`), [{ n: 0 }], 'the copy\'s transaction left nothing behind')
  await query(url, `drop table "${template.schema}".scratch`)

  failOnce.add('halfway')
  await t.rejects(tenancy.createInstance({ name: 'halfway', from: 'tpl' }), { message: 'onProvision refused halfway' })
  t.same(await query(url, `select count(*)::int as n from "${prefix}halfway".student`), [{ n: 3 }], 'copied before onProvision failed')
  const { instance } = await tenancy.createInstance({ name: 'halfway', from: 'tpl' })
  t.equal(instance.id, failed.id, 'the retry resumed the same instance')
  t.equal(instance.state, 'ready')
  t.same(await contents(url, instance.schema!), withIid(templateRows, instance.id), 'copied once, not twice')
  await tenancy.removeInstance('halfway', { drop: true })
  t.notOk((await places()).schemas.includes(`${prefix}halfway`), 'removal dropped its schema')
})

t.test('a template under row-level security is copied whole by a login the policies bind', async (t) => {
  // The suite's login is a superuser, which policies never bind: this tenancy logs in as a plain role that owns its tables.
  const role = `${prefix}app`
  const database = new URL(url).pathname.slice(1)
  await query(url, `create role ${role} login password 'app'; grant create on database "${database}" to ${role}; grant create on schema public to ${role}`)
  const login = new URL(url)
  login.username = role
  login.password = 'app'
  const tables = { course: 'must', student: 'must', enrolment: 'must', note: 'must' } as const
  const plain = await createTenancy({
    instances: databaseStore({ table: 'rls_instance', prefix: `${prefix}r_` }),
    datasources: { default: login.toString() },
    tables,
    rls: true,
    migrations: { instance: migrations },
    pool: { max: 2 },
  })
  t.teardown(async () => {
    await plain.close()
    await query(url, `drop owned by ${role} cascade; drop role ${role}`)
  })
  const { instance: source } = await plain.createInstance({ name: 'guarded', mode: 'schema' })
  await query(login.toString(), `set search_path to "${source.schema}"; ${rowLevelSecurityStatements(tables).join('; ')}`)
  const pdb = plain.kysely<any>()
  await plain.runAsInstance('guarded', () => pdb.insertInto('student').values([{ name: 'eve' }, { name: 'fay' }]).execute())
  t.same(await query(login.toString(), `select count(*)::int as n from "${source.schema}".student`), [{ n: 0 }], 'the policies hide the rows from the login outside any instance')

  const { instance } = await plain.createInstance({ name: 'guarded-copy', from: 'guarded' })
  t.same(await query(url, `select iid, name from "${instance.schema}".student order by id`), [{ iid: instance.id, name: 'eve!' }, { iid: instance.id, name: 'fay!' }])
  t.same(await plain.runAsInstance('guarded-copy', () => pdb.selectFrom('student').select('name').orderBy('id').execute()), [{ name: 'eve!' }, { name: 'fay!' }])
})
