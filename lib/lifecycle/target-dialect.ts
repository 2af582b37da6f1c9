import type pg from 'pg'
import {
  CompiledQuery, PostgresDriver, PostgresQueryCompiler,
  type DatabaseConnection, type DatabaseIntrospector, type Dialect, type DialectAdapter, type Driver, type Kysely, type PostgresPool,
  type PostgresPoolClient, type QueryCompiler, type TransactionSettings,
} from 'kysely'
import { TargetAdapter, type SessionLock } from './migration-lock.js'
import { TargetIntrospector, type TablesMemo } from './target-introspector.js'

/**
 * A pool of exactly one client that it does not own: Kysely's PostgreSQL
 * driver takes it and gives it back as from any pool, and the client stays
 * with whoever leased it. A client Kysely gives back as broken (a failed
 * rollback) is remembered, so its owner can destroy it.
 */
class OneClientPool implements PostgresPool {
  readonly options = {}
  discarded = false
  /** Statements sent through this pool so far. */
  statements = 0
  readonly #client: PostgresPoolClient

  constructor (client: pg.ClientBase) {
    const pool = this
    this.#client = {
      get processID () { return (client as { processID?: number }).processID },
      query: ((text: string, values: unknown[]) => { pool.statements++; return client.query(text, values) }) as unknown as PostgresPoolClient['query'],
      release (destroy?: boolean) { if (destroy === true) pool.discarded = true },
    }
  }

  async connect (): Promise<PostgresPoolClient> {
    if (this.discarded) throw new Error('The migration connection was discarded after a failed rollback.')
    return this.#client
  }

  async end (): Promise<void> {}
}

/**
 * Kysely's PostgreSQL driver that binds every transaction to the target in
 * the round trip of its `begin`: a migration that changed `search_path` for
 * the session cannot send the next migration elsewhere.
 */
class TargetDriver extends PostgresDriver {
  readonly #bind: string

  constructor (pool: PostgresPool, bind: string) {
    super({ pool })
    this.#bind = bind
  }

  override async beginTransaction (connection: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    if (settings.isolationLevel !== undefined || settings.accessMode !== undefined) {
      await super.beginTransaction(connection, settings)
      await connection.executeQuery(CompiledQuery.raw(this.#bind))
    } else {
      // No parameters: one simple-protocol message, so both statements share the round trip.
      await connection.executeQuery(CompiledQuery.raw(`begin; ${this.#bind}`))
    }
  }
}

/**
 * The dialect of one migration target: Kysely's PostgreSQL dialect on the one
 * client leased for the target, whose `search_path` the caller has set to the
 * target and which every transaction sets again, with a migration lock of the target's own ({@link TargetAdapter})
 * and introspection of the target's schema alone ({@link TargetIntrospector}).
 * A Kysely on it has no plugins, so the tenant filter is off: migrations change
 * structure, not one instance's rows.
 *
 * ```ts
 * const lease = await pools.acquire('default', 'acme')
 * await lease.client.query('set search_path to "tenant_acme"')
 * const db = new Kysely<any>({ dialect: new TargetDialect(lease.client, {
 *   schema: 'tenant_acme', internal: ['kysely_migration', 'kysely_migration_lock'], bind: 'set search_path to "tenant_acme"',
 * }) })
 * await db.transaction().execute((trx) => trx.schema.createTable('student').addColumn('id', 'integer').execute())
 * // begin; set search_path to "tenant_acme"
 * // create table "student" ("id" integer)          -- lands in tenant_acme
 * // commit
 * ```
 */
export class TargetDialect implements Dialect {
  readonly #pool: OneClientPool
  readonly #schema: string
  readonly #internal: readonly string[]
  readonly #bind: string
  readonly #lock: SessionLock
  readonly #memo: TablesMemo

  /**
   * `schema` is where the target's unqualified names land; `internal` names
   * its migration tables; `bind` is the statement that binds a session to the
   * target (`set search_path to "tenant_acme"`), sent with every `begin`;
   * `lock` says whether the session holds the target's lock already.
   */
  constructor (client: pg.ClientBase, options: { schema: string, internal: readonly string[], bind: string, lock?: SessionLock }) {
    this.#pool = new OneClientPool(client)
    this.#schema = options.schema
    this.#internal = options.internal
    this.#bind = options.bind
    this.#lock = options.lock ?? { held: false }
    this.#memo = { statements: () => this.#pool.statements }
  }

  /** True once Kysely gave the client back as broken: its owner must destroy it. */
  get discarded (): boolean {
    return this.#pool.discarded
  }

  createDriver (): Driver {
    return new TargetDriver(this.#pool, this.#bind)
  }

  createQueryCompiler (): QueryCompiler {
    return new PostgresQueryCompiler()
  }

  createAdapter (): DialectAdapter {
    return new TargetAdapter(this.#lock)
  }

  createIntrospector (db: Kysely<any>): DatabaseIntrospector {
    return new TargetIntrospector(db, this.#schema, this.#internal, this.#memo)
  }
}
