import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto'
import pg from 'pg'
import { InstanceExistsError, quote } from '../errors.js'

// The statements here create, grant and drop what an instance owns in
// PostgreSQL. Every one is idempotent, so a provisioning that stopped
// half-way can run again from the start, and every object made is marked
// with a comment naming its instance: an object of the same name that
// carries no such mark belongs to someone else and is never reused or dropped.

/** A random password: 32 characters of base64url, 192 bits. */
export function generatePassword (): string {
  return randomBytes(24).toString('base64url')
}

/**
 * The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802,
 * RFC 7677), in the form `CREATE ROLE … PASSWORD` accepts. Sending the
 * verifier instead of the password keeps the password out of the server's
 * statement log, `pg_stat_activity` and its history.
 *
 * ```ts
 * scramVerifier('secret') // 'SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>'
 * ```
 */
export function scramVerifier (password: string, iterations = 4096): string {
  const salt = randomBytes(16)
  // SASLprep leaves printable ASCII unchanged, which is all generatePassword() makes.
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256')
  const clientKey = createHmac('sha256', salted).update('Client Key').digest()
  const storedKey = createHash('sha256').update(clientKey).digest()
  const serverKey = createHmac('sha256', salted).update('Server Key').digest()
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`
}

/** The comment that marks an object as made for one instance of one store. */
export function markerOf (storeDatabase: string, storeTable: string, id: number): string {
  return `fastify-tenancy: instance ${id} of ${storeDatabase}.${storeTable}`
}

function ident (name: string): string {
  return pg.escapeIdentifier(name)
}

function foreign (kind: string, name: string, instance: string): never {
  throw new InstanceExistsError(`The ${kind} ${quote(name)} exists and was not made for instance ${quote(instance)}: drop it, or give the instance another ${kind} name.`)
}

async function markOf (client: pg.ClientBase, text: string, name: string): Promise<{ marker: string | null } | undefined> {
  const { rows } = await client.query<{ marker: string | null }>(text, [name])
  return rows[0]
}

const SCHEMA_MARK = 'select obj_description(oid, \'pg_namespace\') as marker from pg_catalog.pg_namespace where nspname = $1'
const ROLE_MARK = 'select shobj_description(oid, \'pg_authid\') as marker from pg_catalog.pg_roles where rolname = $1'
const DATABASE_MARK = 'select shobj_description(oid, \'pg_database\') as marker from pg_catalog.pg_database where datname = $1'

/**
 * Creates `schema` marked with `marker`, or accepts it when it carries the
 * mark. Runs inside the caller's transaction.
 *
 * ```sql
 * create schema "tenant_acme";
 * comment on schema "tenant_acme" is 'fastify-tenancy: instance 7 of app.public.tenancy_instance'
 * ```
 */
export async function ensureSchema (client: pg.ClientBase, schema: string, marker: string, instance: string): Promise<void> {
  const found = await markOf(client, SCHEMA_MARK, schema)
  if (found !== undefined) {
    if (found.marker !== marker) foreign('schema', schema, instance)
    return
  }
  await client.query(`create schema ${ident(schema)}`)
  await client.query(`comment on schema ${ident(schema)} is ${client.escapeLiteral(marker)}`)
}

/**
 * Creates the instance's role (or sets a new password on it when it carries
 * the mark), makes the connection's login a member so it can `SET ROLE`, and
 * grants it the schema; tables and sequences created later by the login are
 * granted by default privileges. Runs inside the caller's transaction.
 *
 * ```sql
 * create role "tenant_acme" login password 'SCRAM-SHA-256$4096:…';
 * comment on role "tenant_acme" is 'fastify-tenancy: instance 7 of …';
 * grant "tenant_acme" to current_user;
 * grant usage on schema "tenant_acme" to "tenant_acme";
 * alter default privileges in schema "tenant_acme" grant select, insert, update, delete on tables to "tenant_acme";
 * alter default privileges in schema "tenant_acme" grant usage on sequences to "tenant_acme"
 * ```
 */
export async function ensureRole (client: pg.ClientBase, role: string, schema: string, marker: string, password: string, instance: string): Promise<void> {
  const found = await markOf(client, ROLE_MARK, role)
  const verifier = client.escapeLiteral(scramVerifier(password))
  if (found === undefined) {
    await client.query(`create role ${ident(role)} login password ${verifier}`)
    await client.query(`comment on role ${ident(role)} is ${client.escapeLiteral(marker)}`)
  } else if (found.marker === marker) {
    await client.query(`alter role ${ident(role)} login password ${verifier}`)
  } else {
    foreign('role', role, instance)
  }
  const { rows } = await client.query<{ member: boolean }>('select pg_has_role(current_user, $1, \'member\') as member', [role])
  if (rows[0]?.member !== true) await client.query(`grant ${ident(role)} to current_user`)
  await client.query(`grant usage on schema ${ident(schema)} to ${ident(role)}`)
  await client.query(`alter default privileges in schema ${ident(schema)} grant select, insert, update, delete on tables to ${ident(role)}`)
  await client.query(`alter default privileges in schema ${ident(schema)} grant usage on sequences to ${ident(role)}`)
}

/**
 * Grants the role what the migrations made: every table and sequence of the
 * schema, whoever created them.
 *
 * ```sql
 * grant select, insert, update, delete on all tables in schema "tenant_acme" to "tenant_acme";
 * grant usage on all sequences in schema "tenant_acme" to "tenant_acme"
 * ```
 */
export async function grantSchema (client: pg.ClientBase, role: string, schema: string): Promise<void> {
  await client.query(`grant select, insert, update, delete on all tables in schema ${ident(schema)} to ${ident(role)}`)
  await client.query(`grant usage on all sequences in schema ${ident(schema)} to ${ident(role)}`)
}

/**
 * Creates `database` on the server of `admin` (a copy of `template` when
 * given) and marks it, or accepts it when it carries the mark. `CREATE DATABASE` cannot run in a transaction:
 * a process that dies between the two statements leaves an unmarked
 * database, which a retry refuses rather than take someone else's.
 *
 * ```sql
 * create database "tenant_acme";
 * comment on database "tenant_acme" is 'fastify-tenancy: instance 7 of …'
 * ```
 */
export async function ensureDatabase (admin: pg.ClientBase, database: string, marker: string, instance: string, template?: string): Promise<void> {
  let found = await markOf(admin, DATABASE_MARK, database)
  if (found === undefined) {
    try {
      if (template === undefined) await admin.query(`create database ${ident(database)}`)
      else await createFromTemplate(admin, database, template)
      await admin.query(`comment on database ${ident(database)} is ${admin.escapeLiteral(marker)}`)
      return
    } catch (err) {
      // 42P04: made meanwhile by someone else; look at whose it is.
      if (!(err instanceof pg.DatabaseError && err.code === '42P04')) throw err
      found = await markOf(admin, DATABASE_MARK, database)
    }
  }
  if (found?.marker !== marker) foreign('database', database, instance)
}

/**
 * `CREATE DATABASE … TEMPLATE` copies a database only while no other session
 * is connected to it: its sessions are ended first, and a session that
 * connects again before the copy starts (a pool of another process) is ended
 * on the next of a few attempts. Once the copy has started, new connections
 * to the template wait until it ends.
 *
 * ```sql
 * select pg_terminate_backend(pid) from pg_stat_activity where datname = 'tenant_template' and pid <> pg_backend_pid();
 * create database "tenant_copy" template "tenant_template"
 * ```
 */
async function createFromTemplate (admin: pg.ClientBase, database: string, template: string, attempts = 5): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    await admin.query('select pg_terminate_backend(pid) from pg_catalog.pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [template])
    try {
      await admin.query(`create database ${ident(database)} template ${ident(template)}`)
      return
    } catch (err) {
      // 55006: a session connected to the template meanwhile.
      if (!(err instanceof pg.DatabaseError && err.code === '55006') || attempt >= attempts) throw err
      await new Promise((resolve) => setTimeout(resolve, 50 * attempt))
    }
  }
}

/** Drops `schema` with everything in it when it carries the mark; says whether it did. */
export async function dropSchema (client: pg.ClientBase, schema: string, marker: string): Promise<boolean> {
  const found = await markOf(client, SCHEMA_MARK, schema)
  if (found === undefined || found.marker !== marker) return false
  await client.query(`drop schema ${ident(schema)} cascade`)
  return true
}

/**
 * Drops the role when it carries the mark, after what it owns and was
 * granted in this database; says whether it did.
 *
 * ```sql
 * drop owned by "tenant_acme"; drop role "tenant_acme"
 * ```
 */
export async function dropRole (client: pg.ClientBase, role: string, marker: string): Promise<boolean> {
  const found = await markOf(client, ROLE_MARK, role)
  if (found === undefined || found.marker !== marker) return false
  await client.query(`drop owned by ${ident(role)}`)
  await client.query(`drop role ${ident(role)}`)
  return true
}

/** Drops `database` when it carries the mark, ending its sessions first (`WITH (FORCE)`); says whether it did. */
export async function dropDatabase (admin: pg.ClientBase, database: string, marker: string): Promise<boolean> {
  const found = await markOf(admin, DATABASE_MARK, database)
  if (found === undefined || found.marker !== marker) return false
  await admin.query(`drop database if exists ${ident(database)} with (force)`)
  return true
}
