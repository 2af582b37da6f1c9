// What the same client code costs right after this thread wakes up, against a
// tight loop: the compile of the rewrite benchmarks' mix (bench/rewrite.ts),
// hand-written and through the tenant filter, with no server and no socket.
// Three pauses before each pass: none (the baseline, a tight loop), a turn of
// the event loop that does not sleep (setImmediate), and a sleep of the thread
// (setTimeout(0): about 1 ms blocked, as a client waiting for its reply is).
// Each pass compiles the six shapes twice, timed apart: the first compile
// after the pause, and the one straight after it. Rounds alternate the pauses
// and the two sets; medians of the rounds.
//   npm run bench:wake-up
import os from 'node:os'
import { DummyDriver, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler } from 'kysely'
import { createTenancy, InstanceFilterPlugin } from '../lib/index.js'
import { courseStudentQueries, median, type CourseStudentDB } from './bench-database.js'

const ID = 2
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const PASSES = Number(process.env.BENCH_PASSES ?? 3000)
const tables = { student: 'must', course: 'must' } as const

// Only compiled: nothing is sent, so nothing needs a server.
const db = new Kysely<CourseStudentDB>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (kysely) => new PostgresIntrospector(kysely),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
})
// The filter reads the instance from a tenancy's context; this one never connects.
const tenancy = await createTenancy({ instances: [{ name: 'b', id: ID }], datasources: { default: 'postgres://nobody@127.0.0.1:9/none' }, tables, doctor: false })
const sets = { hand: courseStudentQueries(db, true, ID), plugin: courseStudentQueries(db.withPlugin(new InstanceFilterPlugin({ tables })), false, ID) }
const pauses = {
  none: async (): Promise<void> => {},
  turn: async (): Promise<void> => { await new Promise((resolve) => setImmediate(resolve)) },
  sleep: async (): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, 0)) },
}
type SetName = keyof typeof sets
type PauseName = keyof typeof pauses

/** µs per statement: the first compile of the mix after each pause, and the one right after it. */
async function measure (set: SetName, pause: PauseName): Promise<{ first: number, next: number }> {
  const queries = sets[set]
  let first = 0
  let next = 0
  await tenancy.runAsInstance(ID, async () => {
    for (let pass = 0; pass < PASSES; pass++) {
      await pauses[pause]()
      let start = performance.now()
      for (const query of queries) query().compile()
      first += performance.now() - start
      start = performance.now()
      for (const query of queries) query().compile()
      next += performance.now() - start
    }
  })
  const statements = PASSES * queries.length
  return { first: first * 1000 / statements, next: next * 1000 / statements }
}

const names = { set: Object.keys(sets) as SetName[], pause: Object.keys(pauses) as PauseName[] }
const samples = Object.fromEntries(names.pause.flatMap((pause) => names.set.map((set) => [`${pause} ${set}`, { first: [] as number[], next: [] as number[] }])))
for (const pause of names.pause) for (const set of names.set) await measure(set, pause) // warm-up: code compiled by V8
for (let round = 0; round < ROUNDS; round++) {
  // Rotated, so no pause always follows the same one.
  for (let k = 0; k < names.pause.length; k++) {
    const pause = names.pause[(round + k) % names.pause.length]!
    for (const set of names.set) {
      const run = await measure(set, pause)
      samples[`${pause} ${set}`]!.first.push(run.first)
      samples[`${pause} ${set}`]!.next.push(run.next)
    }
  }
}
await tenancy.close()

const at = (pause: PauseName, set: SetName, which: 'first' | 'next'): number => median(samples[`${pause} ${set}`]![which])
console.log(`# Wake-up benchmark — Node ${process.version}, ${process.platform}/${process.arch}, ${os.cpus()[0]?.model ?? 'cpu'} × ${os.cpus().length}, load ${os.loadavg()[0]!.toFixed(2)}`)
console.log(`compile of the rewrite mix (6 shapes), ${PASSES} passes after each pause, ${ROUNDS} rotated rounds; wall µs per statement, medians; × the tight loop`)
const labels: Record<PauseName, string> = { none: 'no pause (tight loop)', turn: 'after a turn, no sleep', sleep: 'after a sleep (~1 ms)' }
for (const pause of names.pause) {
  const cell = (set: SetName, which: 'first' | 'next'): string => `${at(pause, set, which).toFixed(2)} (${(at(pause, set, which) / at('none', set, which)).toFixed(2)}×)`
  const extra = (which: 'first' | 'next'): string => (at(pause, 'plugin', which) - at(pause, 'hand', which)).toFixed(2)
  console.log(`  ${labels[pause].padEnd(24)} first: hand ${cell('hand', 'first')}, plugin ${cell('plugin', 'first')}, filter +${extra('first')}; ` +
    `next: hand ${cell('hand', 'next')}, plugin ${cell('plugin', 'next')}, filter +${extra('next')}`)
}
