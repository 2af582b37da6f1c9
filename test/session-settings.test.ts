// Extra session settings of the routing pool when several change at once: one
// round trip sets them all for the instance that wants them and clears them all
// for the next checkout of the same connection. The settings tests elsewhere
// change one key at a time, so the way several are joined went untested.
import t from 'tap'
import { Kysely, PostgresDialect, sql } from 'kysely'
import { createTenancy, RoutingPool } from '../lib/index.js'
import { createDatabase } from './helpers/database.js'

const url = await createDatabase(t, 'session_settings')
const ten = await createTenancy({ instances: [{ name: '', id: 1 }, { name: 'a', id: 2 }, { name: 'b', id: 3 }], datasources: { default: url }, pool: { max: 1 } })
t.teardown(() => ten.close())

const pool = new RoutingPool(ten.pools, {
  context: () => ten.context(),
  settings: (context): Record<string, string> => context?.instance?.name === 'a'
    ? { 'tenancy.iid': '2', 'tenancy.plan': 'gold', 'tenancy.region': 'eu' }
    : context?.instance?.name === 'b' ? { 'tenancy.iid': '3' } : {},
})
// Not destroyed: it would close the tenancy's pools.
const db = new Kysely<Record<string, never>>({ dialect: new PostgresDialect({ pool }) })

interface Seen { pid: number, iid: string | null, plan: string | null, region: string | null }
async function seen (): Promise<Seen> {
  const { rows } = await sql<Seen>`select pg_backend_pid() as pid, current_setting('tenancy.iid', true) as iid, current_setting('tenancy.plan', true) as plan, current_setting('tenancy.region', true) as region`.execute(db)
  return rows[0]!
}

t.test('three settings set in one checkout, then cleared or replaced on the same connection', async (t) => {
  const a = await ten.runAsInstance('a', seen)
  t.same({ ...a, pid: undefined }, { pid: undefined, iid: '2', plan: 'gold', region: 'eu' }, 'a gets all three')
  const b = await ten.runAsInstance('b', seen)
  t.equal(b.pid, a.pid, 'the same connection (the pool has one)')
  t.same({ ...b, pid: undefined }, { pid: undefined, iid: '3', plan: '', region: '' }, 'b: its own iid, and the two it does not want cleared')
  const shared = await ten.runAsInstance('', seen)
  t.equal(shared.pid, a.pid)
  t.same({ ...shared, pid: undefined }, { pid: undefined, iid: '', plan: '', region: '' }, 'the default instance: every setting cleared')
  const again = await ten.runAsInstance('a', seen)
  t.same({ ...again, pid: undefined }, { pid: undefined, iid: '2', plan: 'gold', region: 'eu' }, 'a again: all three back')
  const host = await ten.runAsHost(seen)
  t.same({ ...host, pid: undefined }, { pid: undefined, iid: '', plan: '', region: '' }, 'host context: none')
})

t.test('settings that are no strings or no setting names are refused at checkout, in both pool modes, and the connection goes back', async (t) => {
  const wrong: Array<[Record<string, unknown>, RegExp]> = [
    [{ 'tenancy.plan': 5 }, /the session setting "tenancy\.plan" must be a string, not number/],
    [{ 'no such name!': 'x' }, /"no such name!" is not a valid session setting name/],
  ]
  for (const transactionPooling of [false, true]) {
    for (const [settings, message] of wrong) {
      const bad = new RoutingPool(ten.pools, { context: () => ten.context(), transactionPooling, settings: (context) => (context?.instance?.name === 'b' ? settings : {}) as Record<string, string> })
      const badDb = new Kysely<Record<string, never>>({ dialect: new PostgresDialect({ pool: bad }) })
      await t.rejects(ten.runAsInstance('b', () => sql`select 1`.execute(badDb)), { code: 'TENANCY_INVALID_OPTIONS', message }, `${message.source} (transactionPooling ${transactionPooling})`)
      // The pool has one connection: the next checkout gets it.
      t.same((await ten.runAsInstance('a', () => sql<{ n: number }>`select 1 as n`.execute(badDb))).rows, [{ n: 1 }], 'the connection was given back')
    }
  }
})
