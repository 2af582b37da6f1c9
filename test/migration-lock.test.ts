// The per-target migration lock on its own, without the fleet migrator (which
// holds it around a whole target and so skips Kysely's per-step requests):
// a lock not held is taken and given back on the server, two targets of one
// database lock apart, and a held lock sends nothing.
import t from 'tap'
import pg from 'pg'
import { Kysely } from 'kysely'
import { MIGRATION_LOCK_NAMESPACE, TargetAdapter } from '../lib/lifecycle/migration-lock.js'
import { TargetDialect } from '../lib/lifecycle/target-dialect.js'
import { createDatabase, query } from './helpers/database.js'

const url = await createDatabase(t, 'migration_lock')
await query(url, 'create schema lock_a; create schema lock_b')

async function targetDb (schema: string, held: boolean): Promise<{ db: Kysely<any>, pid: number, end: () => Promise<void> }> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  const bind = `set search_path to "${schema}"`
  await client.query(bind)
  const pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid
  const db = new Kysely<any>({ dialect: new TargetDialect(client, { schema, internal: ['kysely_migration', 'kysely_migration_lock'], bind, lock: { held } }) })
  return { db, pid, end: async () => { await db.destroy(); await client.end() } }
}

async function locksOf (pid: number): Promise<number> {
  const rows = await query<{ n: number }>(url, "select count(*)::int as n from pg_locks where locktype = 'advisory' and classid = $1 and pid = $2 and granted", [MIGRATION_LOCK_NAMESPACE, pid])
  return rows[0]!.n
}

const options = (schema: string) => ({ lockTable: 'kysely_migration_lock', lockRowId: 'migration_lock', lockTableSchema: schema })

t.test('a lock not held is taken on the server and given back; another target of the same database is not blocked', async (t) => {
  const a = await targetDb('lock_a', false)
  const b = await targetDb('lock_b', false)
  t.teardown(async () => { await a.end(); await b.end() })
  await new TargetAdapter().acquireMigrationLock(a.db, options('lock_a'))
  t.equal(await locksOf(a.pid), 1, 'lock_a\'s lock is held by its session')
  await new TargetAdapter().acquireMigrationLock(b.db, options('lock_b'))
  t.equal(await locksOf(b.pid), 1, 'lock_b took its own lock meanwhile, without waiting for lock_a')
  await new TargetAdapter().releaseMigrationLock(a.db, options('lock_a'))
  await new TargetAdapter().releaseMigrationLock(b.db, options('lock_b'))
  t.equal(await locksOf(a.pid) + await locksOf(b.pid), 0, 'both given back')
})

t.test('a lock marked held sends nothing', async (t) => {
  const a = await targetDb('lock_a', true)
  t.teardown(() => a.end())
  const adapter = new TargetAdapter({ held: true })
  await adapter.acquireMigrationLock(a.db, options('lock_a'))
  t.equal(await locksOf(a.pid), 0, 'no lock taken: the caller holds it')
  await adapter.releaseMigrationLock(a.db, options('lock_a'))
})
