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

t.test('a stream() that changes nothing keeps its connection: the next checkout is on the same one', async (t) => {
  const before = await ten.runAsInstance('c', pid)
  const streamed = await ten.runAsInstance('c', async () => {
    const rows = []
    for await (const row of db.selectFrom('note').select('body').stream()) rows.push(row)
    return rows
  })
  t.same(streamed, [{ body: 'c note' }], 'c streams its own note')
  t.equal(await ten.runAsInstance('c', pid), before, 'the connection was pooled again (its text was read and found harmless)')
})

t.test('stream() under transaction pooling: refused when it changes the session, outside a transaction, or as another instance; in one, it sees the set-up', async (t) => {
  const local = new Kysely<DB>({
    dialect: new PostgresDialect({
      pool: new RoutingPool(ten.pools, { context: () => ten.context(), transactionPooling: true, settings: (context): Record<string, string> => context?.instance?.name === 'c' ? { 'tenancy.who': 'c' } : {} }),
      cursor: WholeCursor,
    }),
  })
  const rows = async (query: { stream: () => AsyncIterable<unknown> }): Promise<unknown[]> => {
    const out: unknown[] = []
    for await (const row of query.stream()) out.push(row)
    return out
  }
  await ten.runAsInstance('c', async () => {
    await t.rejects(rows(local.selectNoFrom(sql<string>`set_config('tenancy.who', 'x', false)`.as('v'))), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /may change the session/ })
    await t.rejects(rows(local.selectFrom('note').select('body')), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /stream inside db\.transaction\(\)/ })
    const inside = await local.transaction().execute(async (trx) => await rows(trx.selectFrom('note').select(['body', sql<string>`current_setting('tenancy.who')`.as('who')])))
    t.same(inside, [{ body: 'c note', who: 'c' }], 'inside a transaction: its set-up came with BEGIN')
    // COMMIT AND CHAIN starts a transaction without its set-up: the cursor's is sent before it, in order.
    const chained = await local.connection().execute(async (connection) => {
      await sql`begin`.execute(connection)
      await sql`commit and chain`.execute(connection)
      const read = await rows(connection.selectFrom('note').select(['body', sql<string>`current_setting('tenancy.who')`.as('who')]))
      await sql`commit`.execute(connection)
      return read
    })
    t.same(chained, [{ body: 'c note', who: 'c' }], 'a cursor first in a chained transaction sees the set-up')
    await t.rejects(local.transaction().execute(async (trx) => {
      await trx.selectFrom('note').select('id').execute()
      await ten.runAsInstance('', () => rows(trx.selectFrom('note').select('id')))
    }), { code: 'TENANCY_MISMATCH' }, 'a cursor on a transaction of c, opened as another instance')
  })
  t.same(await ten.runAsInstance('', () => db.selectFrom('note').select('body').execute()), [{ body: 'public note' }], 'the one connection was given back each time')
})
