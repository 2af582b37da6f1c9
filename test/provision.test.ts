import t from 'tap'
import { createHash, createHmac, pbkdf2Sync } from 'node:crypto'
import { query } from './helpers/database.js'
import { eventually } from './fixtures/store-helpers.js'
import { hash, hit, leftovers, provisionSetup, rowsAt } from './fixtures/store-provision.js'

// Each mode provisioned end to end: created through one tenancy, served over
// HTTP by another (standing for another process), then removed with drop,
// checked in the catalogs.
const setup = await provisionSetup(t, 'provision')
const { a, b, app, url, prefix, received } = setup
const WITHIN = 1000

/** The StoredKey PostgreSQL's verifier says `password` must give: proves the verifier in the catalog is the password's. */
function scramMatches (verifier: string, password: string): boolean {
  const match = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$/.exec(verifier)
  if (match === null) return false
  const salted = pbkdf2Sync(password, Buffer.from(match[2]!, 'base64'), Number(match[1]), 32, 'sha256')
  const storedKey = createHash('sha256').update(createHmac('sha256', salted).update('Client Key').digest()).digest('base64')
  return storedKey === match[3]
}

t.test('shared: nothing physical, migrations, onProvision as the instance, served elsewhere with its rows only', async (t) => {
  const { instance, password } = await a.createInstance({ name: 'share2', title: 'Share 2' })
  t.match(instance, { name: 'share2', mode: 'shared', datasource: 'default', schema: null, state: 'ready' })
  t.equal(received.get('share2'), password, 'onProvision got the generated password, which createInstance returned')
  t.same((await rowsAt(setup, instance, 'app_user')).map((r) => [r.iid, r.login, r.password_hash]), [[instance.id, 'admin', hash(password)]], 'onProvision ran confined to the instance')
  await query(url, 'insert into public.student (iid, name) values ($1, \'s2 a\'), (2, \'share b\'), ($1, \'s2 c\')', [instance.id])
  t.ok(await eventually(() => b.instances.byName('share2')?.state === 'ready', WITHIN))
  t.same(await hit(app, 'share2'), { status: 200, code: undefined, body: [{ iid: instance.id, name: 's2 a' }, { iid: instance.id, name: 's2 c' }] })
  t.same(await hit(app, 'shareTest'), { status: 200, code: undefined, body: [{ iid: 2, name: 'share b' }] })
})

t.test('schema with a role: schema, role, grants, migrations in the schema, served as the role', async (t) => {
  const given = 'correct horse battery staple'
  const { instance, password, rolePassword } = await a.createInstance({ name: 'Acme', mode: 'schema', title: 'Acme', role: true, password: given })
  const schema = `${prefix}acme`
  t.match(instance, { name: 'Acme', mode: 'schema', schema, role: schema, datasource: 'default', state: 'ready' })
  t.equal(password, given, 'the given password is returned as given')
  t.equal(received.get('Acme'), given, 'and handed to onProvision')
  t.match(rolePassword, /^[A-Za-z0-9_-]{32}$/)

  const [role] = await query(url, 'select rolcanlogin, rolpassword, shobj_description(oid, \'pg_authid\') as marker from pg_authid where rolname = $1', [schema])
  t.equal(role.rolcanlogin, true)
  t.ok(scramMatches(role.rolpassword, rolePassword!), 'the role\'s verifier is the generated password\'s')
  t.match(role.marker, `instance ${instance.id} of `, 'the role is marked as the instance\'s')
  t.same(await query(url, 'select obj_description(oid, \'pg_namespace\') as marker from pg_namespace where nspname = $1', [schema]), [{ marker: role.marker }], 'so is the schema')
  const privileges = await query(url, `select has_table_privilege($1, '${schema}.student', 'select, insert, update, delete') as own,
    has_sequence_privilege($1, '${schema}.student_id_seq', 'usage') as seq, has_table_privilege($1, 'public.student', 'select') as shared,
    pg_has_role(current_user, $1, 'member') as member`, [schema])
  t.same(privileges, [{ own: true, seq: true, shared: false, member: true }], 'grants on its own schema only; the login is a member')
  t.same(await query(url, `select name from ${schema}.kysely_migration order by name`), [{ name: '001_tables' }, { name: '002_check' }], 'migrated in its schema, with its own migration table')
  t.same((await rowsAt(setup, instance, 'app_user')).map((r) => [r.iid, r.login, r.password_hash]), [[instance.id, 'admin', hash(given)]])

  // Overlapping primary keys in the shared table and the schema: only the schema's rows come back.
  await query(url, `insert into ${schema}.student (id, iid, name) values (1, ${instance.id}, 'acme 1'), (2, ${instance.id}, 'acme 2');
    insert into public.student (id, iid, name) values (1, 2, 'share one') on conflict do nothing`)
  t.ok(await eventually(() => b.instances.byName('Acme')?.state === 'ready' && b.instances.byName('Acme'), WITHIN))
  t.same(await hit(app, 'Acme'), { status: 200, code: undefined, body: [{ iid: instance.id, name: 'acme 1' }, { iid: instance.id, name: 'acme 2' }] })
  t.same((await hit(app, 'Acme', '/whoami')).body, { user: schema, schema, database: new URL(url).pathname.slice(1) }, 'requests run as its role, in its schema')
  // The pool hands the connection that request used, still SET ROLE to the instance's role, to the next caller.
  t.match(await b.updateInstance('Acme', { title: 'Acme Two' }), { title: 'Acme Two' }, 'a store write on that pool runs as the login, not as the role')
  t.same((await hit(app, 'Acme', '/whoami')).body, { user: schema, schema, database: new URL(url).pathname.slice(1) }, 'and leaves the session as the request left it')
  t.notOk((await query(url, 'select string_agg(t::text, \' \') as row from tenancy_instance t'))[0].row.includes(given), 'the password is not in the store')
})

t.test('isolated: a database on the server, its datasource in every process, served with its rows only', async (t) => {
  const events: string[] = []
  const listener = (instance: { name: string }): void => { events.push(instance.name) }
  b.on('instanceCreated', listener)
  t.teardown(() => { b.off('instanceCreated', listener) })
  const { instance } = await a.createInstance({ name: 'iso', mode: 'isolated', title: 'Iso' })
  const database = `${prefix}iso`
  t.match(instance, { name: 'iso', mode: 'isolated', datasource: `main/${database}`, state: 'ready' })
  const [made] = await query(url, 'select shobj_description(oid, \'pg_database\') as marker from pg_database where datname = $1', [database])
  t.match(made?.marker, `instance ${instance.id} of `, 'the database exists, marked as the instance\'s')
  t.same((await rowsAt(setup, instance, 'app_user')).map((r) => [r.iid, r.login]), [[instance.id, 'admin']], 'migrated, and onProvision ran in it')
  const isoUrl = new URL(url)
  isoUrl.pathname = '/' + database
  await query(isoUrl.toString(), `insert into student (id, iid, name) values (1, ${instance.id}, 'iso 1')`)
  await query(url, 'insert into public.student (id, iid, name) values (1, 2, \'share one\') on conflict do nothing')

  t.ok(await eventually(() => b.instances.byName('iso')?.state === 'ready' && b.instances.byName('iso'), WITHIN), 'the other tenancy holds it')
  t.same(await hit(app, 'iso'), { status: 200, code: undefined, body: [{ iid: instance.id, name: 'iso 1' }] }, 'served from its own database by the other tenancy')
  t.match((await hit(app, 'iso', '/whoami')).body, { database, schema: 'public' }, 'in its database')
  t.ok(b.pools.status().some((pool) => pool.datasource === `main/${database}`), 'through a pool added at run time')
  t.same(events, ['iso'])
})

t.test('removal with drop leaves no row, schema, role or database; its pool is closed everywhere', async (t) => {
  const share = a.instances.byName('share2')!
  const acme = a.instances.byName('Acme')!
  const iso = a.instances.byName('iso')!
  const removed: string[] = []
  b.on('instanceRemoved', (instance) => { removed.push(instance.name) })
  for (const name of ['share2', 'Acme', 'iso']) await a.removeInstance(name, { drop: true })
  t.same(await query(url, 'select count(*)::int as n from public.student where iid = $1', [share.id]), [{ n: 0 }], 'the shared instance\'s rows are gone')
  t.same(await query(url, 'select count(*)::int as n from public.app_user where iid = $1', [share.id]), [{ n: 0 }])
  t.ok(Number((await query(url, 'select count(*)::int as n from public.student where iid = 2'))[0].n) > 0, 'the other instances\' rows stay')
  t.same(await leftovers(setup), { schemas: [], roles: [], databases: [] }, 'no schema, role or database of theirs is left')
  t.same(await query(url, 'select name from tenancy_instance where id = any($1) order by id', [[share.id, acme.id, iso.id]]), [], 'their records are deleted')
  t.same(await eventually(() => removed.length === 3 && removed, WITHIN), ['share2', 'Acme', 'iso'], 'the other tenancy saw each removal')
  t.notOk(a.pools.status().some((pool) => pool.datasource === iso.datasource), 'the isolated pool is closed here')
  t.notOk(b.pools.status().some((pool) => pool.datasource === iso.datasource), 'and there')
  t.match(await hit(app, 'iso'), { status: 404, code: 'TENANCY_UNKNOWN_INSTANCE' })
  const next = await a.createInstance({ name: 'after-drop' })
  t.ok(next.instance.id > iso.id, 'ids are not reused')
})
