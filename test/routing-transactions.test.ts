import t from 'tap'
import { Kysely, PostgresDialect, sql, type Generated } from 'kysely'
import { createTenancy, MismatchError, RoutingPool, type TenancyContext } from '../lib/index.js'
import { WholeCursor } from './helpers/whole-cursor.js'
import { createDatabase, query } from './helpers/database.js'

// A transaction (or db.connection()) belongs to the instance that began it.
interface DB { student: { id: Generated<number>, iid: number, name: string } }

const table = 'create table student (id serial primary key, iid int not null, name text not null)'
const defaultUrl = await createDatabase(t, 'trx_default')
const isoUrl = await createDatabase(t, 'trx_iso')
await query(defaultUrl, `${table}; create schema tenant_acme; create table tenant_acme.student (id serial primary key, iid int not null, name text not null);
  create schema tenant_bee; create table tenant_bee.student (id serial primary key, iid int not null, name text not null)`)
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
// Made before the first subtest: tap may end the file's root test while a
// top-level await between subtests is pending, and later subtests then fail.
// One connection per datasource, so a connection kept would come back to the next checkout.
const single = await createTenancy({ instances, datasources: { default: defaultUrl, iso: isoUrl }, pool: { max: 1 } })
t.teardown(() => single.close())
const one = single.kysely<DB>()
const pidOf = async (executor: Kysely<DB>): Promise<number> => (await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(executor)).rows[0]!.pid

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

t.test('the cursor path (stream) is bound to the transaction\'s instance too', async (t) => {
  // Not destroyed: it would close the tenancy's pools.
  const streaming = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(ten.pools, { context: () => ten.context() }), cursor: WholeCursor }) })
  const collect = async (rows: AsyncIterable<{ name: string }>): Promise<string[]> => {
    const names: string[] = []
    for await (const row of rows) names.push(row.name)
    return names
  }
  const err = await ten.runAsInstance('iso', async () => await streaming.transaction().execute(async (trx) => {
    await trx.insertInto('student').values({ iid: 1000, name: 'iso streamed' }).execute()
    t.same((await collect(trx.selectFrom('student').select('name').where('name', '=', 'iso streamed').stream())).length, 1, 'the instance that began it may stream')
    await ten.runAsInstance('acme', async () => await collect(trx.selectFrom('student').select('name').stream()))
  })).catch((err: unknown) => err)
  t.match(err, { code: 'TENANCY_MISMATCH', message: /belongs to instance "iso".*now runs as instance "acme"\. A transaction stays with one instance: finish it before switching/ })
  t.notOk((await names(isoUrl)).includes('iso streamed'), 'the transaction rolled back')
})

t.test('a transaction left open on db.connection() is rolled back and never holds the next checkout', async (t) => {
  await query(defaultUrl, 'delete from student')
  const pid = await single.runAsInstance('', async () => await one.connection().execute(async (conn) => {
    await sql`begin`.execute(conn)
    await conn.insertInto('student').values({ iid: 1, name: 'left open' }).execute()
    return await pidOf(conn)
  }))
  await single.runAsInstance('shareTest', async () => {
    t.not(await pidOf(one), pid, 'the next checkout has another connection')
    await one.insertInto('student').values({ iid: 2, name: 'share committed' }).execute()
  })
  t.same(await names(defaultUrl), ['share committed'], 'the next instance\'s insert is committed at once')
  await single.runAsInstance('', async () => { await sql`rollback`.execute(one) })
  t.same(await names(defaultUrl), ['share committed'], 'and a later ROLLBACK does not undo it; the open transaction was rolled back')
})

t.test('a schema instance never reads another\'s rows through a stale transaction', async (t) => {
  await query(defaultUrl, `delete from student; delete from tenant_acme.student; insert into student (iid, name) values (1, 'default row'); insert into tenant_acme.student (iid, name) values (3, 'acme secret')`)
  await single.runAsInstance('acme', async () => {
    await one.connection().execute(async (conn) => { await sql`begin`.execute(conn) })
  })
  await single.runAsInstance('', async () => {
    await sql`select 1`.execute(one)
    await sql`rollback`.execute(one)
  })
  await single.runAsInstance('', async () => {
    t.same((await one.selectFrom('student').select('name').execute()).map((row) => row.name), ['default row'], 'the shared instance reads public.student')
    const { rows } = await sql<{ schema: string }>`select current_schema() as schema`.execute(one)
    t.equal(rows[0]!.schema, 'public')
  })
})

t.test('an open transaction never outlives its checkout, whatever opened it', async (t) => {
  await query(defaultUrl, 'delete from student')
  const cases: Array<{ what: string, run: (conn: Kysely<DB>) => Promise<unknown> }> = [
    { what: 'select 1; begin', run: async (conn) => await sql`select 1; begin`.execute(conn) },
    { what: 'COMMIT AND CHAIN', run: async (conn) => { await sql`begin`.execute(conn); await sql`commit and chain`.execute(conn) } },
    { what: 'a failed transaction block', run: async (conn) => { await sql`begin`.execute(conn); await t.rejects(sql`select 1/0`.execute(conn), { code: '22012' }) } },
    { what: 'START TRANSACTION', run: async (conn) => await sql`start transaction isolation level repeatable read`.execute(conn) },
  ]
  for (const { what, run } of cases) {
    const pid = await single.runAsInstance('', async () => await one.connection().execute(async (conn) => {
      const pid = await pidOf(conn)
      await run(conn)
      // Refused after the failed block (25P02); inside the open transaction otherwise.
      await conn.insertInto('student').values({ iid: 1, name: `inside ${what}` }).execute().catch((err: { code?: string }) => { if (err.code !== '25P02') throw err })
      return pid
    }))
    await single.runAsInstance('shareTest', async () => {
      t.not(await pidOf(one), pid, `${what}: the next checkout has another connection`)
      await one.insertInto('student').values({ iid: 2, name: `after ${what}` }).execute()
    })
    t.same(await names(defaultUrl), [`after ${what}`], `${what}: the next instance's write is committed, the open transaction's is not`)
    await query(defaultUrl, 'delete from student')
  }
})

t.test('a transaction that ends inside its checkout keeps the connection', async (t) => {
  const pid = await single.runAsInstance('', async () => await one.connection().execute(async (conn) => {
    await sql`begin`.execute(conn)
    await sql`commit`.execute(conn)
    return await pidOf(conn)
  }))
  await single.runAsInstance('', async () => {
    await one.transaction().execute(async (trx) => { await trx.selectFrom('student').select('id').execute() })
    t.equal(await pidOf(one), pid, 'the same connection')
  })
})

t.test('two tenancies in one process: each routing pool and guard reads only its own frames', async (t) => {
  await query(defaultUrl, 'delete from tenant_bee.student; delete from tenant_acme.student')
  const other = await createTenancy({ instances: [{ name: '', id: 1 }, { name: 'bee', id: 7, schema: 'tenant_bee' }], datasources: { default: defaultUrl } })
  t.teardown(() => other.close())
  const bee = other.kysely<DB>()
  const schemaOf = async (executor: Kysely<DB>): Promise<string> => (await sql<{ schema: string }>`select current_schema() as schema`.execute(executor)).rows[0]!.schema

  await other.runAsInstance('bee', async () => await bee.transaction().execute(async (trx) => {
    await ten.runAsInstance('acme', async () => {
      await trx.insertInto('student').values({ iid: 7, name: 'bee inside acme' }).execute()
      t.equal(await schemaOf(trx as unknown as Kysely<DB>), 'tenant_bee', 'the other tenancy\'s frame does not refuse bee\'s transaction')
      t.equal(await schemaOf(bee), 'tenant_bee', 'bee\'s Kysely routes by bee\'s frame')
      t.equal(await schemaOf(db), 'tenant_acme', 'and acme\'s by acme\'s')
    })
  }))
  await ten.runAsInstance('acme', async () => await db.transaction().execute(async (trx) => {
    await other.runAsInstance('bee', async () => {
      await trx.insertInto('student').values({ iid: 3, name: 'acme inside bee' }).execute()
      t.equal(await schemaOf(db), 'tenant_acme', 'nested the other way: acme still routes by acme\'s frame')
      t.equal(await schemaOf(bee), 'tenant_bee')
    })
  }))
  await ten.runAsInstance('acme', async () => {
    t.equal(await schemaOf(bee), 'public', 'with no frame of its own, bee\'s tenancy routes as no context, not as acme')
  })
  t.same(await names(defaultUrl, 'tenant_bee.student'), ['bee inside acme'])
  t.same(await names(defaultUrl, 'tenant_acme.student'), ['acme inside bee'])
})

t.test('a connection kept past its db.connection() callback is refused afterwards, in any context, and reads nothing of the next checkout\'s session', async (t) => {
  await query(defaultUrl, `delete from student; delete from tenant_acme.student; insert into student (iid, name) values (1, 'default row'); insert into tenant_acme.student (iid, name) values (3, 'acme secret')`)
  let kept: Kysely<DB> | undefined
  await single.runAsHost(async () => { await one.connection().execute(async (conn) => { kept = conn; await sql`select 1`.execute(conn) }) })
  // The only connection of the datasource now carries acme's search_path, idle in its pool.
  await single.runAsInstance('acme', async () => {
    t.same((await one.selectFrom('student').select('name').execute()).map((row) => row.name), ['acme secret'])
  })
  const refused = { code: 'TENANCY_MISMATCH', statusCode: 500, message: /given back to its pool when the db\.connection\(\) \(or transaction\) that checked it out ended.*the query was not sent/ }
  // Host code reads tenant tables unscoped; the filter would refuse them before the connection sees anything.
  await single.runAsHost(async () => { await single.unscoped(async () => { await t.rejects(kept!.selectFrom('student').select('name').execute(), refused, 'host context: not run in acme\'s session') }) })
  await t.rejects(sql`select current_schema()`.execute(kept!), refused, 'no context')
  await single.runAsInstance('acme', async () => { await t.rejects(kept!.selectFrom('student').select('name').execute(), refused, 'acme\'s own context') })
  await single.runAsInstance('', async () => { await t.rejects(kept!.deleteFrom('student').execute(), refused, 'a write') })
  t.same(await names(defaultUrl), ['default row'], 'nothing was deleted')
  t.equal(single.pools.counts().leased, 0, 'nothing stays checked out')
  await single.runAsHost(async () => {
    await single.unscoped(async () => {
      t.same((await one.selectFrom('student').select('name').execute()).map((row) => row.name), ['default row'], 'the connection still serves checkouts, in the host\'s session')
    })
  })
})

t.test('a transaction goes on for another object of its instance only while the connection carries the same thing for it', async (t) => {
  await query(defaultUrl, 'delete from tenant_acme.student; delete from tenant_bee.student')
  const acme = await single.runAsInstance('acme', async () => single.context()!.instance!)
  // What a registry reload or another tenancy with the same id could put in the context.
  const frameOf = (instance: typeof acme): TenancyContext => ({ tenancy: single, kind: 'instance', instance, outer: undefined })
  let frame = frameOf(acme)
  const guarded = new Kysely<DB>({ dialect: new PostgresDialect({ pool: new RoutingPool(single.pools, { context: () => frame }) }) })
  await guarded.transaction().execute(async (trx) => {
    await trx.insertInto('student').values({ iid: 3, name: 'acme 1' }).execute()
    frame = frameOf({ ...acme })
    await trx.insertInto('student').values({ iid: 3, name: 'acme 2' }).execute()
  })
  t.same(await names(defaultUrl, 'tenant_acme.student'), ['acme 1', 'acme 2'], 'an equal copy (a reload that changed nothing) may go on')
  for (const changed of [{ schema: 'tenant_bee' }, { role: 'someone' }, { datasource: 'iso' }, { id: 4 }]) {
    frame = frameOf(acme)
    const err = await guarded.transaction().execute(async (trx) => {
      await trx.insertInto('student').values({ iid: 3, name: 'acme before' }).execute()
      frame = frameOf({ ...acme, ...changed })
      await trx.insertInto('student').values({ iid: 3, name: 'changed' }).execute()
    }).catch((err: unknown) => err)
    t.match(err, { code: 'TENANCY_MISMATCH', message: /belongs to instance "acme".*now runs as instance "acme"/ }, `same name, ${JSON.stringify(changed)}: refused`)
  }
  t.same(await names(defaultUrl, 'tenant_acme.student'), ['acme 1', 'acme 2'], 'every refused transaction rolled back')
  t.same(await names(defaultUrl, 'tenant_bee.student'), [], 'nothing reached the other schema')
  t.equal(single.pools.counts().leased, 0)
})
