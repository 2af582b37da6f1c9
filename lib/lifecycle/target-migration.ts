import type pg from 'pg'
import { Kysely, sql } from 'kysely'
import { Migrator, NO_MIGRATIONS, type Migration, type MigrationInfo, type MigrationProvider, type MigrationResult, type MigrationResultSet } from 'kysely/migration'
import { ACQUIRE_TARGET_LOCK, RELEASE_TARGET_LOCK, type SessionLock } from './migration-lock.js'
import type { MigrationTarget } from './migration-target.js'
import { TargetDialect } from './target-dialect.js'

/** The migration and lock tables of one migration set, kept in each target. */
export interface MigrationTables {
  readonly table: string
  readonly lockTable: string
  /** Every migration table name of both sets, hidden from migrations' introspection. */
  readonly internal: readonly string[]
}

/**
 * Where a target's run should end: every migration applied (`latest`), the
 * last one reverted (`previous`), every one reverted (`none`), or the named
 * migration the last one applied (`name`), up or down from where it stands.
 */
export type MigrationGoal =
  | { readonly kind: 'latest' }
  | { readonly kind: 'previous' }
  | { readonly kind: 'none' }
  | { readonly kind: 'name', readonly name: string }

/** How one target's run ended. */
export type TargetRunStatus = 'success' | 'error' | 'aborted' | 'not-reached'

/** What {@link migrateTarget} found and did. */
export interface TargetRunOutcome {
  status: TargetRunStatus
  /** The schema of the target's migration tables (`current_schema()` for shared and isolated targets). */
  schema: string | null
  /** Kysely's results, one per migration of the plan, in the order they ran; those not run are `NotExecuted`. */
  results: MigrationResult[]
  /** The migration that failed, with `status: 'error'`. */
  failedMigration?: string
  error?: unknown
}

/** Callbacks of one target's run. */
export interface TargetRunHooks {
  /** The plan, once the target's lock is held: the migrations it will run, in order. */
  onStart?: (plan: readonly string[], direction: 'Up' | 'Down') => void
  /** After each migration, with Kysely's result. */
  onMigration?: (result: MigrationResult) => void
}

/** What {@link readTargetStatus} reports. */
export interface TargetState {
  schema: string
  /** Applied migrations, in name order. */
  executed: string[]
  /** Migrations not applied yet, in name order. */
  pending: string[]
}

/**
 * The statement that binds a connection to the target: the login role (a
 * pooled connection may still carry an instance's `SET ROLE`), and the schema
 * alone on `search_path`, or the connection's own.
 */
function sessionStatement (target: MigrationTarget): string {
  // Schema names are checked against SAFE_IDENTIFIER when the instance is made.
  return 'reset role; ' + (target.schema !== null ? `set search_path to "${target.schema}"` : 'reset search_path')
}

/** Binds `client` to `target` and returns the schema its unqualified names land in. */
async function bind (client: pg.ClientBase, target: MigrationTarget): Promise<string> {
  await client.query(sessionStatement(target))
  if (target.schema !== null) return target.schema
  const { rows } = await client.query<{ schema: string | null }>('select current_schema() as schema')
  const schema = rows[0]?.schema ?? null
  if (schema === null) throw new Error(`The connection of target ${target.key} has no existing schema on its search_path, so its migration tables have nowhere to go.`)
  return schema
}

function migratorOf (client: pg.ClientBase, target: MigrationTarget, schema: string, provider: MigrationProvider, tables: MigrationTables, lock?: SessionLock): { db: Kysely<any>, migrator: Migrator, dialect: TargetDialect } {
  const dialect = new TargetDialect(client, { schema, internal: tables.internal, bind: sessionStatement(target), lock })
  const db = new Kysely<any>({ dialect })
  const migrator = new Migrator({ db, provider, migrationTableSchema: schema, migrationTableName: tables.table, migrationLockTableName: tables.lockTable })
  return { db, migrator, dialect }
}

/** Applied migrations in the order Kysely reverts them from (time, then name), and the pending ones in name order. */
function split (infos: readonly MigrationInfo[]): { executed: string[], pending: string[] } {
  const executed = infos.filter((info) => info.executedAt !== undefined)
    .sort((a, b) => a.executedAt!.getTime() - b.executedAt!.getTime() || a.name.localeCompare(b.name))
    .map((info) => info.name)
  const pending = infos.filter((info) => info.executedAt === undefined).map((info) => info.name)
  return { executed, pending }
}

function planOf (goal: MigrationGoal, executed: readonly string[], pending: readonly string[], all: readonly string[]): { direction: 'Up' | 'Down', names: string[] } {
  const reverted = [...executed].reverse()
  switch (goal.kind) {
    case 'latest': return { direction: 'Up', names: [...pending] }
    case 'previous': return { direction: 'Down', names: reverted.slice(0, 1) }
    case 'none': return { direction: 'Down', names: reverted }
    case 'name': {
      const done = executed.indexOf(goal.name)
      if (done >= 0) return { direction: 'Down', names: reverted.slice(0, executed.length - done - 1) }
      const todo = pending.indexOf(goal.name)
      if (todo >= 0) return { direction: 'Up', names: pending.slice(0, todo + 1) }
      throw new Error(all.includes(goal.name) ? `migration "${goal.name}" is neither applied nor pending` : `migration "${goal.name}" does not exist`)
    }
  }
}

/** Thrown at a migration boundary once the signal is aborted: Kysely rolls back the empty transaction it is in. */
class Stopped extends Error {}

/**
 * `provider` with a boundary before each migration but the first of a run:
 * the boundary commits the migration before it, together with the row Kysely
 * recorded it with, and begins the next transaction, bound to the target
 * again, in one round trip. Kysely's Migrator runs a whole run in one
 * transaction; with these boundaries each migration has a transaction of its
 * own, and a failure rolls back only the migration that failed. The boundary
 * is also where `signal` stops a run. A migration without `down` fails when it
 * is to be reverted (Kysely would skip it and revert the ones before it).
 */
function committingEach (provider: MigrationProvider, bindStatement: string, signal: AbortSignal | undefined,
  committed: (name: string, direction: 'Up' | 'Down') => void): MigrationProvider {
  let previous: string | undefined
  const boundary = async (db: Kysely<any>, name: string, direction: 'Up' | 'Down'): Promise<void> => {
    if (previous !== undefined) {
      await sql.raw(`commit; begin; ${bindStatement}`).execute(db)
      committed(previous, direction)
      if (isAborted(signal)) throw new Stopped('The run was aborted.')
    }
    previous = name
  }
  return {
    async getMigrations () {
      const migrations = await provider.getMigrations()
      return Object.fromEntries(Object.entries(migrations).map(([name, migration]) => [name, {
        async up (db: Kysely<any>) {
          await boundary(db, name, 'Up')
          await migration.up(db)
        },
        async down (db: Kysely<any>) {
          await boundary(db, name, 'Down')
          if (migration.down === undefined) throw new Error(`migration "${name}" has no down method, so it cannot be reverted.`)
          await migration.down(db)
        },
      } satisfies Migration]))
    },
  }
}

async function run (migrator: Migrator, goal: MigrationGoal): Promise<MigrationResultSet> {
  switch (goal.kind) {
    case 'latest': return await migrator.migrateToLatest()
    case 'previous': return await migrator.migrateDown()
    case 'none': return await migrator.migrateTo(NO_MIGRATIONS)
    case 'name': return await migrator.migrateTo(goal.name)
  }
}

/**
 * Runs one target's migrations on `client`, which the caller leased for it:
 * binds the session to the target, takes the target's lock for the whole run
 * (a second process waits, then finds nothing left to do), reads where the
 * target stands, and runs the plan with Kysely's Migrator, each migration in
 * its own transaction with its row in the migration table (see
 * {@link committingEach}). A migration that throws rolls back alone: the
 * target stays at its last good migration. `signal` stops the run between
 * migrations, never inside one.
 *
 * Never throws: a failure is in the outcome. The connection is left unlocked,
 * outside any transaction, with `search_path` changed: the caller must not
 * hand it to anyone who trusts its session.
 */
export async function migrateTarget (client: pg.ClientBase, target: MigrationTarget, provider: MigrationProvider, tables: MigrationTables,
  goal: MigrationGoal, signal: AbortSignal | undefined, hooks: TargetRunHooks = {}): Promise<TargetRunOutcome> {
  const outcome: TargetRunOutcome = { status: 'not-reached', schema: null, results: [] }
  let locked = false
  let db: Kysely<any> | undefined
  try {
    const schema = await bind(client, target)
    outcome.schema = schema
    await client.query(ACQUIRE_TARGET_LOCK, [schema, tables.lockTable])
    locked = true
    if (isAborted(signal)) return outcome
    const reported = new Set<string>()
    const report = (result: MigrationResult): void => {
      reported.add(result.migrationName)
      hooks.onMigration?.(result)
    }
    const each = committingEach(provider, sessionStatement(target), signal, (migrationName, direction) => report({ migrationName, direction, status: 'Success' }))
    const made = migratorOf(client, target, schema, each, tables, { held: true })
    db = made.db
    const infos = await made.migrator.getMigrations()
    const { executed, pending } = split(infos)
    const plan = planOf(goal, executed, pending, infos.map((info) => info.name))
    hooks.onStart?.(plan.names, plan.direction)
    outcome.status = 'success'
    if (plan.names.length === 0) return outcome
    const { error, results = [] } = await run(made.migrator, goal)
    const stopped = error instanceof Stopped
    outcome.results = results.map((result) => stopped && result.status === 'Error' ? { ...result, status: 'NotExecuted' } : result)
    for (const result of outcome.results) if (result.status !== 'NotExecuted' && !reported.has(result.migrationName)) report(result)
    if (stopped) {
      outcome.status = 'aborted'
    } else if (error !== undefined) {
      outcome.status = 'error'
      outcome.error = error
      const failed = results.find((result) => result.status === 'Error')
      if (failed !== undefined) outcome.failedMigration = failed.migrationName
    }
  } catch (err) {
    outcome.status = 'error'
    outcome.error = err
  } finally {
    if (db !== undefined) await db.destroy().catch(() => {})
    if (locked) {
      try {
        await client.query(RELEASE_TARGET_LOCK, [outcome.schema, tables.lockTable])
      } catch (err) {
        // Still locked, or the connection is gone: either way the caller destroys it, which ends the lock.
        if (outcome.status !== 'error') {
          outcome.status = 'error'
          outcome.error = err
        }
      }
    }
  }
  return outcome
}

// A function, so the compiler does not take the signal for unchanged between two awaits.
function isAborted (signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true
}

/** Where `target` stands: its applied and pending migrations. Read without the lock. */
export async function readTargetStatus (client: pg.ClientBase, target: MigrationTarget, provider: MigrationProvider, tables: MigrationTables): Promise<TargetState> {
  const schema = await bind(client, target)
  const { db, migrator } = migratorOf(client, target, schema, provider, tables)
  try {
    const infos = await migrator.getMigrations()
    return {
      schema,
      executed: infos.filter((info) => info.executedAt !== undefined).map((info) => info.name),
      pending: infos.filter((info) => info.executedAt === undefined).map((info) => info.name),
    }
  } finally {
    await db.destroy().catch(() => {})
  }
}
