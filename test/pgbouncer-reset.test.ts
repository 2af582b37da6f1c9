// Session pooling relies on PgBouncer's server_reset_query: the routing pool
// destroys a client connection whose session a statement changed, and only
// PgBouncer's reset undoes that change on the server connection it hands to
// the next client. With one server connection per database and login, the
// next client connection is sure to get the same server session.
import t from 'tap'
import { sql } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { startPgBouncer } from '../scripts/pgbouncer.js'
import { TABLES as tables, pgbouncerFixture } from './helpers/pgbouncer-fixture.js'
import { serverUrl } from './helpers/database.js'
import type { TenantDB } from './helpers/tenant-schema.js'

const fixture = await pgbouncerFixture(t, 'pgbouncer_reset')
const { shared, schemas } = fixture.instances

interface Session { pid: number, schema: string, workMem: string, first: string }

/**
 * Schema instance `left` runs a query, then changes its session (so its
 * connection is destroyed on release); shared instance `a`, whose session is
 * the server's defaults, then reads `student` with raw SQL on a new client
 * connection. Returns the server session each saw.
 */
async function handOver (serverResetQuery: string): Promise<{ left: Session, a: Session }> {
  const bouncer = await startPgBouncer({ databaseUrl: serverUrl(), poolMode: 'session', poolSize: 1, serverResetQuery })
  const tenancy = await createTenancy({ instances: [...shared, ...schemas], datasources: { default: bouncer.url(fixture.database) }, tables, pool: { max: 1 }, pgbouncer: 'session', doctor: false })
  try {
    const db = tenancy.kysely<TenantDB>()
    const session = async (): Promise<Session> => (await sql<Session>`select pg_backend_pid() as pid, current_schema() as schema, current_setting('work_mem') as "workMem", (select min(name) from student) as first`.execute(db)).rows[0]!
    const left = await tenancy.runAsInstance('left', async () => {
      const seen = await session()
      await sql`set work_mem = '7MB'`.execute(db)
      return seen
    })
    const a = await tenancy.runAsInstance('a', session)
    return { left, a }
  } finally {
    await tenancy.close()
    await bouncer.stop()
  }
}

t.test('session pooling with an empty server_reset_query: an instance\'s query meets the search_path another instance\'s session left (a documented limit)', async (t) => {
  const { left, a } = await handOver('')
  t.match(left, { schema: 'pgb_left', first: 'pgb_left 1 of 11' }, 'left ran in its schema')
  t.equal(a.pid, left.pid, 'a got the same server session on its new client connection')
  t.same(a, { pid: left.pid, schema: 'pgb_left', workMem: '7MB', first: 'pgb_left 1 of 11' }, 'a runs with left\'s search_path and setting, and reads left\'s table')
})

t.test('session pooling with server_reset_query = DISCARD ALL (the default): the next client connection starts from the server\'s defaults', async (t) => {
  const { left, a } = await handOver('DISCARD ALL')
  t.match(left, { schema: 'pgb_left', first: 'pgb_left 1 of 11' }, 'left ran in its schema')
  t.equal(a.pid, left.pid, 'a got the same server session on its new client connection')
  t.same(a, { pid: left.pid, schema: 'public', workMem: '4MB', first: 'student 1 of 1' }, 'a runs in public with the server\'s work_mem and reads its own table')
})
