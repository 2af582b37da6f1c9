// Jobs benchmark, in one run against one PostgreSQL server: pg-boss through
// the tenancy layer (`tenancy.jobs(boss)`) against bare pg-boss doing the same
// work by hand (the instance id carried in the data and read back).
//   send   BENCH_JOBS jobs from 20 instances, interleaved, BENCH_SENDERS at a
//          time: `jobs.send()` inside `runAsInstance` / `boss.send()` with
//          `{ iid }` in the data
//   work   the same jobs worked off (batchSize 50, 4 local workers, burst while
//          batches are full); each job's handler writes one row with its
//          instance id: from the context / from the data
//   own    the layer's own work per job without pg-boss or a database: the
//          context recorded on send (`runAsInstance` + `wrapJobData`) and the
//          job run in its context (`runWrappedJob`), CPU time per job; a
//          figure that the neighbours of a shared machine disturb far less
// Variants alternate within each round (order rotated); medians are reported.
//
//   npm run build && node dist/bench/jobs.js   # BENCH_JOBS=4000 BENCH_ROUNDS=5 BENCH_SENDERS=16
// Uses DATABASE_URL when set, otherwise starts an embedded PostgreSQL in .data/.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { PgBoss, type Job } from 'pg-boss'
import { createTenancy, type Tenancy } from '../lib/index.js'
import { runWrappedJob, wrapJobData } from '../lib/jobs/job-context.js'
import { basePool, benchServer, median, run, withDatabase } from './bench-database.js'

const JOBS = Number(process.env.BENCH_JOBS ?? 4000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const SENDERS = Number(process.env.BENCH_SENDERS ?? 16)
const INSTANCES = 20
const WORK = { batchSize: 50, localConcurrency: 4, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 }


/** The instance of job `n`: interleaved, so consecutive jobs belong to different instances. */
const instanceOf = (n: number): number => (n * 7) % INSTANCES + 1

interface Variant {
  send (queue: string, n: number): Promise<unknown>
  work (queue: string, done: () => void): Promise<string>
}

/** Jobs per second, and this process's CPU time per job in µs (pg-boss's and the driver's work included). */
interface Measure { rate: number, cpu: number }

async function measure (fn: () => Promise<void>): Promise<Measure> {
  const cpu = process.cpuUsage()
  const start = process.hrtime.bigint()
  await fn()
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  const used = process.cpuUsage(cpu)
  return { rate: JOBS / seconds, cpu: (used.user + used.system) / JOBS }
}

/** Sends JOBS jobs, SENDERS at a time. */
async function sendAll (variant: Variant, queue: string): Promise<Measure> {
  let next = 0
  return await measure(async () => {
    await Promise.all(Array.from({ length: SENDERS }, async () => {
      while (next < JOBS) await variant.send(queue, next++)
    }))
  })
}

/** Works off the queue, until every handler ran and the workers settled their batches. */
async function workAll (boss: PgBoss, variant: Variant, queue: string): Promise<Measure> {
  let count = 0
  let finished!: () => void
  const all = new Promise<void>((resolve) => { finished = resolve })
  return await measure(async () => {
    await variant.work(queue, () => { if (++count === JOBS) finished() })
    await all
    await boss.offWork(queue, { wait: true })
  })
}

async function main (): Promise<void> {
  const server = await benchServer('bench-jobs')
  const url = server.url
  const database = `bench_jobs_${randomBytes(3).toString('hex')}`
  let tenancy: Tenancy | undefined
  let boss: PgBoss | undefined
  let rows: pg.Pool | undefined
  try {
    await run(url, `create database ${database}`)
    const dbUrl = withDatabase(url, database)
    await run(dbUrl, 'create table event (id bigserial primary key, iid int not null, n int not null)')
    tenancy = await createTenancy({
      instances: Array.from({ length: INSTANCES }, (_, i) => ({ name: `i${i + 1}`, id: i + 1 })),
      datasources: { default: dbUrl },
      tables: { event: 'must' },
    })
    boss = new PgBoss({ connectionString: dbUrl, schedule: false, supervise: false, max: 20 })
    boss.on('error', (err) => { console.error(err) })
    await boss.start()
    // Both variants' handlers write through the same pool, so only the job layer differs.
    rows = basePool({ connectionString: dbUrl, max: 8 })
    const insert = 'insert into event (iid, n) values ($1, $2)'
    const t = tenancy
    const b = boss
    const pool = rows
    const jobs = t.jobs(b)

    const bare: Variant = {
      send: async (queue, n) => await b.send(queue, { iid: instanceOf(n), n }),
      work: async (queue, done) => await b.work<{ iid: number, n: number }>(queue, WORK, async (batch: Job<{ iid: number, n: number }>[]) => {
        for (const job of batch) {
          await pool.query(insert, [job.data.iid, job.data.n])
          done()
        }
      }),
    }
    const layer: Variant = {
      send: async (queue, n) => await t.runAsInstance(instanceOf(n), () => jobs.send(queue, { n })),
      work: async (queue, done) => await jobs.work<{ n: number }>(queue, WORK, async (batch) => {
        for (const job of batch) {
          await pool.query(insert, [t.currentInstance()!.id, job.data.n])
          done()
        }
      }),
    }

    const results: Record<string, { send: Measure[], work: Measure[] }> = { bare: { send: [], work: [] }, layer: { send: [], work: [] } }
    const variants: Array<[string, Variant]> = [['bare', bare], ['layer', layer]]
    // One round to warm up (JIT, connections, pg-boss's queue cache), not counted.
    for (let round = 0; round <= ROUNDS; round++) {
      const order = round % 2 === 0 ? variants : [...variants].reverse()
      for (const [name, variant] of order) {
        const queue = `${name}_${round}`
        await b.createQueue(queue)
        const send = await sendAll(variant, queue)
        const work = await workAll(b, variant, queue)
        await b.deleteQueue(queue)
        await pool.query('truncate event')
        if (round > 0) {
          results[name]!.send.push(send)
          results[name]!.work.push(work)
        }
      }
    }

    const report = (what: 'send' | 'work'): void => {
      const rate = (name: string): number => median(results[name]![what].map((m) => m.rate))
      const cpu = (name: string): number => median(results[name]![what].map((m) => m.cpu))
      const rounds = (name: string): string => results[name]![what].map((m) => m.rate.toFixed(0)).join(', ')
      console.log(`${what}, bare pg-boss        ${rate('bare').toFixed(0).padStart(7)} jobs/s  ${cpu('bare').toFixed(1).padStart(6)} µs CPU/job   (rounds: ${rounds('bare')})`)
      console.log(`${what}, through the layer   ${rate('layer').toFixed(0).padStart(7)} jobs/s  ${cpu('layer').toFixed(1).padStart(6)} µs CPU/job   (rounds: ${rounds('layer')})`)
      console.log(`${what}, layer / bare        ${(rate('layer') / rate('bare')).toFixed(3).padStart(7)} jobs/s  ${(cpu('layer') - cpu('bare') >= 0 ? '+' : '') + (cpu('layer') - cpu('bare')).toFixed(1)} µs CPU/job`)
    }
    console.log(`# Node.js ${process.version}, PostgreSQL ${server ? 'embedded' : 'from DATABASE_URL'}, ${new Date().toISOString()}`)
    console.log(`# ${JOBS} jobs from ${INSTANCES} instances, interleaved, ${ROUNDS} rounds (+1 warm-up), medians; send ${SENDERS} at a time; work batchSize ${WORK.batchSize}, localConcurrency ${WORK.localConcurrency}`)
    report('send')
    report('work')

    const OWN = 200_000
    const own = async (): Promise<{ send: number, run: number }> => {
      const payloads: object[] = new Array(OWN)
      let cpu = process.cpuUsage()
      for (let n = 0; n < OWN; n++) payloads[n] = t.runAsInstance(instanceOf(n), () => wrapJobData(t, { n }))
      const send = process.cpuUsage(cpu)
      let sum = 0
      cpu = process.cpuUsage()
      for (let n = 0; n < OWN; n++) sum += await runWrappedJob(t, payloads[n], (data: { n: number }) => data.n + t.currentInstance()!.id)
      const run = process.cpuUsage(cpu)
      if (sum === 0) throw new Error('nothing ran')
      return { send: (send.user + send.system) / OWN, run: (run.user + run.system) / OWN }
    }
    await own()
    const owns = [await own(), await own(), await own()]
    const ownSend = median(owns.map((o) => o.send))
    const ownRun = median(owns.map((o) => o.run))
    const bareCpu = (what: 'send' | 'work'): number => median(results.bare![what].map((m) => m.cpu))
    console.log(`own, send (context + wrap)   ${ownSend.toFixed(2).padStart(7)} µs CPU/job   ${(100 * ownSend / bareCpu('send')).toFixed(1)} % of bare send's CPU/job`)
    console.log(`own, run (unwrap + context)  ${ownRun.toFixed(2).padStart(7)} µs CPU/job   ${(100 * ownRun / bareCpu('work')).toFixed(1)} % of bare work's CPU/job`)
  } finally {
    await boss?.stop({ graceful: false }).catch(() => {})
    await rows?.end().catch(() => {})
    await tenancy?.close().catch(() => {})
    await run(url, `drop database if exists ${database} with (force)`).catch(() => {})
    await server.stop()
  }
}

await main()
