// The start-up run of the doctor: createTenancy's doctor option.
import t from 'tap'
import { createTenancy, doctor } from '../lib/index.js'
import { createDatabase, query } from './helpers/database.js'

const url = await createDatabase(t, 'doctor')
await query(url, 'create table student (id serial primary key, iid integer not null, code text); create unique index student_code on student (code)')
const options = { instances: [{ name: '', id: 1 }, { name: 'acme', id: 2, schema: 'tenant_acme_missing' }], datasources: { default: url }, tables: { student: 'must' as const } }

t.test("doctor: 'throw' refuses a broken set-up with every finding", async (t) => {
  const err = await createTenancy({ ...options, doctor: 'throw' }).then(() => undefined, (e: unknown) => e) as { code?: string, message?: string, findings?: Array<{ code: string }> }
  t.equal(err?.code, 'TENANCY_DOCTOR_FINDINGS')
  t.same(err.findings?.map((finding) => finding.code).sort(), ['schema-missing', 'tenant-column-not-indexed', 'unique-without-tenant-column'])
  t.match(err.message, /"tenant_acme_missing"/)
})

t.test("doctor: 'warn' (the default) emits each finding once per process; false checks nothing", async (t) => {
  const warnings: string[] = []
  const onWarning = (warning: Error & { code?: string }): void => { if (warning.name === 'TenancyDoctorWarning') warnings.push(warning.code!) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const first = await createTenancy(options)
  const second = await createTenancy(options)
  await new Promise((resolve) => setImmediate(resolve))
  t.same(warnings.sort(), ['schema-missing', 'tenant-column-not-indexed', 'unique-without-tenant-column'], 'once, though two tenancies found them')
  t.equal((await doctor(second)).length, 3, 'the function reports them every time')
  await first.close()
  await second.close()
  const quiet = await createTenancy({ ...options, doctor: false })
  await quiet.close()
  await t.rejects(createTenancy({ ...options, doctor: 'loud' as never }), { code: 'TENANCY_INVALID_OPTIONS' })
})

t.test('a correct set-up has no findings', async (t) => {
  await query(url, 'drop index student_code; create unique index student_code on student (iid, code)')
  const tenancy = await createTenancy({ ...options, instances: [{ name: '', id: 1 }], doctor: 'throw' })
  t.same(await doctor(tenancy), [])
  await tenancy.close()
})
