// SET through raw text cannot add an assignment of the tenant column: a raw
// target or value whose SQL goes on past its own assignment is refused.
import t from 'tap'
import { sql, type Kysely } from 'kysely'
import { createTenancy } from '../lib/index.js'
import { hasListComma, rawFragmentProblem } from '../lib/filter/raw-fragment.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, schemaInstances, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'tenant_filter_set_lists')
await createTenantSchema(url)
const tenancy = await createTenancy({ instances: schemaInstances, datasources: { default: url } })
t.teardown(() => tenancy.close())
const anyDb = tenancy.kysely<TenantDB>() as unknown as Kysely<any>

t.test('a raw SET target or value that goes on with another assignment is refused', async (t) => {
  const before = await query(url, 'select * from student order by iid, id')
  await tenancy.runAsInstance('b', async () => {
    const moves: Array<[string, () => { execute: () => Promise<unknown> }]> = [
      ["set(sql`name = 'moved', iid`, 4)", () => anyDb.updateTable('student').set(sql`name = 'moved', iid`, 4).where('id', '=', 1)],
      ["set(sql`course_id[1], iid`, 4)", () => anyDb.updateTable('student').set(sql`course_id[1], iid`, 4).where('id', '=', 1)],
      ["set({ name: sql`'moved', iid = 4` })", () => anyDb.updateTable('student').set({ name: sql`'moved', iid = 4` }).where('id', '=', 1)],
      ["set({ name: eb(sql`'a', iid = 4`, '||', 'b') })", () => anyDb.updateTable('student').set({ name: (eb: any) => eb(sql`'a', iid = 4`, '||', 'b') }).where('id', '=', 1)],
      // A $ inside an identifier starts no dollar quote, so it cannot hide the comma.
      ['set({ name: sql`x$$b$$, iid = 4, y$$b$$` })', () => anyDb.updateTable('student').set({ name: sql`x$$b$$, iid = 4, y$$b$$` }).where('id', '=', 1)],
      ["onConflict … doUpdateSet({ label: sql`'x', iid = 4` })", () => anyDb.insertInto('tag').values({ id: 4, label: 'x' }).onConflict((oc: any) => oc.column('id').doUpdateSet({ label: sql`'x', iid = 4` }))],
    ]
    for (const [name, build] of moves) {
      await t.rejects(build().execute(), { code: /^TENANCY_(MISMATCH|UNSUPPORTED_STATEMENT)$/ }, name)
    }
    // Commas inside parentheses or quotes are part of the value.
    const kept = await anyDb.updateTable('student').set({ name: sql`concat('a, b', 'c')` }).where('id', '=', 1).returning(['iid', 'name']).execute()
    t.same(kept, [{ iid: 2, name: 'a, bc' }])
  })
  const after = await query(url, 'select * from student order by iid, id')
  t.same(after.filter((row: any) => row.iid !== 2), before.filter((row: any) => row.iid !== 2), 'no row moved into or out of another instance')
})

t.test('a $ inside an identifier hides no comment or comma from the fragment scan', async (t) => {
  t.equal(rawFragmentProblem(['a$$b$$ -- $b$$']), 'a -- comment', 'PostgreSQL reads a$$b$$ as one identifier, then the comment')
  t.equal(rawFragmentProblem(['é$$b$$ -- $b$$']), 'a -- comment', 'a non-ASCII letter goes on an identifier too')
  t.equal(rawFragmentProblem(['$b$ -- $b$']), undefined, 'a real dollar quote still holds its text')
  t.equal(hasListComma('x$$b$$, "iid" = 4, y$$b$$'), true)
  t.equal(hasListComma("$b$, iid = 4$b$ || 'x'"), false, 'inside a dollar quote a comma is text')
  t.equal(hasListComma('"a,b" || \'c, d\' || f(1, 2) || g[1]'), false)
  t.equal(hasListComma("E'it\\'s', iid"), true, 'an E string ends where PostgreSQL ends it')
  await tenancy.runAsInstance('b', async () => {
    await t.rejects(anyDb.selectFrom('student').selectAll().where(sql<boolean>`id = 1 or a$$b$$ is null -- $b$$`).execute(), { code: /^TENANCY_/ },
      'a comment after such an identifier is refused before it can cut the predicate off')
  })
})
