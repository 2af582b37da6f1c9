// `preparedStatements`: statements with parameters go out as named prepared
// statements, planned once per connection. A plan must never carry one
// checkout's instance to the next: the row-level security setting, the schema
// and the role change between executions of the same prepared text on the same
// connection (one connection per tenancy here), under generic and custom plans.
import t from 'tap'
import { sql } from 'kysely'
import { randomBytes } from 'node:crypto'
import { createTenancy, rowLevelSecurityStatements } from '../lib/index.js'
import { adminQuery, createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

interface DB extends TenantDB {
  note: { id: number, body: string }
}

const url = await createDatabase(t, 'prepared_statements')
await createTenantSchema(url)
const role = `tenancy_prep_${randomBytes(4).toString('hex')}`
const password = randomBytes(12).toString('hex')
await adminQuery(`create role ${role} login password '${password}' nosuperuser nobypassrls`)
t.teardown(async () => { await adminQuery(`drop owned by ${role}`, url).catch(() => {}); await adminQuery(`drop role if exists ${role}`) })
await query(url, `grant select, insert, update, delete on all tables in schema public to ${role}`)
for (const statement of rowLevelSecurityStatements({ student: 'must', course: 'must', role: 'may', tag: 'must' })) await query(url, statement)
// Schema instances' own table, with the same ids in both schemas.
for (const schema of ['prep_x', 'prep_y']) {
  await query(url, `create schema ${schema}; create table ${schema}.note (id int primary key, body text not null);
    insert into ${schema}.note select n, '${schema} ' || n from generate_series(1, 3) n;
    grant usage on schema ${schema} to ${role}; grant select, insert, update, delete on ${schema}.note to ${role}`)
}
// Each schema instance of `instances` below may also run as a role of its own, with rights on its schema only.
const roles = { x: `${role}_x`, y: `${role}_y` }
for (const [name, owner] of Object.entries(roles)) {
  await adminQuery(`create role ${owner} nologin`)
  await query(url, `grant usage on schema prep_${name} to ${owner}; grant select, insert, update, delete on prep_${name}.note to ${owner}; grant ${owner} to ${role}`)
}
t.teardown(async () => { for (const owner of Object.values(roles)) { await adminQuery(`drop owned by ${owner}`, url).catch(() => {}); await adminQuery(`drop role if exists ${owner}`) } })
const appUrl = new URL(url)
appUrl.username = role
appUrl.password = password
const instances = [...schemaInstances, { name: 'x', id: 11, schema: 'prep_x' }, { name: 'y', id: 12, schema: 'prep_y' },
  { name: 'rx', id: 21, schema: 'prep_x', role: roles.x }, { name: 'ry', id: 22, schema: 'prep_y', role: roles.y }]

async function tenancyWith (planCacheMode: string, preparedStatements: boolean | number = true) {
  const tenancy = await createTenancy({
    instances,
    datasources: { default: appUrl.toString() },
    tables: { student: 'must', course: 'must', role: 'may', tag: 'must' },
    // One connection: every checkout below reuses the statements prepared by the one before.
    pool: { max: 1, options: `-c plan_cache_mode=${planCacheMode}` } as never,
    rls: true,
    preparedStatements,
    doctor: false,
  })
  t.teardown(() => tenancy.close())
  return { tenancy, db: tenancy.kysely<DB>() }
}

/** The statements the tenancy has prepared on the connection `executor` runs on. */
async function preparedOn (executor: Awaited<ReturnType<typeof tenancyWith>>['db']): Promise<string[]> {
  return (await sql<{ statement: string }>`select statement from pg_prepared_statements where name like 'tenancy\\_%' order by statement`.execute(executor)).rows.map((row) => row.statement)
}

/** The prepared statements of the tenancy's one connection, read on it. */
async function prepared (tenancy: Awaited<ReturnType<typeof tenancyWith>>['tenancy'], db: Awaited<ReturnType<typeof tenancyWith>>['db']): Promise<string[]> {
  return await tenancy.runAsInstance(1, async () => await preparedOn(db))
}

for (const mode of ['force_generic_plan', 'force_custom_plan']) {
  t.test(`row-level security follows the instance through one prepared statement (${mode})`, async (t) => {
    const { tenancy, db } = await tenancyWith(mode)
    for (let round = 0; round < 8; round++) {
      for (const id of [1, 2, 3]) {
        await tenancy.runAsInstance(id, async () => {
          // Raw SQL with a parameter and no iid: only the policy confines it.
          const raw = await sql<{ iid: number, id: number }>`select iid, id from student where id <= ${4} order by id`.execute(db)
          t.same(raw.rows.map((row) => row.iid), [id, id, id, id], `raw, instance ${id}, round ${round}`)
          const built = await db.selectFrom('student').select(['iid', 'name']).where('id', '=', 2).execute()
          t.same(built, [{ iid: id, name: `student 2 of ${id}` }])
        })
      }
    }
    await tenancy.runAsHost(async () => {
      t.same((await sql`select * from student where id <= ${4}`.execute(db)).rows, [], 'host context: the same prepared text sees no student')
    })
    t.same((await sql`select * from student where id <= ${4}`.execute(db)).rows, [], 'no context: nothing')
    const statements = await prepared(tenancy, db)
    t.ok(statements.some((text) => text.startsWith('select iid, id from student')), 'the raw statement was prepared on the connection')
    t.ok(statements.some((text) => text.includes('"student"."iid" = $')), 'and the built one')
  })
}

t.test('a write through a prepared statement touches only its own instance', async (t) => {
  const { tenancy, db } = await tenancyWith('force_generic_plan')
  for (const id of [1, 2, 3, 1, 2, 3]) {
    await tenancy.runAsInstance(id, async () => {
      const result = await sql`update course set title = title || ${'+'} where id = ${1}`.execute(db)
      t.equal(Number(result.numAffectedRows), 1, `instance ${id}'s course 1 only`)
    })
  }
  t.same(await query(url, "select iid, title from course where id = 1 order by iid"), [
    { iid: 1, title: 'course 1 of 1++' }, { iid: 2, title: 'course 1 of 2++' }, { iid: 3, title: 'course 1 of 3++' },
  ])
})

t.test('the schema follows the instance through one prepared statement', async (t) => {
  for (const mode of ['force_generic_plan', 'force_custom_plan']) {
    const { tenancy, db } = await tenancyWith(mode)
    for (let round = 0; round < 6; round++) {
      for (const name of ['x', 'y']) {
        await tenancy.runAsInstance(name, async () => {
          const rows = await db.selectFrom('note').select('body').where('id', '=', 2).execute()
          t.same(rows, [{ body: `prep_${name} 2` }], `${mode}: instance ${name}, round ${round}`)
        })
      }
    }
    await tenancy.runAsInstance('y', async () => {
      await db.updateTable('note').set({ body: 'changed by y' }).where('id', '=', 3).execute()
    })
    t.same(await query(url, 'select body from prep_x.note where id = 3'), [{ body: 'prep_x 3' }], 'x\'s row untouched')
    t.same(await query(url, 'select body from prep_y.note where id = 3'), [{ body: 'changed by y' }])
    await query(url, "update prep_y.note set body = 'prep_y 3' where id = 3")
  }
})

t.test('a statement prepared under one instance\'s role runs with the rights of the next one\'s', async (t) => {
  const { tenancy, db } = await tenancyWith('force_generic_plan')
  // Schema-qualified, so only the role stands between ry and x's rows.
  const readX = async (): Promise<unknown[]> => (await sql<{ body: string }>`select body from prep_x.note where id = ${1}`.execute(db)).rows
  for (let round = 0; round < 6; round++) {
    t.same(await tenancy.runAsInstance('rx', readX), [{ body: 'prep_x 1' }], `rx reads its own schema, round ${round}`)
    await t.rejects(tenancy.runAsInstance('ry', readX), { code: '42501' }, `ry is refused x's table by the same prepared text, round ${round}`)
  }
  // Read on the connection that runs the text, in one transaction: a connection
  // given back before the server's ready-for-query after ry's refusal is
  // destroyed, so the next checkout may be a new connection that has prepared nothing.
  const statements = await tenancy.runAsInstance('rx', async () => await db.transaction().execute(async (trx) => {
    await sql`select body from prep_x.note where id = ${1}`.execute(trx)
    return await preparedOn(trx)
  }))
  t.ok(statements.some((text) => text.startsWith('select body from prep_x.note')), 'the text was prepared')
})

t.test('after DISCARD ALL on the connection the rest of the checkout runs unnamed, and the connection is not reused', async (t) => {
  const { tenancy, db } = await tenancyWith('auto')
  const pid = async (): Promise<number> => (await sql<{ pid: number }>`select pg_backend_pid() as pid where ${1} = 1`.execute(db)).rows[0]!.pid
  await tenancy.runAsInstance(2, async () => {
    await db.connection().execute(async (connection) => {
      const before = await connection.selectFrom('student').select('iid').where('id', '=', 1).execute()
      await sql`discard all`.execute(connection)
      // DISCARD ALL dropped the prepared statement pg believes is there: a named send would fail.
      const after = await connection.selectFrom('student').select('iid').where('id', '=', 1).execute()
      t.same(before, [{ iid: 2 }])
      t.same(after, [], 'the session setting went with DISCARD ALL: the policy shows nothing, and the query did not fail')
    })
  })
  const first = await tenancy.runAsInstance(2, pid)
  t.same(await tenancy.runAsInstance(3, async () => await db.selectFrom('student').select('iid').where('id', '=', 1).execute()), [{ iid: 3 }], 'the next checkout has its setting')
  t.equal(await tenancy.runAsInstance(2, pid), first, 'one connection since the discarded one')
})

t.test('a prepared select * whose columns a migration changed', async (t) => {
  const { tenancy, db } = await tenancyWith('auto')
  const read = async (executor: Pick<typeof db, 'selectFrom'> = db): Promise<unknown[]> => await executor.selectFrom('tag').selectAll().where('id', '=', 1).execute()
  t.same(await tenancy.runAsInstance(1, read), [{ id: 1, iid: 1, label: 'tag 1 of 1' }])
  await query(url, 'alter table tag add column colour text')
  t.teardown(() => query(url, 'alter table tag drop column if exists colour'))
  t.same(await tenancy.runAsInstance(1, read), [{ id: 1, iid: 1, label: 'tag 1 of 1', colour: null }], 'outside a transaction: sent again unnamed')
  await query(url, 'alter table tag drop column colour')
  await tenancy.runAsInstance(1, read)
  await query(url, 'alter table tag add column colour text')
  const failed = await tenancy.runAsInstance(1, async () => await db.transaction().execute(async (trx) => await read(trx))).then(() => undefined, (err: unknown) => err)
  t.match(failed, { code: '0A000', message: /cached plan must not change result type/ }, 'inside a transaction PostgreSQL\'s error reaches the caller')
  t.same(await tenancy.runAsInstance(1, async () => await db.transaction().execute(async (trx) => await read(trx))), [{ id: 1, iid: 1, label: 'tag 1 of 1', colour: null }], 'the next transaction runs on a new connection')
})

t.test('at most the limit of texts is prepared per connection; the rest run unnamed', async (t) => {
  const { tenancy, db } = await tenancyWith('auto', 2)
  await tenancy.runAsInstance(1, async () => {
    for (let n = 1; n <= 4; n++) {
      const rows = await db.selectFrom('student').select('id').where('id', '=', n).execute()
      t.same(rows, [{ id: n }])
      await db.selectFrom('course').select('id').where('id', '=', 1).where('title', '!=', String(n)).execute()
    }
    await db.selectFrom('tag').select('id').where('id', '=', 1).execute()
  })
  t.equal((await prepared(tenancy, db)).length, 2)
})

t.test('preparedStatements is checked at start-up', async (t) => {
  for (const bad of [-1, 1.5, 'yes']) {
    await t.rejects(createTenancy({ instances, datasources: { default: url }, tables: { student: 'must' }, preparedStatements: bad as never, doctor: false }),
      { code: 'TENANCY_INVALID_OPTIONS', message: /preparedStatements must be true, false or a whole number/ }, JSON.stringify(bad))
  }
  await t.rejects(createTenancy({ instances, datasources: { default: url }, tables: { student: 'must' }, preparedStatements: true, pgbouncer: 'transaction', doctor: false }),
    { code: 'TENANCY_INVALID_OPTIONS', message: /transaction pooling/ })
})
