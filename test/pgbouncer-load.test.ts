// Many instances at once through a PgBouncer with a small server pool, so that
// server connections pass from one instance's client connection to another's:
// every statement reports the rows, schema, role, setting and database it ran
// with, and none may be another instance's. Keys and row names overlap across
// schemas, databases and instances on purpose.
import t, { type Test as Tap } from 'tap'
import { sql, type Kysely } from 'kysely'
import { createTenancy, type Tenancy } from '../lib/index.js'
import { TABLES as tables, pgbouncerFixture, startBouncer } from './helpers/pgbouncer-fixture.js'
import type { TenantDB } from './helpers/tenant-schema.js'
import type { PgBouncer } from '../scripts/pgbouncer.js'

const fixture = await pgbouncerFixture(t, 'pgbouncer_load')
const [isoA, isoB] = fixture.isolated
const { shared, isolated, schemas } = fixture.instances
const WORKERS = 12
const ROUNDS = 30

interface Seen { name: string, iid: number, schema: string, setting: string | null, database: string, login: string, pid: number }
interface Expected { prefix: string, schema: string, database: string, login: string, setting: string | null }
interface Player { label: string, tenancy: Tenancy, db: Kysely<TenantDB>, instance: string, id: number, want: Expected, raw: boolean }

const columns = sql<string>`current_schema()`.as('schema')
async function seenByFilter (db: Kysely<TenantDB>): Promise<Seen[]> {
  return await db.selectFrom('student').select(['name', 'iid', columns, sql<string | null>`current_setting('tenancy.iid', true)`.as('setting'),
    sql<string>`current_database()`.as('database'), sql<string>`current_user`.as('login'), sql<number>`pg_backend_pid()`.as('pid')]).orderBy('id').execute()
}
// Raw SQL: only row-level security confines it.
async function seenRaw (db: Kysely<TenantDB>): Promise<Seen[]> {
  return (await sql<Seen>`select name, iid, current_schema() as schema, current_setting('tenancy.iid', true) as setting, current_database() as database, current_user as login, pg_backend_pid() as pid from student order by id`.execute(db)).rows
}

function check (player: Player, rows: Seen[], where: string, problems: string[]): void {
  const names = rows.map((row) => row.name).join(', ')
  const want = [1, 2, 3, 4].map((s) => `${player.want.prefix} ${s} of ${player.id}`).join(', ')
  if (names !== want) problems.push(`${player.label} ${where}: rows ${names} instead of ${want}`)
  for (const row of rows) {
    const setting = row.setting === '' ? null : row.setting
    if (row.schema !== player.want.schema || row.database !== player.want.database || row.login !== player.want.login || setting !== player.want.setting) {
      problems.push(`${player.label} ${where}: ran with schema ${row.schema}, database ${row.database}, role ${row.login}, setting ${row.setting}`)
      break
    }
  }
}

/** WORKERS loops, each picking players in its own order, mixing plain reads, transactions and session-changing attempts. */
async function load (players: Player[], poolMode: 'session' | 'transaction'): Promise<{ problems: string[], statements: number, refused: number, pids: Map<string, Set<number>> }> {
  const problems: string[] = []
  const pids = new Map<string, Set<number>>()
  let statements = 0
  let refused = 0
  const note = (rows: Seen[]): void => {
    statements++
    for (const row of rows) {
      const key = `${row.database} ${row.login === 'postgres' || row.login === fixture.schemaRole ? 'postgres' : row.login}`
      let set = pids.get(key)
      if (set === undefined) pids.set(key, set = new Set())
      set.add(row.pid)
    }
  }
  await Promise.all(Array.from({ length: WORKERS }, async (_, worker) => {
    for (let round = 0; round < ROUNDS; round++) {
      const player = players[(worker * 7 + round * (worker + 1)) % players.length]!
      const { tenancy, db } = player
      const read = player.raw ? seenRaw : seenByFilter
      const step = (worker + round) % 4
      await tenancy.runAsInstance(player.instance, async () => {
        if (step === 0 || step === 1) {
          const rows = await read(db)
          note(rows)
          check(player, rows, 'read', problems)
        } else if (step === 2) {
          // A transaction of several statements, one of them a SET LOCAL to another schema that must end with it.
          await db.transaction().execute(async (trx) => {
            const first = await read(trx)
            note(first)
            check(player, first, 'first statement of a transaction', problems)
            await sql`set local search_path to pg_catalog`.execute(trx)
            await sql`select set_config('tenancy.iid', '3', true)`.execute(trx)
            const [{ schema } = { schema: '' }] = (await sql<{ schema: string }>`select current_schema() as schema`.execute(trx)).rows
            if (schema !== 'pg_catalog') problems.push(`${player.label}: SET LOCAL did not hold inside its transaction (${schema})`)
          })
          const after = await read(db)
          note(after)
          check(player, after, 'after a transaction with SET LOCAL', problems)
        } else {
          // A session change: destroyed on release under session pooling (PgBouncer then resets the server
          // connection), refused before it is sent under transaction pooling.
          try {
            await sql`select set_config('search_path', 'pg_catalog', false), set_config('tenancy.iid', '3', false)`.execute(db)
            if (poolMode === 'transaction') problems.push(`${player.label}: a session change was sent under transaction pooling`)
          } catch (err) {
            if (poolMode === 'session' || (err as { code?: string }).code !== 'TENANCY_UNSUPPORTED_STATEMENT') throw err
            refused++
          }
          const rows = await read(db)
          note(rows)
          check(player, rows, 'after a session change', problems)
        }
      })
    }
  }))
  return { problems, statements, refused, pids }
}

function playersOf (mixed: Tenancy, rls: Tenancy): Player[] {
  const mixedDb = mixed.kysely<TenantDB>()
  const rlsDb = rls.kysely<TenantDB>()
  const players: Player[] = []
  for (const instance of ['a', 'b', 'left', 'right', 'roled', 'isoA', 'isoB']) {
    const schema = schemas.find((entry) => entry.name === instance)
    const iso = instance === 'isoA' ? isoA.database : instance === 'isoB' ? isoB.database : undefined
    players.push({
      label: instance, tenancy: mixed, db: mixedDb, instance, id: mixed.getInstance(instance).id, raw: false,
      want: { prefix: schema?.schema ?? iso ?? 'student', schema: schema?.schema ?? 'public', database: iso ?? fixture.database, login: schema?.role ?? 'postgres', setting: null },
    })
  }
  for (const instance of ['a', 'b', 'c']) {
    const id = rls.getInstance(instance).id
    players.push({ label: `rls ${instance}`, tenancy: rls, db: rlsDb, instance, id, raw: true, want: { prefix: 'student', schema: 'public', database: fixture.database, login: fixture.app.user, setting: String(id) } })
  }
  return players
}

async function tenancies (t: Tap, bouncer: PgBouncer, pgbouncer: 'session' | 'transaction', pool: { max: number, idleTimeoutMillis?: number }): Promise<[Tenancy, Tenancy]> {
  const mixed = await createTenancy({
    instances: [...shared, ...schemas, ...isolated],
    datasources: { default: bouncer.url(fixture.database), isoA: bouncer.url(isoA.database), isoB: bouncer.url(isoB.database) },
    tables,
    pool,
    pgbouncer,
  })
  t.teardown(() => mixed.close())
  const rls = await createTenancy({ instances: shared, datasources: { default: bouncer.url(fixture.database, fixture.app) }, tables, pool, rls: true, pgbouncer })
  t.teardown(() => rls.close())
  return [mixed, rls]
}

t.test('transaction pooling: every mode over 3 server connections per database and login', async (t) => {
  const poolSize = 3
  const bouncer = await startBouncer(t, 'transaction', poolSize, [fixture.app])
  // Client pools larger than PgBouncer's: server connections are multiplexed between client connections.
  const [mixed, rls] = await tenancies(t, bouncer, 'transaction', { max: 8 })
  const { problems, statements, refused, pids } = await load(playersOf(mixed, rls), 'transaction')
  t.same(problems, [], 'every statement ran with its own instance\'s rows, schema, role, setting and database')
  t.ok(statements >= WORKERS * ROUNDS, `${statements} statements checked`)
  t.ok(refused > 0, `${refused} session changes refused before they were sent`)
  for (const [key, set] of pids) t.ok(set.size <= poolSize, `${key}: ${set.size} server sessions (at most ${poolSize})`)
  const clients = mixed.pools.status().find((pool) => pool.datasource === 'default')!.open
  t.ok(clients > poolSize, `over ${clients} client connections of one pool: PgBouncer multiplexed them`)
})

t.test('session pooling: every mode, client connections closed and opened all the time', async (t) => {
  const poolSize = 5
  const bouncer = await startBouncer(t, 'session', poolSize, [fixture.app])
  // Short idle times close client connections often, so PgBouncer resets and reassigns server connections.
  const [mixed, rls] = await tenancies(t, bouncer, 'session', { max: 2, idleTimeoutMillis: 20 })
  const { problems, statements, pids } = await load(playersOf(mixed, rls), 'session')
  t.same(problems, [], 'every statement ran with its own instance\'s rows, schema, role, setting and database')
  t.ok(statements >= WORKERS * ROUNDS, `${statements} statements checked`)
  for (const [key, set] of pids) t.ok(set.size <= poolSize, `${key}: ${set.size} server sessions (at most ${poolSize})`)
})
