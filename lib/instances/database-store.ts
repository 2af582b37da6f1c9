import pg from 'pg'
import { DatasourceUnavailableError, InstanceExistsError, InstanceNameCollisionError, InvalidOptionsError, quote } from '../errors.js'
import type { PoolManager } from '../routing/pool-manager.js'
import { SAFE_IDENTIFIER, instanceIdentifier, toInstance, type Instance, type InstanceConfig, type InstanceMode, type InstanceState } from './instance.js'
import type { InstanceStore } from './instance-registry.js'

/** Options of {@link databaseStore}. */
export interface DatabaseStoreOptions {
  /**
   * The table of the default datasource that holds the instances, `table` or
   * `schema.table`, at most 40 characters; an unqualified name lands in the
   * connection's `current_schema()`. It is created at start-up when missing,
   * with its id sequence, and triggers that notify every process of a change,
   * whoever makes it (also a hand-written `UPDATE`). Defaults to `'tenancy_instance'`.
   */
  table?: string
  /**
   * Instances created at start-up when no row has their name or id; a row that
   * exists is never overwritten. Their ids are yours (the store's sequence moves
   * past them); their modes are the configured ones (`schema`, `isolate` with
   * `isolateClient`). Defaults to none.
   */
  seed?: readonly InstanceConfig[]
  /**
   * Prefix of the schema, role and database names made for an instance from
   * its name: `tenant_` + the name in lower case with `.` and `-` as `_`.
   * Defaults to `'tenant_'`.
   */
  prefix?: string
  /**
   * First delay before the listening connection reconnects after it was lost,
   * doubled after each failed attempt up to 5 s. Defaults to `100`.
   */
  reconnectDelayMillis?: number
}

/** One row of the store as this process holds it: the instance and what the lifecycle needs besides. */
export interface StoredInstance {
  readonly instance: Instance
  readonly state: InstanceState
  /** The server its database was created on (isolated instances made by `createInstance`), or `null`. */
  readonly server: string | null
  /** That database's name, or `null`. */
  readonly database: string | null
  /** Grows with every change of the row. */
  readonly version: number
}

/** A change this process saw: a row appeared (`before` absent), changed, or went (`after` absent). */
export interface StoreChange {
  readonly before: StoredInstance | undefined
  readonly after: StoredInstance | undefined
}

/** The values of a new row. */
export interface NewStoredInstance {
  readonly name: string
  readonly title: string
  readonly config: Readonly<Record<string, unknown>>
  readonly mode: InstanceMode
  readonly datasource: string | null
  readonly schema: string | null
  readonly role: string | null
  readonly server: string | null
  readonly database: string | null
}

/** What the store needs of its tenancy to open. */
export interface StoreConnection {
  /** Connection settings of the default datasource, for the listening client and the name locks. */
  readonly client: pg.ClientConfig
  /** The tenancy's pools: writes go through the default datasource's pool. */
  readonly pools: PoolManager
  /** The configured datasources, which seeds may name. */
  readonly datasources: ReadonlySet<string>
}

/** A name held for creation or removal; other processes' attempts on it fail until it is released. */
export interface NameLock {
  release (): Promise<void>
}

interface Row {
  id: number
  name: string
  title: string
  config: Record<string, unknown> | null
  mode: InstanceMode
  datasource: string | null
  schema: string | null
  role: string | null
  server: string | null
  database: string | null
  disabled: boolean
  state: InstanceState
  error: string | null
  version: string
}

const COLUMNS = 'id, name, title, config, mode, datasource, schema, role, server, database, disabled, state, error, version'
// toInstance() checks a row's datasource against the configured ones; a row's
// isolated datasource is made at run time, so every name passes here.
const ANY_DATASOURCE: ReadonlySet<string> = { has: () => true } as unknown as ReadonlySet<string>

/** The name of the datasource of a database created on `server`. */
export function serverDatasource (server: string, database: string): string {
  return `${server}/${database}`
}

/**
 * True when `err` says the connection is gone or could not be made, rather
 * than that the server refused a statement: network errors carry no SQLSTATE;
 * 08 is a connection exception, 57P an operator intervention (a terminated
 * session, a server shutting down).
 */
export function isConnectionLoss (err: unknown): boolean {
  if (err instanceof DatasourceUnavailableError) return true
  if (err instanceof pg.DatabaseError) return /^(08|57P)/.test(err.code ?? '')
  return err instanceof Error && (/^E[A-Z]+$/.test((err as { code?: string }).code ?? '') || /connection|terminated|timeout/i.test(err.message))
}

/**
 * Runs `work` in a transaction on a client of `datasource`'s pool as the
 * connection's login: a pooled connection may still carry the role an
 * instance's checkout set, and `SET LOCAL ROLE NONE` sets it aside until the
 * transaction ends, so the session is as the routing pool left it. A lost or
 * unreachable database is 503 `TENANCY_DATASOURCE_UNAVAILABLE`. `isolation`
 * is the transaction's isolation level. Defaults to the server's.
 *
 * ```sql
 * begin; set local role none; …work…; commit
 * ```
 */
export async function asLogin<T> (pools: PoolManager, datasource: string, label: string, work: (client: pg.PoolClient) => Promise<T>, isolation?: 'repeatable read' | 'serializable'): Promise<T> {
  const lease = await pools.acquire(datasource, label)
  let broken = false
  try {
    await lease.client.query(`begin${isolation === undefined ? '' : ` isolation level ${isolation}`}; set local role none`)
    const result = await work(lease.client)
    await lease.client.query('commit')
    return result
  } catch (err) {
    if (isConnectionLoss(err)) {
      broken = true
      throw Object.assign(new DatasourceUnavailableError(quote(label)), { cause: err })
    }
    await lease.client.query('rollback').catch(() => { broken = true })
    throw err
  } finally {
    pools.release(lease, broken)
  }
}

function instanceOf (row: Row): StoredInstance | string {
  const base = { name: row.name, id: row.id, title: row.title, config: row.config ?? {}, disabled: row.disabled, ...(row.role === null ? {} : { role: row.role }) }
  const config: InstanceConfig = row.mode === 'isolated'
    ? { ...base, isolate: true, isolateClient: row.datasource ?? serverDatasource(row.server ?? '', row.database ?? '') }
    : row.mode === 'schema'
      ? { ...base, schema: row.schema ?? '', datasource: row.datasource ?? 'default' }
      : { ...base, datasource: row.datasource ?? 'default' }
  const instance = toInstance(config, ANY_DATASOURCE, { state: row.state, error: row.error })
  if (typeof instance === 'string') return instance
  return Object.freeze({ instance, state: row.state, server: row.server, database: row.database, version: Number(row.version) })
}

/**
 * Instances kept in a table of the default datasource, for a tenancy that
 * adds and removes instances at run time. Every row is held in memory, so
 * lookups stay synchronous `Map` lookups and `list()` gives the same array
 * until something changes (the host-name index is built once per change). A
 * trigger notifies every process of each change (`LISTEN/NOTIFY`), and each
 * process reads the changed rows at once; when its listening connection is
 * lost it reconnects and reads every row again, so a change made meanwhile is
 * not missed. While the database is down, lookups keep answering from the
 * last rows read and writes fail with 503 `TENANCY_DATASOURCE_UNAVAILABLE`.
 *
 * Give it to `createTenancy`, which opens it (creating the table, the seeds,
 * reading the rows) before it returns, and ends its connection on `close()`.
 *
 * ```ts
 * const t = await createTenancy({
 *   instances: databaseStore({ table: 'tenancy_instance', seed: [{ name: '', id: 1 }] }),
 *   datasources: { default: process.env.DATABASE_URL },
 * })
 * // create sequence if not exists "public"."tenancy_instance_id_seq";
 * // create table if not exists "public"."tenancy_instance" (id integer primary key default nextval(…), name text not null, …);
 * // insert into "public"."tenancy_instance" (id, name, …) values (1, '', …) on conflict do nothing;
 * // listen "tenancy_instance"
 * ```
 */
export function databaseStore (options: DatabaseStoreOptions = {}): DatabaseStore {
  return new DatabaseStore(options)
}

/** The store {@link databaseStore} makes. */
export class DatabaseStore implements InstanceStore {
  readonly #tableOption: string
  readonly #seed: readonly InstanceConfig[]
  /** Prefix of derived schema, role and database names. */
  readonly prefix: string
  readonly #baseDelay: number
  readonly #records = new Map<number, StoredInstance>()
  readonly #byName = new Map<string, Instance>()
  readonly #byId = new Map<number, Instance>()
  #list: readonly Instance[] = Object.freeze([])
  // Ids deleted while this process watched: a late local write must not bring them back.
  readonly #gone = new Set<number>()
  readonly #listeners = new Set<(change: StoreChange) => void>()
  #connection: StoreConnection | undefined
  #client: pg.Client | undefined
  #table = ''
  #schema = ''
  #database = ''
  #channel = ''
  #state: 'new' | 'open' | 'closed' = 'new'
  #delay: number
  #timer: NodeJS.Timeout | undefined
  #pending = new Set<number>()
  #flushing = false
  #reconnects = 0
  #locks: Promise<pg.Client> | undefined
  // Names this process holds now, by identifier.
  readonly #held = new Set<string>()

  constructor (options: DatabaseStoreOptions = {}) {
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('databaseStore takes an options object')
    const { table = 'tenancy_instance', seed = [], prefix = 'tenant_', reconnectDelayMillis = 100 } = options
    const parts = typeof table === 'string' ? table.split('.') : []
    if (parts.length < 1 || parts.length > 2 || !parts.every((part) => SAFE_IDENTIFIER.test(part)) || parts.at(-1)!.length > 40) {
      throw new InvalidOptionsError(`table ${quote(table)} must be "table" or "schema.table" of safe identifiers, the table at most 40 characters`)
    }
    if (!Array.isArray(seed)) throw new InvalidOptionsError('seed must be an array of instances')
    if (typeof prefix !== 'string' || !SAFE_IDENTIFIER.test(prefix) || prefix.length > 20) throw new InvalidOptionsError(`prefix ${quote(prefix)} must be a safe identifier of at most 20 characters`)
    if (!Number.isSafeInteger(reconnectDelayMillis) || reconnectDelayMillis <= 0) throw new InvalidOptionsError('reconnectDelayMillis must be a positive whole number of milliseconds')
    this.#tableOption = table
    this.#seed = seed
    this.prefix = prefix
    this.#baseDelay = reconnectDelayMillis
    this.#delay = reconnectDelayMillis
  }

  byName (name: string): Instance | undefined {
    return this.#byName.get(name)
  }

  byId (id: number): Instance | undefined {
    return this.#byId.get(id)
  }

  /** Every instance not removed, by id; the same array until a change. */
  list (): readonly Instance[] {
    return this.#list
  }

  /** The row of `id`, also of a removed instance. */
  record (id: number): StoredInstance | undefined {
    return this.#records.get(id)
  }

  /** The row named `name` (case ignored), also of a removed instance. */
  recordByName (name: string): StoredInstance | undefined {
    const key = name.toLowerCase()
    for (const record of this.#records.values()) if (record.instance.name.toLowerCase() === key) return record
    return undefined
  }

  /** Every row held, also of removed instances. */
  records (): IterableIterator<StoredInstance> {
    return this.#records.values()
  }

  /** The table, schema-qualified and quoted, once open. */
  get table (): string {
    return `"${this.#schema}"."${this.#table}"`
  }

  /** `<table>_removed`: the ids (and names) of deleted rows, so that a removed seed is not created again. */
  get #removedTable (): string {
    return `"${this.#schema}"."${this.#table}_removed"`
  }

  /** The table as `schema.table`, for markers and messages. */
  get tableName (): string {
    return `${this.#schema}.${this.#table}`
  }

  /** The default datasource's database, where the table is. */
  get database (): string {
    return this.#database
  }

  /** True once a tenancy has opened the store (also after it closed it). */
  get opened (): boolean {
    return this.#state !== 'new'
  }

  /** True while the listening connection is up. */
  get listening (): boolean {
    return this.#client !== undefined
  }

  /** The server process of the listening connection (`pg_stat_activity.pid`), while it is up. */
  get listenerProcessId (): number | undefined {
    return (this.#client as { processID?: number } | undefined)?.processID
  }

  /** Times the listening connection was made again after a loss. */
  get reconnects (): number {
    return this.#reconnects
  }

  /** Calls `listener` after each change this process sees, once its maps hold it. */
  subscribe (listener: (change: StoreChange) => void): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  /**
   * @internal Creates the table when missing, the seeds when absent, starts
   * listening and reads every row. `createTenancy` calls it.
   */
  async open (connection: StoreConnection): Promise<void> {
    if (this.#state !== 'new') throw new InvalidOptionsError('a databaseStore serves one tenancy: make one per createTenancy call')
    this.#state = 'open'
    this.#connection = connection
    const seeds = this.#checkSeeds(connection.datasources)
    const client = await this.#connect(connection.client, false)
    try {
      const parts = this.#tableOption.split('.')
      this.#table = parts.at(-1)!
      const { rows: [where] } = await client.query<{ schema: string | null, database: string }>('select current_schema() as schema, current_database() as database')
      this.#database = where!.database
      if (parts.length === 2) {
        this.#schema = parts[0]!
      } else {
        if (where?.schema == null) throw new InvalidOptionsError(`the default datasource's connection has no schema on its search_path for the table ${quote(this.#table)}: name it "schema.table"`)
        this.#schema = where.schema
      }
      // A channel is an identifier: at most 63 bytes, and one per table.
      this.#channel = `${this.#schema}.${this.#table}`.slice(0, 63)
      await this.#prepare(client, seeds)
      await client.query(`listen "${this.#channel}"`)
      await this.#reload(client, false)
    } catch (err) {
      // No reconnect may outlive a failed start.
      await this.close()
      throw isConnectionLoss(err) && !(err instanceof DatasourceUnavailableError) ? Object.assign(new DatasourceUnavailableError(quote('(instance store)')), { cause: err }) : err
    }
  }

  /** Ends the listening connection. Safe to call twice. */
  async close (): Promise<void> {
    if (this.#state === 'closed') return
    this.#state = 'closed'
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    const client = this.#client
    this.#client = undefined
    if (client !== undefined) await client.end().catch(() => {})
    const locks = this.#locks
    this.#locks = undefined
    if (locks !== undefined) await (await locks.catch(() => undefined))?.end().catch(() => {})
  }

  #checkSeeds (datasources: ReadonlySet<string>): Instance[] {
    const seeds: Instance[] = []
    const names = new Map<string, string>()
    const ids = new Set<number>()
    const physical = new Set<string>()
    for (const config of this.#seed) {
      const instance = toInstance(config, datasources)
      if (typeof instance === 'string') throw new InvalidOptionsError(`seed: ${instance}`)
      const folded = instance.name.toLowerCase()
      if (names.has(folded)) throw new InvalidOptionsError(`seed: instances ${quote(names.get(folded))} and ${quote(instance.name)} differ only in case`)
      if (ids.has(instance.id)) throw new InvalidOptionsError(`seed: two instances have the id ${instance.id}`)
      const place = instance.mode === 'shared' ? undefined : instance.mode === 'schema' ? `schema:${instance.datasource}.${instance.schema!}` : `datasource:${instance.datasource}`
      if (place !== undefined && physical.has(place)) throw new InvalidOptionsError(`seed: instance ${quote(instance.name)} would share its ${instance.mode === 'schema' ? 'schema' : 'database'} with another`)
      names.set(folded, instance.name)
      ids.add(instance.id)
      if (place !== undefined) physical.add(place)
      seeds.push(instance)
    }
    return seeds
  }

  async #prepare (client: pg.Client, seeds: readonly Instance[]): Promise<void> {
    const t = this.table
    const seq = `"${this.#schema}"."${this.#table}_id_seq"`
    const fn = (suffix: string): string => `"${this.#schema}"."${this.#table}_${suffix}"`
    await client.query('begin')
    try {
      // Two processes starting at once would race on the catalog: one at a time.
      await client.query('select pg_advisory_xact_lock(hashtext($1))', [`fastify-tenancy:${this.tableName}`])
      await client.query(`create sequence if not exists ${seq} as integer`)
      await client.query(`create table if not exists ${t} (
        id integer primary key default nextval('${seq}'),
        name text not null,
        name_key text generated always as (lower(name)) stored,
        title text not null,
        config jsonb not null default '{}',
        mode text not null check (mode in ('shared', 'schema', 'isolated')),
        datasource text,
        schema text,
        role text,
        server text,
        database text,
        physical text generated always as (case
          when mode = 'schema' then 'schema:' || coalesce(datasource, 'default') || '.' || schema
          when mode = 'isolated' and server is not null then 'database:' || server || '.' || database
          when mode = 'isolated' then 'datasource:' || datasource end) stored,
        disabled boolean not null default false,
        state text not null default 'ready' check (state in ('provisioning', 'ready', 'failed', 'removed')),
        error text,
        version bigint not null default 1,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now(),
        constraint "${this.#table}_name_unique" unique (name_key),
        constraint "${this.#table}_physical_unique" unique (physical))`)
      await client.query(`alter sequence ${seq} owned by ${t}.id`)
      // The ids of deleted rows: a seed removed with drop stays removed, though it is still in seed.
      await client.query(`create table if not exists ${this.#removedTable} (id integer primary key, name text not null, removed_at timestamptz not null default now())`)
      await client.query(`create or replace function ${fn('touch')}() returns trigger language plpgsql as $$
        begin new.version := old.version + 1; new.updated_at := now(); return new; end $$`)
      await client.query(`create or replace function ${fn('notify')}() returns trigger language plpgsql as $$
        begin perform pg_notify(${client.escapeLiteral(this.#channel)}, coalesce(new.id, old.id)::text); return null; end $$`)
      await client.query(`create or replace trigger "${this.#table}_touch" before update on ${t} for each row execute function ${fn('touch')}()`)
      await client.query(`create or replace trigger "${this.#table}_notify" after insert or update or delete on ${t} for each row execute function ${fn('notify')}()`)
      const { rows: removed } = seeds.length === 0
        ? { rows: [] }
        : await client.query<{ id: number }>(`select id from ${this.#removedTable} where id = any($1::int[])`, [seeds.map((seed) => seed.id)])
      const gone = new Set(removed.map((row) => row.id))
      for (const seed of seeds) {
        if (gone.has(seed.id)) continue
        await client.query(`insert into ${t} (id, name, title, config, mode, datasource, schema, role, disabled)
          values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict do nothing`,
        [seed.id, seed.name, seed.title, JSON.stringify(seed.config), seed.mode, seed.datasource, seed.schema, seed.role, seed.disabled])
      }
      // The sequence moves past every id in the table, so it never hands out a seed's.
      await client.query(`select setval('${seq}', m, true) from (select max(id) as m from ${t}) x, ${seq} s
        where x.m is not null and x.m >= case when s.is_called then s.last_value + 1 else s.last_value end`)
      await client.query('commit')
    } catch (err) {
      await client.query('rollback').catch(() => {})
      throw err
    }
  }

  async #connect (config: pg.ClientConfig, reconnecting: boolean): Promise<pg.Client> {
    const client = new pg.Client({ keepAlive: true, ...config })
    let lost = false
    const onLost = (): void => {
      if (lost) return
      lost = true
      this.#lost(client)
    }
    client.on('error', onLost)
    client.on('end', onLost)
    client.on('notification', (message) => {
      if (message.channel !== this.#channel || this.#client !== client) return
      const id = Number(message.payload)
      if (Number.isSafeInteger(id)) this.#pending.add(id)
      else this.#pending.add(-1)
      this.#flush(client)
    })
    try {
      await client.connect()
    } catch (err) {
      lost = true
      await client.end().catch(() => {})
      throw err
    }
    if (reconnecting) await client.query(`listen "${this.#channel}"`)
    this.#client = client
    return client
  }

  #lost (client: pg.Client): void {
    if (this.#client !== client) return
    this.#client = undefined
    void client.end().catch(() => {})
    this.#scheduleReconnect()
  }

  #scheduleReconnect (): void {
    if (this.#state !== 'open' || this.#timer !== undefined) return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      void this.#reconnect()
    }, this.#delay)
    this.#delay = Math.min(this.#delay * 2, 5000)
  }

  async #reconnect (): Promise<void> {
    if (this.#state !== 'open') return
    let client: pg.Client | undefined
    try {
      client = await this.#connect(this.#connection!.client, true)
      // Listening before reading: a change committed after the read is notified.
      await this.#reload(client, true)
      this.#delay = this.#baseDelay
      this.#reconnects++
    } catch {
      if (client !== undefined) this.#lost(client)
      else this.#scheduleReconnect()
    }
    if (this.#state !== 'open' && client !== undefined) await client.end().catch(() => {})
  }

  /** Reads every row and applies what differs from memory. */
  async #reload (client: pg.Client, emit: boolean): Promise<void> {
    const { rows } = await client.query<Row>(`select ${COLUMNS} from ${this.table} order by id`)
    const seen = new Set<number>()
    for (const row of rows) {
      seen.add(row.id)
      this.#applyRow(row, emit, true)
    }
    for (const id of [...this.#records.keys()]) if (!seen.has(id)) this.#applyGone(id, emit)
  }

  #flush (client: pg.Client): void {
    if (this.#flushing) return
    this.#flushing = true
    void (async () => {
      try {
        while (this.#pending.size > 0 && this.#client === client) {
          const ids = [...this.#pending]
          this.#pending = new Set()
          if (ids.includes(-1)) {
            await this.#reload(client, true)
            continue
          }
          const { rows } = await client.query<Row>(`select ${COLUMNS} from ${this.table} where id = any($1::int[])`, [ids])
          const found = new Set<number>()
          for (const row of rows) {
            found.add(row.id)
            this.#applyRow(row, true, true)
          }
          for (const id of ids) if (!found.has(id)) this.#applyGone(id, true)
        }
      } catch {
        // The connection is lost: the reconnect reads every row again.
      } finally {
        this.#flushing = false
        if (this.#pending.size > 0 && this.#client !== undefined) this.#flush(this.#client)
      }
    })()
  }

  /**
   * Applies a row. A row read by the listener is the truth as of its read and
   * wins unless memory holds a newer version; a row this process just wrote
   * is applied only when it is newer and its id was not deleted meanwhile.
   */
  #applyRow (row: Row, emit: boolean, read: boolean): StoredInstance | undefined {
    const before = this.#records.get(row.id)
    if (!read && this.#gone.has(row.id)) return undefined
    if (before !== undefined && Number(row.version) <= before.version) return before
    const after = instanceOf(row)
    if (typeof after === 'string') {
      process.emitWarning(`fastify-tenancy: the row of instance ${row.id} in ${this.tableName} is not a valid instance and is ignored: ${after}`)
      if (before !== undefined) this.#applyGone(row.id, emit)
      return undefined
    }
    this.#gone.delete(row.id)
    this.#records.set(row.id, after)
    this.#index(before, after)
    if (emit) this.#emit({ before, after })
    return after
  }

  #applyGone (id: number, emit: boolean): void {
    const before = this.#records.get(id)
    this.#gone.add(id)
    if (before === undefined) return
    this.#records.delete(id)
    this.#index(before, undefined)
    if (emit) this.#emit({ before, after: undefined })
  }

  #index (before: StoredInstance | undefined, after: StoredInstance | undefined): void {
    if (before !== undefined && this.#byName.get(before.instance.name) === before.instance) this.#byName.delete(before.instance.name)
    if (before !== undefined) this.#byId.delete(before.instance.id)
    if (after !== undefined && after.state !== 'removed') {
      this.#byName.set(after.instance.name, after.instance)
      this.#byId.set(after.instance.id, after.instance)
    }
    this.#list = Object.freeze([...this.#byId.values()].sort((a, b) => a.id - b.id))
  }

  #emit (change: StoreChange): void {
    for (const listener of this.#listeners) {
      try {
        listener(change)
      } catch (err) {
        process.emitWarning(err as Error)
      }
    }
  }

  async #write<T> (label: string, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    if (this.#state !== 'open') throw new InvalidOptionsError('the instance store is not open: it opens with createTenancy()')
    return await asLogin(this.#connection!.pools, 'default', label, work)
  }

  #conflict (err: unknown, values: { name: string }): never {
    if (err instanceof pg.DatabaseError && err.code === '23505') {
      if (err.constraint === `${this.#table}_physical_unique`) {
        throw new InstanceNameCollisionError(quote(values.name), 'its schema or database would be another instance\'s')
      }
      throw new InstanceExistsError(`An instance named ${quote(values.name)} already exists (names are compared without case).`)
    }
    throw err
  }

  /** The row named `name` (case ignored) as the database has it now, also of a removed instance. */
  async read (name: string): Promise<StoredInstance | undefined> {
    const row = await this.#write(name, async (client) => {
      const { rows } = await client.query<Row>(`select ${COLUMNS} from ${this.table} where name_key = lower($1)`, [name])
      return rows[0]
    })
    return row === undefined ? undefined : this.#applyRow(row, true, true)
  }

  /** Inserts a new row in state `provisioning`; the id comes from the sequence. */
  async insert (values: NewStoredInstance): Promise<StoredInstance> {
    const row = await this.#write(values.name, async (client) => {
      try {
        const { rows } = await client.query<Row>(`insert into ${this.table} (name, title, config, mode, datasource, schema, role, server, database, state)
          values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'provisioning') returning ${COLUMNS}`,
        [values.name, values.title, JSON.stringify(values.config), values.mode, values.datasource, values.schema, values.role, values.server, values.database])
        return rows[0]!
      } catch (err) {
        return this.#conflict(err, values)
      }
    })
    return this.#applied(row)
  }

  /** Sets columns of the row `id` and returns it as it now stands; `undefined` when it is gone. */
  async update (id: number, changes: { title?: string, config?: Readonly<Record<string, unknown>>, disabled?: boolean, state?: InstanceState, error?: string | null }): Promise<StoredInstance | undefined> {
    const sets: string[] = []
    const values: unknown[] = [id]
    for (const [column, value] of Object.entries(changes)) {
      if (value === undefined) continue
      values.push(column === 'config' ? JSON.stringify(value) : value)
      sets.push(`"${column}" = $${values.length}`)
    }
    if (sets.length === 0) return this.#records.get(id)
    const row = await this.#write(this.#records.get(id)?.instance.name ?? String(id), async (client) => {
      const { rows } = await client.query<Row>(`update ${this.table} set ${sets.join(', ')} where id = $1 returning ${COLUMNS}`, values)
      return rows[0]
    })
    // Applied once committed: no process, this one included, sees a change that could still roll back.
    if (row !== undefined) return this.#applied(row)
    this.#applyGone(id, true)
    return undefined
  }

  /** Deletes the row `id`. */
  async delete (id: number): Promise<void> {
    await this.#write(this.#records.get(id)?.instance.name ?? String(id), async (client) => {
      await client.query(`insert into ${this.#removedTable} (id, name) select id, name from ${this.table} where id = $1 on conflict do nothing`, [id])
      await client.query(`delete from ${this.table} where id = $1`, [id])
    })
    this.#applyGone(id, true)
  }

  #applied (row: Row): StoredInstance {
    const applied = this.#applyRow(row, true, false)
    if (applied !== undefined) return applied
    const fresh = instanceOf(row)
    if (typeof fresh === 'string') throw new InvalidOptionsError(fresh)
    return fresh
  }

  /**
   * Holds `name` (its identifier: case, `.` and `-` ignored) across processes,
   * or returns `undefined` when another process or another call of this one
   * holds it. The lock is a session advisory lock on a connection of the
   * store's own, made on first use and kept: a process that dies lets go.
   */
  async lockName (name: string): Promise<NameLock | undefined> {
    if (this.#state !== 'open') throw new InvalidOptionsError('the instance store is not open: it opens with createTenancy()')
    const key = instanceIdentifier(name)
    // One session holds every lock of this process, and session locks stack: the set keeps two calls apart.
    if (this.#held.has(key)) return undefined
    this.#held.add(key)
    const values = [`fastify-tenancy:${this.tableName}`, key]
    let client: pg.Client
    try {
      client = await this.#lockConnection()
      const { rows } = await client.query<{ ok: boolean }>('select pg_try_advisory_lock(hashtext($1), hashtext($2)) as ok', values)
      if (rows[0]?.ok !== true) {
        this.#held.delete(key)
        return undefined
      }
    } catch (err) {
      this.#held.delete(key)
      throw Object.assign(new DatasourceUnavailableError(quote(name)), { cause: err })
    }
    let released = false
    return {
      release: async () => {
        if (released) return
        released = true
        // A lost connection has let go already.
        await client.query('select pg_advisory_unlock(hashtext($1), hashtext($2))', values).catch(() => {})
        this.#held.delete(key)
      },
    }
  }

  async #lockConnection (): Promise<pg.Client> {
    this.#locks ??= (async () => {
      const config = this.#connection!.client
      const client = new pg.Client({ keepAlive: true, ...config, application_name: `${config.application_name ?? 'fastify-tenancy instance store'} locks` })
      const lost = (): void => { if (this.#locks === made) this.#locks = undefined }
      client.on('error', lost)
      client.on('end', lost)
      try {
        await client.connect()
      } catch (err) {
        lost()
        await client.end().catch(() => {})
        throw err
      }
      if (this.#state !== 'open') {
        await client.end().catch(() => {})
        throw new InvalidOptionsError('the instance store was closed')
      }
      return client
    })()
    const made = this.#locks
    return await made
  }
}
