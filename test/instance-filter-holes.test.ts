// Ways around the tenant filter through ordinary builder code, each closed:
// the exact SQL of the rewrite, then the statement on PostgreSQL, showing that
// no other instance's row was returned, copied or changed. Instances a–d are
// 1–4; their rows share primary keys.
import t from 'tap'
import { sql, type Kysely } from 'kysely'
import { createTenancy, InstanceFilterPlugin } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'tenant_filter_holes')
await createTenantSchema(url)
// A tenant column of the longest name PostgreSQL keeps: a longer name is cut to it.
const WIDE = 'tenant_' + 'x'.repeat(56)
await query(url, `create table wide (id int not null, ${WIDE} int not null, note text); insert into wide values (1, 2, 'two'), (1, 3, 'three')`)
const tenancy = await createTenancy({ instances: schemaInstances, datasources: { default: url } })
t.teardown(() => tenancy.close())
const db = tenancy.kysely<TenantDB>()
// For shapes the table types do not allow (a CTE named like a table, a schema-qualified name).
const anyDb = db as unknown as Kysely<any>

// The fixture's rows, put back before each test that writes. Rows, not tables:
// a table dropped and created again would be a change of the tables to discover.
const TABLES = ['course', 'student', 'role', 'tag', 'country']
const fixture = new Map<string, unknown[]>()
for (const table of TABLES) fixture.set(table, await query(url, `select * from ${table}`))

async function reset (): Promise<void> {
  await query(url, `truncate ${TABLES.join(', ')}`)
  for (const table of TABLES) {
    await query(url, `insert into ${table} select * from json_populate_recordset(null::${table}, $1)`, [JSON.stringify(fixture.get(table))])
  }
}

/** Every row of every tenant table that does not belong to instance `id` (host rows included). */
async function othersOf (id: number): Promise<Record<string, unknown[]>> {
  const out: Record<string, unknown[]> = {}
  for (const table of ['student', 'course', 'role', 'tag']) {
    out[table] = await query(url, `select * from ${table} where iid is distinct from $1 order by iid nulls first, id`, [id])
  }
  return out
}

t.test('SET: every way of naming the tenant column is checked, in instance context', async (t) => {
  await reset()
  const before = await query(url, 'select * from student order by iid, id')
  await tenancy.runAsInstance('b', async () => {
    const moves: Array<[string, () => { compile: () => unknown, execute: () => Promise<unknown> }]> = [
      ["set('iid', 3)", () => db.updateTable('student').set('iid', 3).where('id', '=', 1)],
      ["set((eb) => eb.ref('iid'), 3)", () => db.updateTable('student').set((eb) => eb.ref('iid'), 3).where('id', '=', 1)],
      ["set('student.iid', 3)", () => db.updateTable('student').set('student.iid', 3).where('id', '=', 1)],
      ["set('s.iid', 3) on an alias", () => db.updateTable('student as s').set('s.iid', 3).where('s.id', '=', 1)],
      ["set(sql.ref('iid'), 3)", () => anyDb.updateTable('student').set(sql.ref('iid'), 3).where('id', '=', 1)],
      ["set(sql.id('iid'), 3)", () => anyDb.updateTable('student').set(sql.id('iid'), 3).where('id', '=', 1)],
      ['set(sql`iid`, 3)', () => anyDb.updateTable('student').set(sql`iid`, 3).where('id', '=', 1)],
      ['set(sql` IID`, 3): unquoted names fold to lower case', () => anyDb.updateTable('student').set(sql` IID`, 3).where('id', '=', 1)],
      ['set(sql`"iid"`, 3)', () => anyDb.updateTable('student').set(sql`"iid"`, 3).where('id', '=', 1)],
      ['set(sql`i${raw}`, 3): fragments that join into the name', () => anyDb.updateTable('student').set(sql`i${sql.raw('id')}`, 3).where('id', '=', 1)],
      ["set({ iid: (eb) => eb.val(3) })", () => db.updateTable('student').set({ iid: (eb) => eb.val(3) }).where('id', '=', 1)],
      ['set({ iid: sql`3` })', () => db.updateTable('student').set({ iid: sql<number>`3` }).where('id', '=', 1)],
      ["set({ iid: (eb) => eb.ref('course.iid') }) from course", () => db.updateTable('student').from('course').set({ iid: (eb) => eb.ref('course.iid') }).whereRef('course.id', '=', 'student.id')],
      ["set('iid', (eb) => eb.selectFrom('course').select('iid'))", () => db.updateTable('student').set('iid', (eb) => eb.selectFrom('course').select('iid').limit(1)).where('id', '=', 1)],
    ]
    for (const [name, build] of moves) {
      t.throws(() => build().compile(), { code: 'TENANCY_MISMATCH' }, name)
      await t.rejects(build().execute(), { code: 'TENANCY_MISMATCH' }, `${name}: refused before it runs`)
    }
    // Targets whose column cannot be read from their text are refused whatever their value.
    const unknown: Array<[string, () => { compile: () => unknown }]> = [
      ['a comment first', () => anyDb.updateTable('student').set(sql`/* c */ iid`, 2)],
      ['a column list', () => db.updateTable('student').set(sql`(name, iid)` as never, sql`('x', 3)`)],
      ['a Unicode-escaped name', () => anyDb.updateTable('student').set(sql`U&"\\0069id"`, 3)],
      ['an empty raw followed by text', () => anyDb.updateTable('student').set(sql`${sql.raw('')}iid`, 3)],
    ]
    for (const [name, build] of unknown) t.throws(() => build().compile(), { code: 'TENANCY_MISMATCH' }, name)

    // The current id stays allowed, in every form; other columns pass.
    const keep = db.updateTable('student').set('iid', 2).set((eb) => eb.ref('name'), 'kept').set(sql`"course_id"` as never, 1 as never).where('id', '=', 1)
    const compiled = keep.compile()
    t.equal(compiled.sql, 'update "student" set "iid" = $1, "name" = $2, "course_id" = $3 where ("id" = $4) and "student"."iid" = $5')
    t.same(compiled.parameters, [2, 'kept', 1, 1, 2])
    t.equal(Number((await keep.executeTakeFirst()).numUpdatedRows), 1)
  })
  const after = await query(url, 'select * from student order by iid, id')
  t.same(after.filter((row) => row.iid !== 2), before.filter((row) => row.iid !== 2), 'no row of another instance changed')
  t.same(after.filter((row) => row.iid === 2).map((row) => row.id), [1, 2, 3, 4], 'no row left instance 2')
  t.same(after.find((row) => row.iid === 2 && row.id === 1), { id: 1, iid: 2, name: 'kept', course_id: 1 })
})

t.test('SET in host context: a host row of a may table cannot be moved into an instance', async (t) => {
  await reset()
  await tenancy.runAsHost(async () => {
    for (const build of [
      () => db.updateTable('role').set('iid', 1).where('id', '=', 1),
      () => db.updateTable('role').set((eb) => eb.ref('iid'), 1).where('id', '=', 1),
      () => anyDb.updateTable('role').set(sql`iid`, 1).where('id', '=', 1),
      () => db.updateTable('role').set({ iid: 1 }).where('id', '=', 1),
      () => db.updateTable('role as r').set('r.iid', 1).where('r.id', '=', 1),
    ]) {
      await t.rejects(build().execute(), { code: 'TENANCY_MISMATCH' })
    }
    const keep = db.updateTable('role').set('iid', null).set('name', 'host one').where('id', '=', 1)
    t.equal(keep.compile().sql, 'update "role" set "iid" = $1, "name" = $2 where ("id" = $3) and "role"."iid" is null')
    await keep.execute()
  })
  t.same(await query(url, 'select id, name from role where iid is null order by id'), [{ id: 1, name: 'host one' }, { id: 2, name: 'host role 2' }], 'host rows stay host rows')
  t.same(await query(url, 'select count(*)::int as n from role where iid is not null'), [{ n: 6 }], 'no instance gained a row')
})

t.test('ON CONFLICT DO UPDATE SET: the tenant column is checked the same way', async (t) => {
  await reset()
  const before = await othersOf(3)
  await tenancy.runAsInstance('c', async () => {
    for (const [name, build] of [
      ["{ iid: (eb) => eb.ref('excluded.iid') }", () => db.insertInto('tag').values({ id: 4, label: 'x' }).onConflict((oc) => oc.column('id').doUpdateSet({ iid: (eb) => eb.ref('excluded.iid') }))],
      ['{ iid: 2 }', () => db.insertInto('tag').values({ id: 4, label: 'x' }).onConflict((oc) => oc.column('id').doUpdateSet({ iid: 2 }))],
      ['{ iid: sql`2` }', () => db.insertInto('tag').values({ id: 4, label: 'x' }).onConflict((oc) => oc.column('id').doUpdateSet({ iid: sql<number>`2` }))],
      ['(eb) => ({ iid: eb.val(2) })', () => db.insertInto('tag').values({ id: 4, label: 'x' }).onConflict((oc) => oc.column('id').doUpdateSet((eb) => ({ iid: eb.val(2) })))],
    ] as const) {
      await t.rejects(build().execute(), { code: 'TENANCY_MISMATCH' }, name)
    }
    const keep = db.insertInto('tag').values({ id: 7, label: 'x' }).onConflict((oc) => oc.column('id').doUpdateSet({ iid: 3, label: 'seven' })).returning(['id', 'iid', 'label'])
    t.equal(keep.compile().sql, 'insert into "tag" ("id", "label", "iid") values ($1, $2, $3) on conflict ("id") do update set "iid" = $4, "label" = $5 where "tag"."iid" = $6 returning "id", "iid", "label"')
    t.same(await keep.execute(), [{ id: 7, iid: 3, label: 'seven' }])
  })
  await tenancy.runAsHost(async () => {
    t.throws(() => db.insertInto('role').values({ id: 1, name: 'x' }).onConflict((oc) => oc.column('id').doUpdateSet({ iid: 1 })).compile(), { code: 'TENANCY_MISMATCH' })
  })
  t.same(await othersOf(3), before, 'no row of another instance changed')
})

// UPDATE … FROM and DELETE … USING with every join kind their builders offer:
// `country` (no tenant column) on the left, so that a RIGHT or FULL join keeps
// every row of `role` that its ON condition does not match.
const joinKinds = ['innerJoin', 'leftJoin', 'rightJoin', 'fullJoin'] as const
const joinSql = { innerJoin: 'inner join', leftJoin: 'left join', rightJoin: 'right join', fullJoin: 'full join' }

t.test('UPDATE … FROM: no join kind reads or copies another instance\'s row', async (t) => {
  for (const kind of joinKinds) {
    await reset()
    const before = await othersOf(2)
    await tenancy.runAsInstance('b', async () => {
      const update = (db.updateTable('student as s').from('country as k') as any)[kind]('role as r', 'r.name', 'k.name')
        .set({ name: (eb: any) => eb.ref('r.name') }).whereRef('s.id', '=', 'r.id').returning(['s.id', 'r.iid', 'r.name'])
      const outer = kind === 'rightJoin' || kind === 'fullJoin'
      t.equal(update.compile().sql, outer
        ? `update "student" as "s" set "name" = "r"."name" from "country" as "k" ${joinSql[kind]} (select * from "role" where "role"."iid" = $1) as "r" on "r"."name" = "k"."name" where ("s"."id" = "r"."id") and "s"."iid" = $2 returning "s"."id", "r"."iid", "r"."name"`
        : `update "student" as "s" set "name" = "r"."name" from "country" as "k" ${joinSql[kind]} "role" as "r" on ("r"."name" = "k"."name") and "r"."iid" = $1 where ("s"."id" = "r"."id") and "s"."iid" = $2 returning "s"."id", "r"."iid", "r"."name"`, kind)
      const rows: Array<{ id: number, iid: number, name: string }> = await update.execute()
      t.same(rows.map((row) => [row.id, row.iid, row.name]).sort(), outer ? [[1, 2, 'role 1 of 2'], [2, 2, 'role 2 of 2']] : [], `${kind}: RETURNING shows instance 2's roles only`)
      // Asked for another instance's row outright, it finds none.
      const stolen = await (db.updateTable('student as s').from('country as k') as any)[kind]('role as r', 'r.name', 'k.name')
        .set({ name: (eb: any) => eb.ref('r.name') }).whereRef('s.id', '=', 'r.id').where('r.iid', 'is distinct from', 2).returning(['r.iid', 'r.name']).execute()
      t.same(stolen, [], `${kind}: no other instance's role is read`)
    })
    t.same(await othersOf(2), before, `${kind}: no row of another instance changed`)
    const names = await query(url, 'select name from student where iid = 2 order by id')
    t.ok(names.every((row) => /^(student \d of 2|role \d of 2)$/.test(row.name)), `${kind}: SET copied no other instance's value`)
  }
})

t.test('DELETE … USING: no join kind reads another instance\'s row or deletes beyond the current one', async (t) => {
  for (const kind of joinKinds) {
    await reset()
    const before = await othersOf(2)
    await tenancy.runAsInstance('b', async () => {
      const stolen = (db.deleteFrom('student').using('country') as any)[kind]('role as r', 'r.name', 'country.name')
        .whereRef('student.id', '=', 'r.id').where('r.iid', '=', 1).returning(['student.id', 'r.name'])
      const outer = kind === 'rightJoin' || kind === 'fullJoin'
      t.equal(stolen.compile().sql, outer
        ? `delete from "student" using "country" ${joinSql[kind]} (select * from "role" where "role"."iid" = $1) as "r" on "r"."name" = "country"."name" where ("student"."id" = "r"."id" and "r"."iid" = $2) and "student"."iid" = $3 returning "student"."id", "r"."name"`
        : `delete from "student" using "country" ${joinSql[kind]} "role" as "r" on ("r"."name" = "country"."name") and "r"."iid" = $1 where ("student"."id" = "r"."id" and "r"."iid" = $2) and "student"."iid" = $3 returning "student"."id", "r"."name"`, kind)
      t.same(await stolen.execute(), [], `${kind}: instance 1's roles are not read`)
      const deleted: Array<{ id: number, iid: number }> = await (db.deleteFrom('student').using('country') as any)[kind]('role as r', 'r.name', 'country.name')
        .whereRef('student.id', '=', 'r.id').returning(['student.id', 'r.iid']).execute()
      t.same(deleted.map((row) => [row.id, row.iid]).sort(), outer ? [[1, 2], [2, 2]] : [], `${kind}: RETURNING shows instance 2's roles only`)
    })
    t.same(await othersOf(2), before, `${kind}: no row of another instance deleted`)
  }
})

t.test('parentheses: a raw OR inside a binary operation cannot take the predicate into one branch', async (t) => {
  await reset()
  await tenancy.runAsInstance('b', async () => {
    const select = db.selectFrom('student').select(['id', 'iid']).where('id', '=', sql<number>`1 or true`).orderBy('id')
    const compiled = select.compile()
    t.equal(compiled.sql, 'select "id", "iid" from "student" where ("id" = 1 or true) and "student"."iid" = $1 order by "id"')
    t.same(compiled.parameters, [2])
    t.same(await select.execute(), [{ id: 1, iid: 2 }, { id: 2, iid: 2 }, { id: 3, iid: 2 }, { id: 4, iid: 2 }])
  })
})

t.test('parentheses: every place the filter appends a predicate, whatever the condition', async (t) => {
  await reset()
  const before = await othersOf(2)
  await tenancy.runAsInstance('b', async () => {
    const not = db.selectFrom('student').select('iid').where((eb) => eb.not(sql<boolean>`false or true`))
    t.equal(not.compile().sql, 'select "iid" from "student" where (not false or true) and "student"."iid" = $1')
    t.same([...new Set((await not.execute()).map((row) => row.iid))], [2])
    const raw = db.selectFrom('student').select('iid').where(sql<boolean>`true or true`)
    t.equal(raw.compile().sql, 'select "iid" from "student" where (true or true) and "student"."iid" = $1')
    t.same([...new Set((await raw.execute()).map((row) => row.iid))], [2])
    const on = db.selectFrom('country').innerJoin('course as c', (join) => join.on('c.id', '=', sql<number>`1 or true`)).select('c.iid')
    t.equal(on.compile().sql, 'select "c"."iid" from "country" inner join "course" as "c" on ("c"."id" = 1 or true) and "c"."iid" = $1')
    t.same([...new Set((await on.execute()).map((row) => row.iid))], [2])
    const onEb = db.selectFrom('country').leftJoin('course as c', (join) => join.on((eb) => eb('c.id', '=', sql<number>`1 or true`))).select('c.iid')
    t.equal(onEb.compile().sql, 'select "c"."iid" from "country" left join "course" as "c" on ("c"."id" = 1 or true) and "c"."iid" = $1')
    t.same([...new Set((await onEb.execute()).map((row) => row.iid))], [2])
    const deleted = await db.deleteFrom('student').where('id', '=', sql<number>`1 or true`).returning('iid').execute()
    t.same(deleted, [{ iid: 2 }, { iid: 2 }, { iid: 2 }, { iid: 2 }], 'DELETE removes instance 2\'s rows only')
    const updated = await db.updateTable('course').set({ title: 'x' }).where((eb) => eb.not(sql<boolean>`false or true`)).returning('iid').execute()
    t.same(updated, [{ iid: 2 }, { iid: 2 }, { iid: 2 }], 'UPDATE changes instance 2\'s rows only')
  })
  await tenancy.runAsInstance('c', async () => {
    // tag 4 belongs to instance 2: the conflict meets it, the raw OR must not let it be updated.
    const upsert = db.insertInto('tag').values({ id: 4, label: 'stolen' }).onConflict((oc) => oc.column('id').doUpdateSet({ label: 'stolen' }).where(sql<boolean>`true or true`))
    t.equal(upsert.compile().sql, 'insert into "tag" ("id", "label", "iid") values ($1, $2, $3) on conflict ("id") do update set "label" = $4 where (true or true) and "tag"."iid" = $5')
    t.equal(Number((await upsert.executeTakeFirst()).numInsertedOrUpdatedRows), 0)
  })
  t.same(await othersOf(2), before, 'no row of another instance changed')
})

t.test('a CTE shadows only the unqualified name: public.student stays the table and is confined', async (t) => {
  await reset()
  await tenancy.runAsInstance('b', async () => {
    const select = anyDb.with('student', (q) => q.selectFrom('course').select(['id', 'title as name']))
      .selectFrom('public.student as p').innerJoin('student as c', 'c.id', 'p.id').select(['p.id', 'p.iid', 'c.name']).orderBy('p.id')
    const compiled = select.compile()
    t.equal(compiled.sql, 'with "student" as (select "id", "title" as "name" from "course" where "course"."iid" = $1) select "p"."id", "p"."iid", "c"."name" from "public"."student" as "p" inner join "student" as "c" on "c"."id" = "p"."id" where "p"."iid" = $2 order by "p"."id"')
    t.same(compiled.parameters, [2, 2])
    t.same(await select.execute(), [
      { id: 1, iid: 2, name: 'course 1 of 2' }, { id: 2, iid: 2, name: 'course 2 of 2' }, { id: 3, iid: 2, name: 'course 3 of 2' },
    ])
  })
})

t.test('a CTE named like the target does not hide the table an INSERT, UPDATE, DELETE or MERGE writes', async (t) => {
  await reset()
  const before = await othersOf(2)
  const shadow = anyDb.with('student', (q) => q.selectFrom('country').select('code'))
  await tenancy.runAsInstance('b', async () => {
    const update = shadow.updateTable('student').set({ name: 'x' }).returning(['id', 'iid'])
    t.equal(update.compile().sql, 'with "student" as (select "code" from "country") update "student" set "name" = $1 where "student"."iid" = $2 returning "id", "iid"')
    t.same((await update.execute()).map((row) => row.iid), [2, 2, 2, 2])
    const remove = shadow.deleteFrom('student').where('id', '=', 1).returning(['id', 'iid'])
    t.equal(remove.compile().sql, 'with "student" as (select "code" from "country") delete from "student" where ("id" = $1) and "student"."iid" = $2 returning "id", "iid"')
    t.same(await remove.execute(), [{ id: 1, iid: 2 }])
    await t.rejects(shadow.insertInto('student').values({ id: 50, iid: 3, name: 'x' }).execute(), { code: 'TENANCY_MISMATCH' })
    const insert = shadow.insertInto('student').values({ id: 50, name: 'x' }).returning(['id', 'iid'])
    t.equal(insert.compile().sql, 'with "student" as (select "code" from "country") insert into "student" ("id", "name", "iid") values ($1, $2, $3) returning "id", "iid"')
    t.same(await insert.execute(), [{ id: 50, iid: 2 }])
    await t.rejects(shadow.mergeInto('student').using('country', 'country.name', 'student.name').whenMatched().thenDelete().execute(), { code: 'TENANCY_UNSUPPORTED_STATEMENT' })
    // A data-modifying CTE after the shadowing one writes the table too.
    const nested = shadow.with('gone', (q) => q.deleteFrom('student').where('id', '=', 2).returning('iid')).selectFrom('gone').selectAll()
    t.equal(nested.compile().sql, 'with "student" as (select "code" from "country"), "gone" as (delete from "student" where ("id" = $1) and "student"."iid" = $2 returning "iid") select * from "gone"')
    t.same(await nested.execute(), [{ iid: 2 }])
  })
  t.same(await othersOf(2), before, 'no row of another instance changed')
})

t.test('raw text at the end of a select cannot continue its WHERE', async (t) => {
  await reset()
  await tenancy.runAsInstance('b', async () => {
    const select = db.selectFrom('student').select(['id', 'iid']).where('id', '<', 3).modifyEnd(sql`or true`)
    t.equal(select.compile().sql, 'select "id", "iid" from (select * from "student" where "student"."iid" = $1) as "student" where "id" < $2 or true')
    t.same((await select.execute()).map((row) => row.iid), [2, 2, 2, 2])
    // The last set operation's WHERE is the one the text follows.
    const union = db.selectFrom('student').select(['id', 'iid']).where('id', '=', 1).union(db.selectFrom('course').select(['id', 'iid']).where('id', '=', 1)).modifyEnd(sql`or true`)
    t.equal(union.compile().sql, 'select "id", "iid" from (select * from "student" where "student"."iid" = $1) as "student" where "id" = $2 union select "id", "iid" from (select * from "course" where "course"."iid" = $3) as "course" where ("id" = $4) or true')
    t.same([...new Set((await union.execute()).map((row) => row.iid))], [2])
    // Ordinary end modifiers keep working on the derived tables.
    const locked = await db.transaction().execute(async (trx) => await trx.selectFrom('student').select('iid').where('id', '=', 1).modifyEnd(sql`for update skip locked`).execute())
    t.same(locked, [{ iid: 2 }])
  })
})

t.test('an UPDATE, DELETE or INSERT of a tenant table that ends with raw text is refused', async (t) => {
  await reset()
  const before = await othersOf(2)
  await tenancy.runAsInstance('b', async () => {
    await t.rejects(db.updateTable('student').set({ name: 'x' }).where('id', '=', 1).modifyEnd(sql`or true`).execute(), { code: 'TENANCY_UNSUPPORTED_STATEMENT' })
    await t.rejects(db.deleteFrom('student').where('id', '=', 1).modifyEnd(sql`or true`).execute(), { code: 'TENANCY_UNSUPPORTED_STATEMENT' })
    await t.rejects(db.insertInto('tag').values({ id: 1, label: 'stolen' }).modifyEnd(sql`on conflict (id) do update set label = excluded.label`).execute(), { code: 'TENANCY_UNSUPPORTED_STATEMENT' })
    // Tables without the tenant column keep their raw endings.
    const country = db.insertInto('country').values({ code: 'fr', name: 'x' }).modifyEnd(sql`on conflict do nothing`)
    t.equal(country.compile().sql, 'insert into "country" ("code", "name") values ($1, $2) on conflict do nothing')
    await country.execute()
  })
  t.same(await othersOf(2), before, 'no row of another instance changed')
  t.same(await query(url, "select label from tag where id = 1"), [{ label: 'tag 1 of 1' }])
})

t.test('INSERT rows shorter than the column list naming the tenant column are refused', async (t) => {
  await tenancy.runAsInstance('b', async () => {
    t.throws(() => db.insertInto('student').values({ id: 60, name: 'x' }).columns(['id', 'name', 'iid']).compile(), { code: 'TENANCY_MISMATCH' })
  })
})

t.test('a raw statement or CREATE TABLE … AS holding a builder made under another instance is confined again', async (t) => {
  await reset()
  const raw = await tenancy.runAsInstance('a', () => sql<{ iid: number }>`select iid from (${db.selectFrom('student').select('iid')}) x`)
  const copy = await tenancy.runAsInstance('a', () => db.schema.createTable('student_copy').as(db.selectFrom('student').select(['id', 'iid'])))
  t.teardown(() => query(url, 'drop table if exists student_copy'))
  await tenancy.runAsInstance('b', async () => {
    const compiled = raw.compile(db)
    t.equal(compiled.sql, 'select iid from ((select "iid" from "student" where "student"."iid" = $1)) x')
    t.same(compiled.parameters, [2])
    t.same((await raw.execute(db)).rows, [{ iid: 2 }, { iid: 2 }, { iid: 2 }, { iid: 2 }])
    t.equal(copy.compile().sql, 'create table "student_copy" as select "id", "iid" from "student" where "student"."iid" = $1')
    await copy.execute()
  })
  t.same(await query(url, 'select iid, count(*)::int as n from student_copy group by iid'), [{ iid: 2, n: 4 }], 'the copy holds instance 2\'s rows only')
  await tenancy.runAsHost(async () => {
    await t.rejects(raw.execute(db), { code: 'TENANCY_HOST_CONTEXT' })
  })
  await t.rejects(raw.execute(db), { code: 'TENANCY_NO_CONTEXT' })
  // Raw text with values only is handed on as it is.
  const plain = sql`select ${1}::int as n`
  await tenancy.runAsInstance('b', async () => {
    t.equal(plain.compile(db).query, plain.toOperationNode())
  })
})

t.test('a name PostgreSQL cuts to the tenant column is the tenant column', async (t) => {
  const wide = anyDb.withoutPlugins().withPlugin(new InstanceFilterPlugin({ tables: { wide: 'must' }, tenantColumn: WIDE }))
  const longer = WIDE + '_moved'
  // PostgreSQL itself reads the longer name as the tenant column.
  t.same(await query(url, `update wide set ${longer} = 4 where ${WIDE} = 3 returning ${WIDE} as iid`), [{ iid: 4 }])
  await query(url, `update wide set ${WIDE} = 3 where ${WIDE} = 4`)
  await tenancy.runAsInstance('b', async () => {
    const set = wide.updateTable('wide').set(longer, 3)
    t.throws(() => set.compile(), { code: 'TENANCY_MISMATCH' })
    await t.rejects(set.execute(), { code: 'TENANCY_MISMATCH' })
    await t.rejects(wide.updateTable('wide').set({ [longer]: 3 }).execute(), { code: 'TENANCY_MISMATCH' })
    await t.rejects(wide.insertInto('wide').values({ id: 2, [longer]: 3 }).execute(), { code: 'TENANCY_MISMATCH' })
    const keep = wide.updateTable('wide').set(longer, 2).set('note', 'kept')
    t.equal(keep.compile().sql, `update "wide" set "${longer}" = $1, "note" = $2 where "wide"."${WIDE}" = $3`)
    await keep.execute()
  })
  t.same(await query(url, `select ${WIDE} as iid, note from wide order by 1`), [{ iid: 2, note: 'kept' }, { iid: 3, note: 'three' }])
})

t.test('a schema-qualified tenant table with no alias beside a RIGHT or FULL join is refused, not broken', async (t) => {
  await t.rejects(tenancy.runAsInstance('b', () => db.withSchema('public').selectFrom('role as t0').fullJoin('student', 'student.id', 't0.id')
    .select(['t0.id', 'student.name']).execute()), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /"public\.student" as/ })
  await t.rejects(tenancy.runAsInstance('b', () => anyDb.selectFrom('role as t0').rightJoin('public.student', 'public.student.id', 't0.id')
    .select(['t0.id', 'public.student.name']).execute()), { code: 'TENANCY_UNSUPPORTED_STATEMENT' })
  // A subquery builder of the plain db is confined when it is embedded, before
  // the outer withSchema() qualifies its tables and their references.
  const inner = db.selectFrom('role as t1').fullJoin('student', 'student.id', 't1.id').select(['student.id as id'])
  await t.rejects(tenancy.runAsInstance('b', () => db.withSchema('public').selectFrom('role as t0')
    .where('t0.id', 'in', inner).select('t0.id').execute()), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /"public\.student" as/ })
  await t.rejects(tenancy.runAsInstance('b', () => db.withSchema('public').deleteFrom('tag')
    .where('tag.id', 'in', inner).execute()), { code: 'TENANCY_UNSUPPORTED_STATEMENT' })
  const query = db.withSchema('public').selectFrom('role as t0').fullJoin('student as s', 's.id', 't0.id').select(['t0.id', 's.name', 's.iid']).orderBy('s.id')
  t.equal(tenancy.runAsInstance('b', () => query.compile().sql),
    'select "t0"."id", "s"."name", "s"."iid" from (select * from "public"."role" where "public"."role"."iid" = $1) as "t0" full join (select * from "public"."student" where "public"."student"."iid" = $2) as "s" on "s"."id" = "t0"."id" order by "s"."id"')
  const rows = await tenancy.runAsInstance('b', () => query.execute())
  t.same([...new Set(rows.map((row) => row.iid))], [2], 'with an alias it runs, and only instance b\'s students come back')
  t.equal(rows.length, 4, 'b\'s four students, each once')
})

t.test('a raw fragment with a comment, a separator or an unclosed quote or parenthesis cannot carry the predicate away', async (t) => {
  await reset()
  const before = await othersOf(2)
  const bad: Array<[string, () => { execute: () => Promise<unknown> }]> = [
    ['-- in a SET value', () => db.updateTable('student as t0').set('name', sql`'x' --`).where('t0.id', '=', 1)],
    ['-- in a selection', () => db.selectFrom('student').select(sql<string>`now() -- server time`.as('at'))],
    ['/* in WHERE', () => db.selectFrom('student').selectAll().where(sql<boolean>`true /*`)],
    ['unbalanced ) in WHERE', () => db.deleteFrom('student').where(sql<boolean>`true) or (true`)],
    ['; in WHERE', () => db.deleteFrom('student').where(sql<boolean>`true; delete from student`)],
    ['unclosed quote', () => db.selectFrom('student').selectAll().where('name', '=', sql<string>`'x`)],
    ['unclosed dollar quote', () => db.selectFrom('student').selectAll().where('name', '=', sql<string>`$q$x`)],
    ['unclosed ( in a selection', () => db.selectFrom('student').select(sql<string>`coalesce(name`.as('n'))],
  ]
  for (const [label, make] of bad) {
    await t.rejects(tenancy.runAsInstance('b', () => make().execute()), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /raw SQL fragment/ }, label)
  }
  t.same(await othersOf(2), before, 'no other instance\'s row changed')
  t.same(await query(url, 'select count(*)::int as n from student where iid = 2 and name = \'x\''), [{ n: 0 }], 'nor b\'s own')

  const fine = await tenancy.runAsInstance('b', () => db.selectFrom('student')
    .select([sql<string>`'a -- b; (c' || ${'/*'}`.as('text'), sql<string>`E'it\\'s'`.as('escaped'), sql<string>`$q$ -- ) $q$`.as('dollar'), 'iid'])
    .where(sql<boolean>`(name <> ${'--'})`).execute())
  t.equal(fine.length, 4, 'comments, separators and parentheses inside quotes, and parameters, are fine')
  t.same(fine[0], { text: 'a -- b; (c/*', escaped: 'it\'s', dollar: ' -- ) ', iid: 2 })
  t.same((await tenancy.runAsInstance('b', () => db.selectFrom('country').select(sql<string>`name /* a note */`.as('n')).execute())).length, 2,
    'a statement with no tenant table is left as it is')
})

t.test('rare shapes: each confined or refused, with its SQL', async (t) => {
  await reset()
  await tenancy.runAsInstance('b', async () => {
    // A schema statement other than CREATE TABLE … AS names no rows: it passes as it is.
    t.equal(db.schema.createIndex('student_name').on('student').column('name').compile().sql, 'create index "student_name" on "student" ("name")')
    t.throws(() => anyDb.selectFrom('public.nosuch').selectAll().compile(), { code: 'TENANCY_UNKNOWN_TABLE', message: /"public\.nosuch"/ })

    // MERGE into a table that is no tenant table is left as it is.
    const merge = anyDb.mergeInto('country').using('country as o', 'o.code', 'country.code').whenMatched().thenUpdateSet({ name: sql.ref('o.name') })
    t.equal(merge.compile().sql, 'merge into "country" using "country" as "o" on "o"."code" = "country"."code" when matched then update set "name" = "o"."name"')
    t.equal((await merge.executeTakeFirstOrThrow()).numChangedRows, 2n)

    // A lateral cross join has no ON: the predicate becomes the ON of a lateral inner join.
    t.equal(db.selectFrom('course').crossJoinLateral('role').select('course.id').compile().sql,
      'select "course"."id" from "course" inner join lateral "role" on "role"."iid" = $1 where "course"."iid" = $2')
    // updateTable([…]) is a list, which PostgreSQL refuses; each table is confined all the same.
    t.equal(anyDb.updateTable(['student', 'course']).set('name', 'x').compile().sql,
      'update "student", "course" set "name" = $1 where "student"."iid" = $2 and "course"."iid" = $3')
    t.equal(db.updateTable('student').where('id', '=', 1).compile().sql, 'update "student" set  where ("id" = $1) and "student"."iid" = $2', 'an UPDATE with no SET has nothing to check')
    // `set('iid.student.name', …)` is column iid, fields student and name, for PostgreSQL.
    t.throws(() => anyDb.updateTable('student').set('iid.student.name', 3 as never).compile(), { code: 'TENANCY_MISMATCH' })
    t.throws(() => db.insertInto('student').columns(['id', 'name']).expression(sql`values (60, 'x')`).compile(), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /raw SQL/ })

    // Raw text at the end: every branch of a set operation becomes confined derived tables; a raw branch stays as it is.
    const union = db.selectFrom('student').select('id').union(db.selectFrom('course').select('id')).union(sql<{ id: number }>`select 0`).modifyEnd(sql`order by 1`)
    t.equal(union.compile().sql, 'select "id" from (select * from "student" where "student"."iid" = $1) as "student" union select "id" from (select * from "course" where "course"."iid" = $2) as "course" union select 0 order by 1')
    t.same((await union.execute()).map((row) => row.id), [0, 1, 2, 3, 4])

    // Beside a RIGHT join, a qualified subquery of a table that is no tenant table, aliased as the table, stays as it is.
    const right = db.selectFrom(db.withSchema('public').selectFrom('country').selectAll().as('country')).rightJoin('student', 'student.name', 'country.name').select(['student.id', 'student.iid', 'country.code']).orderBy('student.id')
    t.equal(right.compile().sql, 'select "student"."id", "student"."iid", "country"."code" from (select * from "public"."country") as "country" right join (select * from "student" where "student"."iid" = $1) as "student" on "student"."name" = "country"."name" order by "student"."id"')
    t.same(await right.execute(), [1, 2, 3, 4].map((id) => ({ id, iid: 2, code: null })))
  })
})

t.test('INSERT … SELECT: confined once however often it is transformed; the tenant column and the column list are checked', async (t) => {
  await reset()
  const before = await othersOf(2)
  await tenancy.runAsInstance('b', async () => {
    const copy = db.insertInto('student').columns(['id', 'name']).expression(db.selectFrom('course').select((eb) => [sql<number>`${eb.ref('id')} + 10`.as('id'), 'title']))
    // The CTE's builder is confined when it is embedded, then again with the statement.
    const cte = db.with('added', () => copy.returning(['id', 'iid'])).selectFrom('added').selectAll().orderBy('id')
    t.equal(cte.compile().sql, 'with "added" as (insert into "student" ("id", "name", "iid") select "tenancy_source".*, cast($1 as bigint) from (select "id" + 10 as "id", "title" from "course" where "course"."iid" = $2) as "tenancy_source" returning "id", "iid") select * from "added" order by "id"')
    t.same(await cte.execute(), [{ id: 11, iid: 2 }, { id: 12, iid: 2 }, { id: 13, iid: 2 }])
    // The tenant column, last, from anything but the filter's own wrapper is refused.
    t.throws(() => db.insertInto('student').columns(['id', 'name', 'iid']).expression(db.selectFrom('course as c').select(['c.id', 'c.title', 'c.iid'])).compile(), { code: 'TENANCY_MISMATCH' })
    t.throws(() => db.insertInto('student').expression(db.selectFrom('course').select(['id', 'iid', 'title'])).compile(), { code: 'TENANCY_UNSUPPORTED_STATEMENT', message: /column list/ })
  })
  t.same(await othersOf(2), before, 'no other instance\'s row was added')
})

t.test('predicates are shared between queries, and the cache of them is reset past 10,000', async (t) => {
  await tenancy.runAsInstance('b', async () => {
    const predicateOf = (alias: string): unknown => (anyDb.selectFrom(`student as ${alias}`).selectAll().compile().query as { where: { where: unknown } }).where.where
    const first = predicateOf('p0')
    t.equal(predicateOf('p0'), first, 'the same table, alias and instance get the same node')
    for (let i = 1; i <= 10_000; i++) predicateOf(`p${i}`)
    t.not(predicateOf('p0'), first, 'made again after 10,000 others')
    t.equal(anyDb.selectFrom('student as p0').selectAll().compile().sql, 'select * from "student" as "p0" where "p0"."iid" = $1')
  })
})
