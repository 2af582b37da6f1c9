import { randomBytes } from 'node:crypto'
import { startPgBouncer, type PgBouncer, type PgBouncerLogin } from '../../scripts/pgbouncer.js'
import { adminQuery, createDatabase, query, serverUrl } from './database.js'
import { createTenantSchema } from './tenant-schema.js'
import { rowLevelSecurityStatements } from '../../lib/index.js'

interface Teardown { teardown (fn: () => unknown): void }

/** The tenant tables of the shared database. */
export const TABLES = { student: 'must', course: 'must', role: 'may', tag: 'must' } as const

interface IsolatedDatabase { url: string, database: string }

/** The places the PgBouncer tests read from, each with rows that say where they are. */
export interface PgBouncerFixture {
  /** The shared database (tenant tables of instances 1–3, under row-level security policies), direct. */
  url: string
  database: string
  /** Two databases of isolated instances, direct; each has `student` rows of iid 1000 and 1001, named after the database. */
  isolated: [IsolatedDatabase, IsolatedDatabase]
  /** Schemas of the shared database, each with `student` rows of iid 11 and 12 named after the schema. */
  schemas: string[]
  /** A role that may use only the last schema. */
  schemaRole: string
  /** An ordinary login (no superuser, no BYPASSRLS) for row-level security. */
  app: PgBouncerLogin
  /** The instances over these places: shared 1–3, isolated isoA and isoB (datasources of those names), schema instances 11–13. */
  instances: {
    shared: Array<{ name: string, id: number }>
    isolated: Array<{ name: string, id: number, isolate: true, isolateClient: string }>
    schemas: Array<{ name: string, id: number, schema: string, role?: string }>
  }
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
  for (const statement of rowLevelSecurityStatements(TABLES)) await query(url, statement)
  const schemas = ['pgb_left', 'pgb_right', 'pgb_roled']
  for (const schema of schemas) {
    await query(url, `create schema ${schema};
      create table ${schema}.student (id int not null, iid int not null, name text not null, course_id int, primary key (iid, id));
      insert into ${schema}.student select s, i, '${schema} ' || s || ' of ' || i, null from generate_series(1, 4) s, generate_series(11, 13) i`)
  }
  await query(url, `grant usage on schema pgb_roled to ${schemaRole}; grant select, insert, update, delete on pgb_roled.student to ${schemaRole}`)
  const isolated: IsolatedDatabase[] = []
  for (const name of ['pgb_iso_a', 'pgb_iso_b']) {
    const isoUrl = await createDatabase(t, `${label}_${name}`)
    const database = new URL(isoUrl).pathname.slice(1)
    await query(isoUrl, `create table student (id int not null, iid int not null, name text not null, course_id int, primary key (iid, id));
      insert into student select s, i, '${database} ' || s || ' of ' || i, null from generate_series(1, 4) s, generate_series(1000, 1001) i`)
    isolated.push({ url: isoUrl, database })
  }
  const instances = {
    shared: [{ name: 'a', id: 1 }, { name: 'b', id: 2 }, { name: 'c', id: 3 }],
    isolated: [{ name: 'isoA', id: 1000, isolate: true as const, isolateClient: 'isoA' }, { name: 'isoB', id: 1001, isolate: true as const, isolateClient: 'isoB' }],
    schemas: [
      { name: 'left', id: 11, schema: 'pgb_left' },
      { name: 'right', id: 12, schema: 'pgb_right' },
      { name: 'roled', id: 13, schema: 'pgb_roled', role: schemaRole },
    ],
  }
  return { url, database: new URL(url).pathname.slice(1), isolated: isolated as [IsolatedDatabase, IsolatedDatabase], schemas, schemaRole, app, instances }
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
