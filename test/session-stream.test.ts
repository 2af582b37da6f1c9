// A statement that changes the session, sent through Kysely's stream() (the
// cursor path of the routed client), is seen like one sent through execute():
// the connection is destroyed, and the next checkout of the same pool does not
// inherit its search_path. Only the execute() path was tested for this.
import t from 'tap'
import { Kysely, PostgresDialect, sql } from 'kysely'
import { createTenancy, RoutingPool } from '../lib/index.js'
import { WholeCursor } from './helpers/whole-cursor.js'
import { createDatabase, query } from './helpers/database.js'

interface DB { note: { id: number, body: string } }

const url = await createDatabase(t, 'session_stream')
await query(url, `
  create table public.note (id int primary key, body text not null);
  create schema tenant_c; create table tenant_c.note (id int primary key, body text not null);
  insert into public.note values (1, 'public note'); insert into tenant_c.note values (1, 'c note');
`)
const ten = await createTenancy({ instances: [{ name: '', id: 1 }, { name: 'c', id: 2, schema: 'tenant_c' }], datasources: { default: url }, pool: { max: 1 } })
t.teardown(() => ten.close())

// Not destroyed: it would close the tenancy's pools.
const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(ten.pools, { context: () => ten.context() }), cursor: WholeCursor }) })

async function pid (): Promise<number> {
  return (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db)).rows[0]!.pid
}

t.test('set_config through stream(): the next checkout gets its own schema on another connection', async (t) => {
  const before = await ten.runAsInstance('c', pid)
  const streamed = await ten.runAsInstance('c', async () => {
    const rows = []
    for await (const row of db.selectNoFrom(sql<string>`set_config('search_path', 'public', false)`.as('path')).stream()) rows.push(row)
    return rows
  })
  t.same(streamed, [{ path: 'public' }], 'the statement ran')
  const after = await ten.runAsInstance('c', async () => ({ pid: await pid(), rows: await db.selectFrom('note').select('body').execute() }))
  t.same(after.rows, [{ body: 'c note' }], 'c reads its own note, not public\'s')
  t.not(after.pid, before, 'on a new connection: the changed one was destroyed')
  const shared = await ten.runAsInstance('', async () => await db.selectFrom('note').select('body').execute())
  t.same(shared, [{ body: 'public note' }], 'the default instance is on the default path')
})
