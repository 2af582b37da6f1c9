import pg from 'pg'
import type { Instance } from '../instances/instance.js'
import type { InstanceStore } from '../instances/instance-registry.js'
import { DEFAULT_POOL_SETTINGS, type DatasourceConfig, type PoolManager, type PoolSettings } from '../routing/pool-manager.js'
import { CATALOG_RELATIONS, TenantTables, discoverTenantTables, type CatalogQueryable } from './tenant-tables.js'

/** The channel the event trigger notifies on every DDL command. */
export const CATALOG_CHANNEL = 'tenancy_catalog'

/**
 * The `application_name` of the watching connections, to tell them apart in
 * `pg_stat_activity`; once connected, `: listen` or `: poll` is added.
 */
export const CATALOG_WATCH_APPLICATION = 'fastify-tenancy catalog watch'

/**
 * The statements that create the event trigger the watcher listens to: after
 * every DDL command (`ddl_command_end`, which also follows every DROP), the
 * trigger notifies `tenancy_catalog` with the command tag, on commit. Run
 * them once per database as a superuser (only superusers may create event
 * triggers) when the application's login is not one; a superuser login
 * creates them itself. They can be run again.
 *
 * ```ts
 * catalogTriggerStatements()
 * // create or replace function public.tenancy_catalog_notify() returns event_trigger language plpgsql
 * //   set search_path = pg_catalog as $$ begin perform pg_catalog.pg_notify('tenancy_catalog', tg_tag); end $$
 * // drop event trigger if exists tenancy_catalog
 * // create event trigger tenancy_catalog on ddl_command_end execute function public.tenancy_catalog_notify()
 * ```
 */
export function catalogTriggerStatements (): string[] {
  return [
    'create or replace function public.tenancy_catalog_notify() returns event_trigger language plpgsql ' +
      `set search_path = pg_catalog as $$ begin perform pg_catalog.pg_notify('${CATALOG_CHANNEL}', tg_tag); end $$`,
    `drop event trigger if exists ${CATALOG_CHANNEL}`,
    `create event trigger ${CATALOG_CHANNEL} on ddl_command_end execute function public.tenancy_catalog_notify()`,
  ]
}

/** A change is seen within this long, or the queries it may affect are refused. */
const STALE_MILLIS = 1000
/** How often the catalog fingerprint is read where no event trigger exists. */
const POLL_MILLIS = 400
/** Notifications that arrive together (a migration's commands) make one discovery. */
const DEBOUNCE_MILLIS = 20
const RETRY_MILLIS = 200
/** A datasource that could not be read is tried again this often. */
const RETRY_FAILED_MILLIS = 1000
const DISCOVERY_CONCURRENCY = 4
// Any fixed key: it serialises the creation of the event trigger between processes.
const TRIGGER_LOCK = 0x74656e61

const FINGERPRINT = `select md5(coalesce(string_agg(r.oid::text || ' ' || r.schema || '.' || r.name || ' ' || r.relkind::text || ' ' || coalesce(r.not_null::text, '-'), ',' order by r.oid), '')) as fingerprint
  from (${CATALOG_RELATIONS}) r`

async function fingerprint (client: CatalogQueryable, tenantColumn: string): Promise<string> {
  return String((await client.query(FINGERPRINT, [tenantColumn])).rows[0]?.fingerprint)
}

/** Whether the event trigger is there and fires for ordinary sessions; a superuser creates it first if it is not. */
async function ensureTrigger (client: pg.Client): Promise<boolean> {
  const enabled = async (): Promise<boolean> => (await client.query(`select evtenabled in ('O', 'A') as on from pg_catalog.pg_event_trigger where evtname = $1`, [CATALOG_CHANNEL])).rows[0]?.on === true
  if (await enabled()) return true
  if ((await client.query("select current_setting('is_superuser') = 'on' as superuser")).rows[0]?.superuser !== true) return false
  try {
    await client.query('begin')
    await client.query('select pg_catalog.pg_advisory_xact_lock($1)', [TRIGGER_LOCK])
    const exists = (await client.query('select 1 from pg_catalog.pg_event_trigger where evtname = $1', [CATALOG_CHANNEL])).rows.length > 0
    // One that exists but is disabled was disabled on purpose: it is left so.
    if (!exists) for (const statement of catalogTriggerStatements()) await client.query(statement)
    await client.query('commit')
  } catch {
    await client.query('rollback').catch(() => {})
    return false
  }
  return await enabled()
}

/** A pg `Client` config for one datasource, from its pool config. */
function clientConfig (config: DatasourceConfig, pool: PoolSettings | undefined): pg.ClientConfig {
  const base = typeof config === 'string' ? { connectionString: config } : { ...config }
  return {
    ...base,
    connectionTimeoutMillis: base.connectionTimeoutMillis ?? pool?.connectionTimeoutMillis ?? DEFAULT_POOL_SETTINGS.connectionTimeoutMillis,
    application_name: CATALOG_WATCH_APPLICATION,
    keepAlive: true,
  }
}

type Referable = pg.Client & { ref?: () => void, unref?: () => void }
const busy = new WeakMap<pg.Client, number>()

/**
 * Runs a query on a connection that is otherwise left unreferenced, so that an
 * idle watcher never keeps the process alive, but one that is awaited does.
 */
async function referenced<T> (client: pg.Client, run: () => Promise<T>): Promise<T> {
  const referable: Referable = client
  busy.set(client, (busy.get(client) ?? 0) + 1)
  referable.ref?.()
  try {
    return await run()
  } finally {
    const left = busy.get(client)! - 1
    busy.set(client, left)
    if (left === 0) referable.unref?.()
  }
}

/** One datasource's watching connection: LISTEN where the event trigger is, a fingerprint poll where it is not. */
class CatalogListener {
  readonly datasource: string
  readonly #config: pg.ClientConfig
  readonly #watcher: TableWatcher
  #client: pg.Client | undefined
  #mode: 'listen' | 'poll' | undefined
  #fingerprint: string | undefined
  #timer: NodeJS.Timeout | undefined
  // Since when changes may be going unseen: not yet connected, or lost.
  #downSince: number | undefined = Date.now()
  #closed = false

  constructor (datasource: string, config: pg.ClientConfig, watcher: TableWatcher) {
    this.datasource = datasource
    this.#config = config
    this.#watcher = watcher
  }

  /** True while a change to this datasource's catalog may have gone unseen for too long. */
  get stale (): boolean {
    return this.#downSince !== undefined && Date.now() - this.#downSince > STALE_MILLIS
  }

  /** The open connection, for discovery: it never waits for a pool. */
  get client (): CatalogQueryable | undefined {
    const client = this.#mode === undefined ? undefined : this.#client
    if (client === undefined) return undefined
    return { query: async (text, values) => await referenced(client, async () => await client.query(text, values)) }
  }

  /** Connects once; on failure, keeps trying in the background. */
  async start (): Promise<void> {
    if (!await this.#connect()) this.#retry()
  }

  async #connect (): Promise<boolean> {
    const client = new pg.Client(this.#config)
    client.on('error', () => { this.#lost(client) })
    client.on('end', () => { this.#lost(client) })
    this.#client = client
    try {
      await client.connect()
      const mode = await ensureTrigger(client) ? 'listen' : 'poll'
      await client.query('select pg_catalog.set_config($1, $2, false)', ['application_name', `${CATALOG_WATCH_APPLICATION}: ${mode}`])
      if (mode === 'listen') {
        client.on('notification', (message) => { if (message.channel === CATALOG_CHANNEL) this.#watcher.changed(this.datasource) })
        await client.query(`listen ${CATALOG_CHANNEL}`)
      } else {
        this.#fingerprint = await fingerprint(client, this.#watcher.tenantColumn)
        this.#schedulePoll(client)
      }
      this.#mode = mode
      if (this.#closed || this.#client !== client) throw new Error('closed while connecting')
      // Like the pools' idle clients (allowExitOnIdle), it never keeps the process alive.
      if (!busy.get(client)) (client as Referable).unref?.()
    } catch {
      if (this.#client === client) this.#client = undefined
      this.#mode = undefined
      client.end().catch(() => {})
      return false
    }
    this.#downSince = undefined
    // Whatever changed while there was no connection was not notified.
    this.#watcher.changed(this.datasource)
    return true
  }

  #schedulePoll (client: pg.Client): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      referenced(client, async () => await fingerprint(client, this.#watcher.tenantColumn)).then((next) => {
        if (this.#closed || this.#client !== client) return
        if (next !== this.#fingerprint) {
          this.#fingerprint = next
          this.#watcher.changed(this.datasource)
        }
        this.#schedulePoll(client)
      }, () => { this.#lost(client) })
    }, POLL_MILLIS)
    this.#timer.unref()
  }

  #lost (client: pg.Client): void {
    if (this.#client !== client) return
    this.#client = undefined
    this.#mode = undefined
    this.#downSince ??= Date.now()
    client.end().catch(() => {})
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    if (!this.#closed) this.#retry(0)
  }

  #retry (delay = RETRY_MILLIS): void {
    if (this.#closed || this.#timer !== undefined) return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      // A retry timer that the poll timer replaced (a loss while connecting), which close() cannot clear.
      if (this.#closed) return
      this.#connect().then((connected) => { if (!connected) this.#retry() }, () => { this.#retry() })
    }, delay)
    this.#timer.unref()
  }

  async close (): Promise<void> {
    this.#closed = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#timer = undefined
    const client = this.#client
    this.#client = undefined
    this.#mode = undefined
    if (client === undefined) return
    // Referenced, so that the process waits for the end it asked for.
    const referable: Referable = client
    referable.ref?.()
    await client.end().catch(() => {})
  }
}

/** Options of {@link TableWatcher}. */
export interface TableWatcherOptions {
  /** The pools discovery reads through where no watching connection is open. */
  pools: PoolManager
  /** The instances, whose datasources discovery reads. */
  instances: InstanceStore
  /** The tenant column. */
  tenantColumn: string
  /** The instance of the current context, to tell on which datasource a query runs. */
  context: () => Instance | undefined
  /** Receives each new set of tenant tables. */
  publish: (tables: TenantTables) => void
}

/**
 * Discovers the tenant tables on every datasource an instance uses and keeps
 * them current. `discover()` reads the catalog of each (the `default`
 * datasource, isolated instances' `isolateClient`s, schema instances'
 * datasources) and merges them: a table is a tenant table if it is one in any
 * of them. A datasource that cannot be read is left out, and queries of its
 * instances may then name only tenant tables (every other table is refused
 * with `TENANCY_UNKNOWN_TABLE`) until a discovery reads it; the `default`
 * datasource must be readable.
 *
 * `watch()` follows changes made by any process: one connection per watched
 * datasource (`default`, and every datasource that two or more instances
 * share: in one that holds a single instance's rows, a missed change cannot
 * cross instances), outside the pools, listening to the event trigger of
 * {@link catalogTriggerStatements} (created if the login is a superuser) or,
 * without it, reading a catalog fingerprint every 400 ms. A change starts a
 * discovery of that datasource within milliseconds; while its connection is
 * down or its discovery fails for more than a second, its instances' queries
 * are refused as above.
 *
 * ```ts
 * const watcher = new TableWatcher({ pools, instances, tenantColumn: 'iid', context: () => tenancy.currentInstance(), publish: (tables) => { current = tables } })
 * await watcher.discover()
 * await watcher.watch({ default: process.env.DATABASE_URL })
 * // …
 * await watcher.close()
 * ```
 */
export class TableWatcher {
  readonly tenantColumn: string
  readonly #options: TableWatcherOptions
  // Each datasource's own tables, from its last successful read.
  readonly #parts = new Map<string, TenantTables>()
  readonly #listeners = new Map<string, CatalogListener>()
  // Datasources with a change not yet discovered (or a read that failed), and since when.
  readonly #pending = new Map<string, number>()
  readonly #timers = new Map<string, { timer: NodeJS.Timeout, at: number }>()
  // Reads of one datasource run one at a time, so that an older read never
  // replaces a newer one; reads of different datasources do not wait for
  // each other (one that cannot be reached must not hold up the others).
  readonly #queues = new Map<string, Promise<unknown>>()
  readonly #refreshing = new Map<string, Promise<void>>()
  #configs: ((datasource: string) => pg.ClientConfig | undefined) | undefined
  #closed = false

  constructor (options: TableWatcherOptions) {
    this.#options = options
    this.tenantColumn = options.tenantColumn
  }

  /**
   * Reads every datasource an instance uses, then publishes and returns the
   * merged tables. Throws when the `default` datasource cannot be read.
   */
  async discover (): Promise<TenantTables> {
    const names = this.#datasources()
    let failure: unknown
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < names.length) {
        const name = names[next++]!
        try {
          await this.#read(name)
        } catch (err) {
          if (name === 'default') failure = err
          this.changed(name, RETRY_FAILED_MILLIS)
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(DISCOVERY_CONCURRENCY, names.length) }, worker))
    if (failure !== undefined) throw failure
    const tables = this.#publish()
    await this.#syncListeners()
    return tables
  }

  /**
   * Starts following catalog changes on the watched datasources, from their
   * configurations; resolves once each has connected (or failed to, and keeps
   * trying) and a discovery has covered what changed before.
   */
  async watch (datasources: Record<string, DatasourceConfig>, pool?: PoolSettings): Promise<void> {
    this.#configs = (name) => datasources[name] === undefined ? undefined : clientConfig(datasources[name]!, pool)
    await this.#syncListeners()
    await Promise.all([...this.#listeners.keys()].map(async (name) => await this.#refresh(name)))
  }

  /** Stops watching and closes the watching connections. Safe to call twice. */
  async close (): Promise<void> {
    this.#closed = true
    for (const { timer } of this.#timers.values()) clearTimeout(timer)
    this.#timers.clear()
    await this.#closeListeners()
  }

  /** @internal `datasource`'s catalog changed, may have changed unseen, or was never read: read it after `delay`. */
  changed (datasource: string, delay = DEBOUNCE_MILLIS): void {
    if (this.#closed) return
    if (!this.#pending.has(datasource)) this.#pending.set(datasource, Date.now())
    const at = Date.now() + delay
    const scheduled = this.#timers.get(datasource)
    if (scheduled !== undefined) {
      if (scheduled.at <= at) return
      clearTimeout(scheduled.timer)
    }
    const timer = setTimeout(() => {
      this.#timers.delete(datasource)
      void this.#refresh(datasource)
    }, delay)
    timer.unref()
    this.#timers.set(datasource, { timer, at })
  }

  /** Reads `datasource` if a change is pending; what could not be read stays pending and is tried again. */
  async #refresh (datasource: string): Promise<void> {
    const running = this.#refreshing.get(datasource)
    if (running !== undefined) return await running
    if (this.#closed || !this.#pending.has(datasource)) return
    const run = (async () => {
      const started = Date.now()
      try {
        await this.#read(datasource)
      } catch {
        this.#refreshing.delete(datasource)
        this.changed(datasource, RETRY_FAILED_MILLIS)
        return
      }
      // Pending: only this run, which no other runs beside, removes the mark.
      if (this.#pending.get(datasource)! <= started) this.#pending.delete(datasource)
      this.#refreshing.delete(datasource)
      this.#publish()
      await this.#syncListeners()
      // A change that came during the read.
      if (this.#pending.has(datasource)) this.changed(datasource)
    })()
    this.#refreshing.set(datasource, run)
    await run
  }

  /** `default` first, then every other datasource an instance uses. */
  #datasources (): string[] {
    const names = new Set(['default'])
    for (const instance of this.#options.instances.list()) names.add(instance.datasource)
    return [...names]
  }

  /** Reads one datasource's catalog, after any read of it that is still running. */
  async #read (datasource: string): Promise<void> {
    const previous = this.#queues.get(datasource) ?? Promise.resolve()
    const run = previous.then(async () => {
      const own = this.#listeners.get(datasource)?.client
      if (own !== undefined) return await discoverTenantTables(own, this.tenantColumn)
      const lease = await this.#options.pools.acquire(datasource)
      try {
        return await discoverTenantTables(lease.client, this.tenantColumn)
      } finally {
        this.#options.pools.release(lease)
      }
    })
    const settled = run.then(() => {}, () => {})
    this.#queues.set(datasource, settled)
    void settled.then(() => { if (this.#queues.get(datasource) === settled) this.#queues.delete(datasource) })
    // A failed read keeps the last good one: its pending change makes it stale after a second.
    this.#parts.set(datasource, await run)
  }

  /** Merges the last read of every datasource an instance uses and hands it to `publish`. */
  #publish (): TenantTables {
    const current = new Set(this.#datasources())
    for (const name of this.#parts.keys()) if (!current.has(name)) this.#parts.delete(name)
    const tables = TenantTables.merge(this.#parts.values(), {
      scanned: new Set(this.#parts.keys()),
      current: () => this.#options.context()?.datasource ?? 'default',
      stale: (datasource) => this.#stale(datasource),
      unread: (datasource) => { if (!this.#pending.has(datasource)) this.changed(datasource) },
    })
    if (!this.#closed) this.#options.publish(tables)
    return tables
  }

  #stale (datasource: string): boolean {
    if (this.#listeners.get(datasource)?.stale === true) return true
    const since = this.#pending.get(datasource)
    return since !== undefined && Date.now() - since > STALE_MILLIS
  }

  async #closeListeners (): Promise<void> {
    const listeners = [...this.#listeners.values()]
    this.#listeners.clear()
    await Promise.all(listeners.map(async (listener) => await listener.close()))
  }

  /** Opens a listener for every watched datasource and closes those no longer watched. */
  async #syncListeners (): Promise<void> {
    if (this.#closed || this.#configs === undefined) return
    const counts = new Map<string, number>()
    for (const instance of this.#options.instances.list()) counts.set(instance.datasource, (counts.get(instance.datasource) ?? 0) + 1)
    const watched = new Set(['default', ...[...counts].filter(([, n]) => n >= 2).map(([name]) => name)])
    for (const [name, listener] of this.#listeners) {
      if (watched.has(name)) continue
      this.#listeners.delete(name)
      await listener.close()
    }
    const starting: Array<Promise<void>> = []
    for (const name of watched) {
      const config = this.#configs(name)
      if (this.#listeners.has(name) || config === undefined) continue
      const listener = new CatalogListener(name, config, this)
      this.#listeners.set(name, listener)
      starting.push(listener.start())
    }
    await Promise.all(starting)
    // close() may have come while they connected.
    if (this.#closed) await this.#closeListeners()
  }
}
