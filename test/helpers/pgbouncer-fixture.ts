import { randomBytes } from 'node:crypto'
import { startPgBouncer, type PgBouncer, type PgBouncerLogin } from '../../scripts/pgbouncer.js'
import { adminQuery, createDatabase, query, serverUrl } from './database.js'
import { createTenantSchema } from './tenant-schema.js'
import { rowLevelSecurityStatements } from '../../lib/index.js'

interface Teardown { teardown (fn: () => unknown): void }

/** The places the PgBouncer tests read from, each with rows that say where they are. */
export interface PgBouncerFixture {
  /** The shared database (tenant tables of instances 1–3, under row-level security policies), direct. */
  url: string
  database: string
  /** Two databases of isolated instances, direct; each has `student` rows of iid 1000 and 1001, named after the database. */
  isolated: Array<{ url: string, database: string }>
  /** Schemas of the shared database, each with `student` rows of iid 11 and 12 named after the schema. */
  schemas: string[]
  /** A role that may use only the last schema. */
  schemaRole: string
  /** An ordinary login (no superuser, no BYPASSRLS) for row-level security. */
  app: PgBouncerLogin
}

const suffix = randomBytes(4).toString('hex')

/**
 * The databases, schemas and roles of the PgBouncer tests, made directly on
 * the test server and dropped when `t` ends. Keys overlap across instances on
 * purpose: every place has students 1–4 of the same iids.
 */
export async function pgbouncerFixture (t: Teardown, label: string): Promise<PgBouncerFixture> {
  const url = await createDatabase(t, label)
  await createTenantSchema(url)
  const app = { user: `pgb_app_${suffix}`, password: randomBytes(12).toString('hex') }
  const schemaRole = `pgb_schema_${suffix}`
  await adminQuery(`create role ${app.user} login password '${app.password}' nosuperuser nobypassrls`)
  await adminQuery(`create role ${schemaRole} nologin`)
  t.teardown(async () => {
    for (const role of [app.user, schemaRole]) {
      await adminQuery(`drop owned by ${role}`, url).catch(() => {})
      await adminQuery(`drop role if exists ${role}`).catch(() => {})
    }
  })
  await query(url, `grant select, insert, update, delete on all tables in schema public to ${app.user}`)
  for (const statement of rowLevelSecurityStatements({ student: 'must', course: 'must', role: 'may', tag: 'must' })) await query(url, statement)
  const schemas = ['pgb_left', 'pgb_right', 'pgb_roled']
  for (const schema of schemas) {
    await query(url, `create schema ${schema};
      create table ${schema}.student (id int not null, iid int not null, name text not null, course_id int, primary key (iid, id));
      insert into ${schema}.student select s, i, '${schema} ' || s || ' of ' || i, null from generate_series(1, 4) s, generate_series(11, 13) i`)
  }
  await query(url, `grant usage on schema pgb_roled to ${schemaRole}; grant select, insert, update, delete on pgb_roled.student to ${schemaRole}`)
  const isolated = []
  for (const name of ['pgb_iso_a', 'pgb_iso_b']) {
    const isoUrl = await createDatabase(t, `${label}_${name}`)
    const database = new URL(isoUrl).pathname.slice(1)
    await query(isoUrl, `create table student (id int not null, iid int not null, name text not null, course_id int, primary key (iid, id));
      insert into student select s, i, '${database} ' || s || ' of ' || i, null from generate_series(1, 4) s, generate_series(1000, 1001) i`)
    isolated.push({ url: isoUrl, database })
  }
  return { url, database: new URL(url).pathname.slice(1), isolated, schemas, schemaRole, app }
}

/**
 * A PgBouncer in front of the test server, stopped when `t` ends. It fails
 * (never skips) when PgBouncer cannot be installed or started.
 */
export async function startBouncer (t: Teardown, poolMode: 'session' | 'transaction', poolSize: number, users: PgBouncerLogin[] = []): Promise<PgBouncer> {
  const bouncer = await startPgBouncer({ databaseUrl: serverUrl(), poolMode, poolSize, users })
  t.teardown(async () => { await bouncer.stop() })
  return bouncer
}
