import t from 'tap'
import { sql } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { createDatabase, query, serverUrl } from './helpers/database.js'
import { delayingProxy } from './helpers/delaying-proxy.js'

// pg settles a failed query's promise on the server's ErrorResponse, and learns
// the transaction status from the ReadyForQuery after it. Both usually come in
// one packet; the proxy sends the second 200 ms later, as a loaded machine or
// PgBouncer may, so a connection is given back while pg still says 'I'.
const url = await createDatabase(t, 'failed_statement')
await query(url, `create schema tenant_left; create table tenant_left.note (v text); insert into tenant_left.note values ('left');
  create table public.note (v text); insert into public.note values ('public')`)
const proxy = await delayingProxy(serverUrl())
t.teardown(() => proxy.close())
const viaProxy = proxy.url(url)

t.test('a text that begins a transaction and fails is not pooled as idle before the server says so', async (t) => {
  const tenancy = await createTenancy({ instances: [{ name: '', id: 1 }, { name: 'a', id: 2 }, { name: 'b', id: 3 }], datasources: { default: viaProxy }, pool: { max: 1 } })
  t.teardown(() => tenancy.close())
  const db = tenancy.kysely()
  await t.rejects(tenancy.runAsInstance('a', () => sql`begin; select 1 / 0`.execute(db)), { code: '22012' }, 'the division fails, and its transaction stays open and failed on the server')
  // now() is the transaction's start: equal to the statement's only in a transaction of its own.
  const rows = await tenancy.runAsInstance('b', async () => (await sql<{ v: string, alone: boolean }>`select v, now() = statement_timestamp() as alone from note`.execute(db)).rows)
  t.same(rows, [{ v: 'public', alone: true }], 'the next checkout, of another instance, runs outside any transaction (not in the failed one)')
})

t.test('transaction pooling: a set-up that fails is rolled back before its connection goes back', async (t) => {
  const tenancy = await createTenancy({
    instances: [{ name: '', id: 1 }, { name: 'left', id: 2, schema: 'tenant_left' }, { name: 'ghost', id: 3, schema: 'tenant_left', role: 'failed_statement_no_such_role' }],
    datasources: { default: viaProxy },
    pool: { max: 1 },
    pgbouncer: 'transaction',
  })
  t.teardown(() => tenancy.close())
  const db = tenancy.kysely()
  const left = async (): Promise<unknown> => await tenancy.runAsInstance('left', async () => (await sql<{ v: string }>`select v from note`.execute(db)).rows)
  await t.rejects(tenancy.runAsInstance('ghost', () => sql`select v from note`.execute(db)), { code: 'TENANCY_SESSION_FAILED', message: /instance "ghost" could not be prepared/ }, 'the role does not exist')
  t.same(await left(), [{ v: 'left' }], 'the next instance runs in its schema, not in a failed transaction')
  await t.rejects(tenancy.runAsInstance('ghost', () => db.transaction().execute((trx) => sql`select v from note`.execute(trx))), { code: 'TENANCY_SESSION_FAILED', message: /instance "ghost" could not be prepared/ }, 'in a transaction too')
  t.same(await left(), [{ v: 'left' }], 'and after that too')
  t.equal(tenancy.pools.counts().leased, 0, 'nothing is left checked out')
})
