import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { createTenancy, runAsInstance, runAsHost, unscoped, currentInstance, TenancyError, currentContext, NoTenancyError } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'
import { createTenantSchema, type TenantDB } from './helpers/tenant-schema.js'

const url = await createDatabase(t, 'context')
await createTenantSchema(url)
const instances = Array.from({ length: 20 }, (_, i) => ({ name: i === 0 ? '' : `i${i}`, id: i + 1 }))
instances.push({ name: 'off', id: 99, disabled: true } as any)
const tenancy = await createTenancy({ instances, datasources: { default: url } })
t.teardown(() => tenancy.close())

t.test('runAsInstance by name and by id', async (t) => {
  t.equal(currentInstance(), undefined, 'no context outside')
  await tenancy.runAsInstance('i3', async () => {
    t.equal(currentInstance()?.id, 4)
    t.equal(currentContext()?.kind, 'instance')
    t.equal(currentContext()?.tenancy, tenancy, 'the frame names its tenancy')
    await runAsInstance(5, async () => { t.equal(currentInstance()?.name, 'i4', 'a named export inside a frame acts on its tenancy') })
  })
  t.equal(currentInstance(), undefined)
})

t.test('named exports outside every context throw TENANCY_NO_TENANCY instead of guessing a tenancy', async (t) => {
  t.throws(() => runAsInstance('i1', () => 1), { code: 'TENANCY_NO_TENANCY', statusCode: 500 })
  t.throws(() => runAsHost(() => 1), { code: 'TENANCY_NO_TENANCY' })
  t.throws(() => unscoped(() => 1), { code: 'TENANCY_NO_TENANCY' })
  t.throws(() => runAsInstance('i1', () => 1), NoTenancyError)
})

t.test('nesting restores the outer instance after return and after throw', async (t) => {
  await tenancy.runAsInstance('i1', async () => {
    await runAsInstance('i2', async () => {
      await runAsHost(async () => {
        t.equal(currentInstance(), undefined)
        t.equal(currentContext()?.kind, 'host')
      })
      t.equal(currentInstance()?.name, 'i2')
      await t.rejects(runAsInstance('i3', async () => { await sleep(1); throw new Error('boom') }), { message: 'boom' })
      t.equal(currentInstance()?.name, 'i2', 'restored after an async throw')
      t.throws(() => runAsInstance('i4', () => { throw new Error('sync') }), { message: 'sync' })
      t.equal(currentInstance()?.name, 'i2', 'restored after a sync throw')
    })
    t.equal(currentInstance()?.name, 'i1')
    await unscoped(async () => {
      t.equal(currentContext()?.kind, 'unscoped')
      t.equal(currentInstance()?.name, 'i1', 'unscoped keeps the instance for routing')
    })
  })
})

t.test('unknown and disabled instances are refused', async (t) => {
  t.throws(() => tenancy.runAsInstance('nope', () => {}), { code: 'TENANCY_UNKNOWN_INSTANCE', statusCode: 404 })
  t.throws(() => tenancy.runAsInstance(12345, () => {}), { code: 'TENANCY_UNKNOWN_INSTANCE' })
  t.throws(() => tenancy.runAsInstance('off', () => {}), { code: 'TENANCY_INSTANCE_DISABLED', statusCode: 403 })
  const caught = ((): unknown => { try { tenancy.runAsInstance('off', () => {}) } catch (err) { return err } })()
  t.ok(caught instanceof TenancyError, 'a TenancyError')
  t.throws(() => tenancy.runAsInstance('1' as never, () => {}), { code: 'TENANCY_UNKNOWN_INSTANCE' }, 'a numeric string is a name, not an id')
})

t.test('thousands of interleaved contexts never bleed', async (t) => {
  let mismatches = 0
  let checks = 0
  const names = instances.filter((i) => !('disabled' in i)).map((i) => i.name)
  const job = async (n: number): Promise<void> => {
    const name = names[n % names.length]!
    await tenancy.runAsInstance(name, async () => {
      for (let step = 0; step < 5; step++) {
        if (step % 2 === 0) await sleep(n % 3)
        else await new Promise<void>((resolve) => setImmediate(resolve))
        checks++
        if (currentInstance()?.name !== name) mismatches++
        if (step === 2) {
          const inner = names[(n * 7 + 3) % names.length]!
          await runAsInstance(inner, async () => {
            await Promise.resolve()
            checks++
            if (currentInstance()?.name !== inner) mismatches++
          })
        }
      }
    })
  }
  await Promise.all(Array.from({ length: 5000 }, (_, n) => job(n)))
  t.equal(checks, 5000 * 6)
  t.equal(mismatches, 0)
})

t.test('two tenancies in one process never act on each other\'s frames', async (t) => {
  const a = await createTenancy({ instances: [{ name: 'x', id: 1 }, { name: 'y', id: 2 }], datasources: { default: url } })
  const b = await createTenancy({ instances: [{ name: 'x', id: 3 }, { name: 'z', id: 2 }], datasources: { default: url } })
  t.teardown(async () => { await a.close(); await b.close() })
  const dbA = a.kysely<TenantDB>()
  const dbB = b.kysely<TenantDB>()
  const iids = async (db: typeof dbA): Promise<number[]> => [...new Set((await db.selectFrom('student').select('iid').execute()).map((row) => row.iid))]

  await t.rejects(a.unscoped(() => iids(dbB)), { code: 'TENANCY_NO_CONTEXT' }, "A's unscoped() does not turn off B's filter")
  t.same(await a.unscoped(() => iids(dbA)), [1, 2, 3], "A's unscoped() turns off A's filter")
  await t.rejects(a.runAsInstance('y', () => iids(dbB)), { code: 'TENANCY_NO_CONTEXT' }, 'B does not filter by the id of A\'s frame')
  t.same(await b.runAsInstance('x', () => a.runAsInstance('y', () => iids(dbB))), [3], "B keeps its own frame inside A's")
  t.same(await b.runAsInstance('x', () => a.runAsInstance('y', () => iids(dbA))), [2], "A uses its own frame inside B's")
  t.same(await a.runAsInstance('x', () => b.unscoped(() => iids(dbA))), [1], "B's unscoped() inside A's frame leaves A confined")
  t.same(await a.runAsInstance('y', () => b.runAsInstance('z', () => runAsInstance('x', () => [a.currentInstance()?.id, b.currentInstance()?.id]))),
    [2, 3], 'a named export acts on the innermost frame\'s tenancy (B), and A still sees its own frame')
  await t.rejects(b.runAsInstance('x', () => dbA.insertInto('student').values({ id: 50, name: 'stray', course_id: null }).execute()),
    { code: 'TENANCY_NO_CONTEXT' }, 'a write through A inside only B\'s frame fails closed')
  t.same(await query(url, 'select count(*)::int as n from student where id = 50'), [{ n: 0 }], 'and wrote nothing')

  await t.rejects(a.runAsInstance('x', () => dbA.transaction().execute(async (trx) => {
    await trx.selectFrom('student').select('id').execute()
    await a.runAsInstance('y', () => trx.selectFrom('student').select('id').execute())
  })), { code: 'TENANCY_MISMATCH' }, "A's transaction guard refuses A's other instance")
  const rows = await a.runAsInstance('x', () => dbA.transaction().execute(async (trx) =>
    await b.runAsInstance('z', () => trx.selectFrom('student').select('iid').execute())))
  t.same([...new Set(rows.map((row) => row.iid))], [1], "B's frame inside A's transaction is no switch for A's guard, and A stays confined to x")
})
