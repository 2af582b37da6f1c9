import { CompiledQuery, PostgresAdapter, type Kysely, type MigrationLockOptions } from 'kysely'

/**
 * The first key of every migration lock: PostgreSQL's two-key advisory locks
 * live apart from the one-key ones, so this never meets Kysely's own lock or
 * an application's `pg_advisory_lock(bigint)`.
 */
export const MIGRATION_LOCK_NAMESPACE = 1952541038

/** Kysely's own bound on the wait for a migration lock. */
const LOCK_TIMEOUT_MILLISECONDS = 60 * 60 * 1000

/**
 * The SQL that takes the session-level advisory lock of one target's lock
 * table, waiting at most an hour: `$1` is the lock table's schema (`null` for
 * the connection's current schema), `$2` its name.
 */
export const ACQUIRE_TARGET_LOCK = `with set_timeout as (select set_config('lock_timeout', '${LOCK_TIMEOUT_MILLISECONDS}', true))
select pg_advisory_lock(${MIGRATION_LOCK_NAMESPACE}, hashtext(coalesce($1::text, current_schema()::text) || '.' || $2::text)) from set_timeout`

/** The SQL that gives the lock of {@link ACQUIRE_TARGET_LOCK} back (same parameters). */
export const RELEASE_TARGET_LOCK = `select pg_advisory_unlock(${MIGRATION_LOCK_NAMESPACE}, hashtext(coalesce($1::text, current_schema()::text) || '.' || $2::text))`

/** Whether the session of a target's connection holds the target's lock already. */
export interface SessionLock {
  held: boolean
}

/**
 * Kysely's PostgreSQL adapter with one migration lock per target instead of
 * one per database. Kysely's adapter locks a single constant id, so two
 * schemas of one database would migrate one after the other; this one locks
 * `(namespace, hashtext('<schema>.<lock table>'))`, a session-level advisory
 * lock that PostgreSQL releases by itself when the connection ends, so a
 * killed process leaves no lock behind. Two targets whose names hash alike
 * only wait for each other.
 *
 * The fleet migrator takes the same lock once around a whole target (so a
 * second process waits for the target, then finds nothing left) and marks it
 * `held`; Kysely's Migrator then asks again around each step, and those round
 * trips are skipped. Without a held lock, each step locks as above.
 *
 * It also declares a single connection: a target's Kysely runs on one leased
 * client, and Kysely then serialises its use, as it does for PGlite.
 *
 * ```ts
 * await new TargetAdapter().acquireMigrationLock(db, { lockTable: 'kysely_migration_lock', lockRowId: 'migration_lock', lockTableSchema: 'tenant_acme' })
 * // with set_timeout as (select set_config('lock_timeout', '3600000', true))
 * // select pg_advisory_lock(1952541038, hashtext(coalesce($1::text, current_schema()::text) || '.' || $2::text)) from set_timeout
 * // -- $1 = 'tenant_acme', $2 = 'kysely_migration_lock'
 * ```
 */
export class TargetAdapter extends PostgresAdapter {
  readonly #session: SessionLock

  /** `session.held` says the connection holds the lock already. Defaults to a lock not held. */
  constructor (session: SessionLock = { held: false }) {
    super()
    this.#session = session
  }

  override get supportsMultipleConnections (): boolean {
    return false
  }

  override async acquireMigrationLock (db: Kysely<any>, options: MigrationLockOptions): Promise<void> {
    if (this.#session.held) return
    await db.executeQuery(CompiledQuery.raw(ACQUIRE_TARGET_LOCK, [options.lockTableSchema ?? null, options.lockTable]))
  }

  override async releaseMigrationLock (db: Kysely<any>, options: MigrationLockOptions): Promise<void> {
    if (this.#session.held) return
    await db.executeQuery(CompiledQuery.raw(RELEASE_TARGET_LOCK, [options.lockTableSchema ?? null, options.lockTable]))
  }
}
