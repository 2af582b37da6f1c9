import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { createTenancy, runAsInstance, runAsHost, unscoped, currentInstance, TenancyError, currentContext } from '../lib/index.js'
import { serverUrl } from './helpers/database.js'

const instances = Array.from({ length: 20 }, (_, i) => ({ name: i === 0 ? '' : `i${i}`, id: i + 1 }))
instances.push({ name: 'off', id: 99, disabled: true } as any)
const tenancy = await createTenancy({ instances, datasources: { default: serverUrl() } })
t.teardown(() => tenancy.close())

t.test('runAsInstance by name and by id', async (t) => {
  t.equal(currentInstance(), undefined, 'no context outside')
  await tenancy.runAsInstance('i3', async () => {
    t.equal(currentInstance()?.id, 4)
    t.equal(currentContext()?.kind, 'instance')
  })
  await runAsInstance(5, async () => { t.equal(currentInstance()?.name, 'i4') })
  t.equal(currentInstance(), undefined)
})

t.test('nesting restores the outer instance after return and after throw', async (t) => {
  await runAsInstance('i1', async () => {
    await runAsInstance('i2', async () => {
      await runAsHost(async () => {
        t.equal(currentInstance(), undefined)
        t.equal(currentContext()?.kind, 'host')
      })
      t.equal(currentInstance()?.name, 'i2')
      await t.rejects(runAsInstance('i3', async () => { await sleep(1); throw new Error('boom') }), { message: 'boom' })
      t.equal(currentInstance()?.name, 'i2', 'restored after an async throw')
      t.throws(() => runAsInstance('i4', () => { throw new Error('sync') }))
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
  t.throws(() => runAsInstance('nope', () => {}), { code: 'TENANCY_UNKNOWN_INSTANCE', statusCode: 404 })
  t.throws(() => runAsInstance(12345, () => {}), { code: 'TENANCY_UNKNOWN_INSTANCE' })
  t.throws(() => runAsInstance('off', () => {}), { code: 'TENANCY_INSTANCE_DISABLED', statusCode: 403 })
  try { runAsInstance('nope', () => {}) } catch (err) { t.ok(err instanceof TenancyError) }
})

t.test('thousands of interleaved contexts never bleed', async (t) => {
  let mismatches = 0
  let checks = 0
  const names = instances.filter((i) => !('disabled' in i)).map((i) => i.name)
  const job = async (n: number): Promise<void> => {
    const name = names[n % names.length]!
    await runAsInstance(name, async () => {
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
