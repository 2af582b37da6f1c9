import t from 'tap'
import { sql, type Generated } from 'kysely'
import { createTenancy, MismatchError } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'

// A transaction (or db.connection()) belongs to the instance that began it.
interface DB { student: { id: Generated<number>, iid: number, name: string } }

const table = 'create table student (id serial primary key, iid int not null, name text not null)'
const defaultUrl = await createDatabase(t, 'trx_default')
const isoUrl = await createDatabase(t, 'trx_iso')
await query(defaultUrl, `${table}; create schema tenant_acme; create table tenant_acme.student (id serial primary key, iid int not null, name text not null)`)
await query(isoUrl, table)

const instances = [
  { name: '', id: 1 },
  { name: 'shareTest', id: 2 },
  { name: 'iso', id: 1000, isolate: true, isolateClient: 'iso' },
  { name: 'acme', id: 3, schema: 'tenant_acme' },
]
const ten = await createTenancy({ instances, datasources: { default: defaultUrl, iso: isoUrl }, pool: { max: 2 } })
t.teardown(() => ten.close())
const db = ten.kysely<DB>()

async function names (url: string, from = 'student'): Promise<string[]> {
  return (await query<{ name: string }>(url, `select name from ${from} order by id`)).map((row) => row.name)
}

t.test('a query on an isolated instance\'s transaction from another instance fails, and the transaction rolls back', async (t) => {
  const err = await ten.runAsInstance('iso', async () => await db.transaction().execute(async (trx) => {
    await trx.insertInto('student').values({ iid: 1000, name: 'iso before' }).execute()
    await ten.runAsInstance('acme', async () => {
      await trx.insertInto('student').values({ iid: 3, name: 'acme through iso trx' }).execute()
    })
  })).catch((err: unknown) => err)
  t.ok(err instanceof MismatchError, 'a MismatchError')
  t.match(err, { code: 'TENANCY_MISMATCH', statusCode: 500 })
  t.match((err as Error).message, /belongs to instance "iso", which began it, but a query on it now runs as instance "acme"/, 'the message says what happened')
  t.same(await names(isoUrl), [], 'the iso write rolled back')
  t.same(await names(defaultUrl, 'tenant_acme.student'), [], 'nothing reached acme')
  t.same(await names(defaultUrl), [], 'nor the shared table')
})

t.test('two shared instances on the same database still may not share a transaction', async (t) => {
  await ten.runAsInstance('', async () => {
    await t.rejects(db.transaction().execute(async (trx) => {
      await trx.insertInto('student').values({ iid: 1, name: 'default in trx' }).execute()
      await ten.runAsInstance('shareTest', async () => { await trx.selectFrom('student').selectAll().execute() })
    }), { code: 'TENANCY_MISMATCH', message: /instance "".*instance "shareTest"/ })
  })
  t.same(await names(defaultUrl), [], 'rolled back')
})

t.test('host context inside an instance\'s transaction is a mismatch too', async (t) => {
  await ten.runAsInstance('iso', async () => {
    await t.rejects(db.transaction().execute(async (trx) => {
      await ten.runAsHost(async () => { await sql`select 1`.execute(trx) })
    }), { code: 'TENANCY_MISMATCH', message: /the host context/ })
  })
  await ten.runAsHost(async () => {
    await t.rejects(db.transaction().execute(async (trx) => {
      await ten.runAsInstance('iso', async () => { await sql`select 1`.execute(trx) })
    }), { code: 'TENANCY_MISMATCH', message: /belongs to the host context/ }, 'and the other way round')
  })
})

t.test('db.connection() is bound the same way', async (t) => {
  await ten.runAsInstance('acme', async () => {
    await t.rejects(db.connection().execute(async (conn) => {
      t.same(await conn.selectFrom('student').selectAll().execute(), [], 'acme may use it')
      await ten.runAsInstance('iso', async () => { await conn.selectFrom('student').selectAll().execute() })
    }), { code: 'TENANCY_MISMATCH' })
  })
})

t.test('the same instance, unscoped, or a nested runAsInstance of itself may use the transaction', async (t) => {
  await ten.runAsInstance('iso', async () => {
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('student').values({ iid: 1000, name: 'iso 1' }).execute()
      await ten.unscoped(async () => { await trx.insertInto('student').values({ iid: 1000, name: 'iso 2' }).execute() })
      await ten.runAsInstance('iso', async () => { await trx.insertInto('student').values({ iid: 1000, name: 'iso 3' }).execute() })
      await ten.runAsInstance(1000, async () => { await trx.insertInto('student').values({ iid: 1000, name: 'iso 4' }).execute() })
    })
  })
  t.same(await names(isoUrl), ['iso 1', 'iso 2', 'iso 3', 'iso 4'])
})

t.test('work for another instance inside a transaction goes through db, on that instance\'s own connection', async (t) => {
  await ten.runAsInstance('iso', async () => {
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('student').values({ iid: 1000, name: 'iso 5' }).execute()
      await ten.runAsInstance('acme', async () => {
        await db.insertInto('student').values({ iid: 3, name: 'acme 1' }).execute()
        const { rows } = await sql<{ schema: string }>`select current_schema() as schema`.execute(db)
        t.equal(rows[0]!.schema, 'tenant_acme')
      })
      const { rows } = await sql<{ database: string }>`select current_database() as database`.execute(trx)
      t.equal(rows[0]!.database, new URL(isoUrl).pathname.slice(1), 'the transaction is still on iso')
    })
  })
  t.same((await names(isoUrl)).slice(-1), ['iso 5'])
  t.same(await names(defaultUrl, 'tenant_acme.student'), ['acme 1'])
})

t.test('after mismatches nothing stays checked out and every instance still works', async (t) => {
  t.equal(ten.pools.counts().leased, 0)
  for (const instance of instances) {
    await ten.runAsInstance(instance.name, async () => {
      const { rows } = await sql<{ one: number }>`select 1 as one`.execute(db)
      t.equal(rows[0]!.one, 1)
    })
  }
})
