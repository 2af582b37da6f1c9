// The PostgreSQL a benchmark runs on: DATABASE_URL, or an embedded server
// started for the run (data in .data/, removed afterwards); the fleet of
// isolated and shared item databases that the pool benchmarks read; median.
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { rm } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { sql, type Compilable, type Kysely } from 'kysely'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

export interface BenchServer {
  readonly url: string
  /** Stops the embedded server and removes its data; nothing for DATABASE_URL. */
  stop (): Promise<void>
}

/** DATABASE_URL, or an embedded PostgreSQL whose data folder is named after `name`. */
export async function benchServer (name: string): Promise<BenchServer> {
  const url = process.env.DATABASE_URL
  if (url) return { url, stop: async () => {} }
  const { startEmbeddedPostgres } = await import(pathToFileURL(path.join(root, 'scripts', 'embedded-postgres.js')).href) as {
    startEmbeddedPostgres (o: { dir: string }): Promise<{ url: string, stop (): Promise<void>, dir: string }>
  }
  const server = await startEmbeddedPostgres({ dir: path.join(root, '.data', `${name}-${process.pid}`) })
  return {
    url: server.url,
    stop: async () => {
      await server.stop()
      await rm(server.dir, { recursive: true, force: true })
    },
  }
}

/**
 * A plain pg pool, for a baseline. pg-pool's `end()` resolves before its idle
 * clients' sockets close, so a server stopped right after can end one of them
 * with "terminating connection due to administrator command", an `error` on
 * the pool that would crash the run after its results were printed. Once the
 * pool is ending that is expected; before, it still fails the run.
 */
export function basePool (config: pg.PoolConfig): pg.Pool {
  const pool = new pg.Pool(config)
  pool.on('error', (err) => { if (!pool.ending) throw err })
  return pool
}

/** `url` with its database replaced by `database`. */
export function withDatabase (url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = '/' + database
  return parsed.toString()
}

/** Runs `text` on a connection of its own. */
export async function run (url: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try { await client.query(text) } finally { await client.end() }
}

/**
 * The tables of the rewrite benchmarks, in `schema`: 50 instances of 20
 * courses and 200 students, analyzed. One text, so that bench/rewrite.ts and
 * bench/rls-planning.ts measure the same rows.
 */
export function courseStudentTables (schema = 'public'): string {
  return `create table ${schema}.course (id int not null, iid int not null, title text not null, primary key (iid, id));
    create table ${schema}.student (id int not null, iid int not null, name text not null, course_id int, primary key (iid, id));
    insert into ${schema}.course select c, i, 'course ' || c from generate_series(1, 20) c, generate_series(1, 50) i;
    insert into ${schema}.student select s, i, 'student ' || s, s % 20 + 1 from generate_series(1, 200) s, generate_series(1, 50) i;
    analyze ${schema}.course; analyze ${schema}.student;`
}

/** The tables of {@link courseStudentTables}, for Kysely. */
export interface CourseStudentDB {
  student: { id: number, iid: number, name: string, course_id: number | null }
  course: { id: number, iid: number, title: string }
}

// Writes spread over many rows, so that a run measures the queries rather
// than callers queueing on one row's lock.
let counter = 0
const next = (n: number): number => (counter = (counter + 7) % n) + 1

/**
 * The rewrite benchmarks' mix on {@link courseStudentTables}: point lookups, a
 * join, a subquery, an aggregate, an update, an upsert. `byHand`: each with
 * `iid = id` written in, for a Kysely without the filter.
 */
export function courseStudentQueries (db: Kysely<CourseStudentDB>, byHand: boolean, id: number): Array<() => Compilable & { execute: () => Promise<unknown> }> {
  const own = <Q extends { where: (...args: any[]) => Q }>(q: Q, ref: string): Q => byHand ? q.where(ref as never, '=', id as never) : q
  return [
    () => own(db.selectFrom('student').selectAll().where('id', '=', 17), 'student.iid'),
    () => own(db.selectFrom('student as s').innerJoin('course as c', (j) => byHand ? j.onRef('c.id', '=', 's.course_id').on('c.iid', '=', id) : j.onRef('c.id', '=', 's.course_id'))
      .select(['s.id', 's.name', 'c.title']).where('s.id', '<', 10), 's.iid'),
    () => own(db.selectFrom('course').select('title').where('id', 'in', own(db.selectFrom('student').select('course_id').where('id', '<', 5), 'student.iid')), 'course.iid'),
    () => own(db.selectFrom('student').select(({ fn }) => ['course_id', fn.countAll().as('n')]).groupBy('course_id'), 'student.iid'),
    () => own(db.updateTable('student').set({ name: sql`name` }).where('id', '=', next(200)), 'student.iid'),
    () => { const course = next(20); return db.insertInto('course').values(byHand ? { id: course, iid: id, title: `course ${course}` } : { id: course, title: `course ${course}` } as never)
      .onConflict((oc) => byHand ? oc.columns(['iid', 'id']).doUpdateSet({ title: `course ${course}` }).where('course.iid', '=', id) : oc.columns(['iid', 'id']).doUpdateSet({ title: `course ${course}` })) },
  ]
}

/** The middle of `values` (the upper middle of an even count). */
export function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

export type Distribution = 'zipf' | 'uniform'

/** A seeded generator of indexes below `n`: Zipf with s = 1 (index 0 the most frequent), or uniform. */
export function picker (distribution: Distribution, n: number, seed: number): () => number {
  let state = seed
  const random = (): number => { state = (state * 1103515245 + 12345) % 2147483648; return state / 2147483648 }
  if (distribution === 'uniform') return () => Math.floor(random() * n)
  const cumulative: number[] = []
  let sum = 0
  for (let k = 1; k <= n; k++) { sum += 1 / k; cumulative.push(sum) }
  return () => {
    const target = random() * sum
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (cumulative[mid]! < target) lo = mid + 1
      else hi = mid
    }
    return lo
  }
}

/** The databases of {@link createItemFleet} and the instances over them. */
export interface ItemFleet {
  /** The isolated databases, `<label>_0` … `<label>_<n-1>`. */
  readonly databases: string[]
  /** The shared database: every instance's rows in one `item` table. */
  readonly sharedUrl: string
  /** Instance `t<i>`, id `1000 + i`, has its rows in database i. */
  readonly names: string[]
  readonly ids: number[]
  /** `default` (the shared database) and `d<i>` for database i. */
  readonly datasources: Record<string, string>
  /** The host instance and `t<i>` isolated on `d<i>`. */
  readonly isolatedInstances: Array<{ name: string, id: number, isolate?: true, isolateClient?: string }>
  /** The host instance and `t<i>` as shared instances of `default`. */
  readonly sharedInstances: Array<{ name: string, id: number }>
  /** Drops every database of the fleet. */
  drop (): Promise<void>
}

/**
 * `n` isolated databases, each a copy of one template with a table
 * `item (id, iid, v)` of ten rows of its instance, and one shared database
 * with the same rows of all `n` instances: the same reads can then run on
 * isolated and on shared instances.
 */
export async function createItemFleet (url: string, label: string, n: number): Promise<ItemFleet> {
  const prefix = `${label}_${randomBytes(3).toString('hex')}`
  const databases = Array.from({ length: n }, (_, i) => `${prefix}_${i}`)
  const all = [...databases, `${prefix}_tpl`, `${prefix}_shared`]
  const drop = async (): Promise<void> => {
    for (const name of all) await run(url, `drop database if exists ${name} with (force)`).catch(() => {})
  }
  const table = 'create table item (id serial primary key, iid int not null, v int not null)'
  const sharedUrl = withDatabase(url, `${prefix}_shared`)
  try {
    await run(url, `create database ${prefix}_tpl`)
    await run(withDatabase(url, `${prefix}_tpl`), `${table}; create index on item (iid, v); insert into item (iid, v) select 0, n from generate_series(1, 10) n`)
    for (const name of databases) await run(url, `create database ${name} template ${prefix}_tpl`)
    for (let i = 0; i < n; i++) await run(withDatabase(url, databases[i]!), `update item set iid = ${1000 + i}`)
    await run(url, `create database ${prefix}_shared`)
    await run(sharedUrl, `${table}; insert into item (iid, v) select 1000 + i, n from generate_series(0, ${n - 1}) i, generate_series(1, 10) n; create index on item (iid, v)`)
  } catch (err) {
    await drop()
    throw err
  }
  const names = databases.map((_, i) => `t${i}`)
  const ids = databases.map((_, i) => 1000 + i)
  const datasources: Record<string, string> = { default: sharedUrl }
  databases.forEach((name, i) => { datasources[`d${i}`] = withDatabase(url, name) })
  return {
    databases,
    sharedUrl,
    names,
    ids,
    datasources,
    isolatedInstances: [{ name: '', id: 1 }, ...names.map((name, i) => ({ name, id: ids[i]!, isolate: true as const, isolateClient: `d${i}` }))],
    sharedInstances: [{ name: '', id: 1 }, ...names.map((name, i) => ({ name, id: ids[i]! }))],
    drop,
  }
}
