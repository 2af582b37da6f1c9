import pg from 'pg'
import { ClosedError, InvalidOptionsError, DatasourceUnavailableError, SessionError, quote } from '../errors.js'
import { SessionState, type SessionTarget } from './session-state.js'
import { ConnectionBudget, type BudgetCounts, type ConnectionBudgetOptions } from './connection-budget.js'
import { connectWithAffinity, failQueued, idleHolds, releaseWithAffinity } from './session-affinity.js'

const SERVER_DEFAULTS: SessionTarget = Object.freeze({ schema: null, role: null, settings: Object.freeze({}) })
// What a connection nobody has set anything on carries.
const FRESH_SESSION = new SessionState()

/** A datasource: a connection string or a pg `PoolConfig` (its `max`, `connectionTimeoutMillis`, … override {@link PoolSettings}). */
export type DatasourceConfig = string | pg.PoolConfig

/** Settings of each datasource's pg pool; a datasource's own `PoolConfig` overrides them. */
export interface PoolSettings {
  /** Clients per pool. Keep `maxPools × max` under the server's `max_connections`. Defaults to `10`. */
  max?: number
  /**
   * How long getting a client may take (connecting, or waiting for a free one)
   * before the request fails with 503 `TENANCY_DATASOURCE_UNAVAILABLE`. Without
   * it, a host that accepts TCP and never answers would hang requests forever.
   * Defaults to `5000`.
   */
  connectionTimeoutMillis?: number
  /** A client idle this long is closed. Defaults to `10000`. */
  idleTimeoutMillis?: number
  /** Idle clients do not keep the process alive. Defaults to `true`. */
  allowExitOnIdle?: boolean
}

/** Options of {@link PoolManager}. */
export interface PoolManagerOptions {
  /**
   * At most this many pools are open at once; opening another closes the least
   * recently used pool that has no client checked out, or waits (up to the
   * datasource's `connectionTimeoutMillis`) for one to become free.
   * Defaults to `10`, or no limit when `maxConnections` is set.
   */
  maxPools?: number
  /**
   * At most this many connections open at once over every datasource (the
   * server's `max_connections` less what other clients need); each pool's
   * `max` still caps its own datasource. A checkout that needs a connection
   * when all are open closes an idle connection (a datasource's second one
   * first, the least recently used first), or waits its turn (see
   * {@link ConnectionBudget}). Defaults to
   * no budget: only `maxPools × pool.max` bounds the connections.
   */
  maxConnections?: number
  /**
   * Under `maxConnections`, when every connection is open: how long a
   * checkout whose datasource has connections, all checked out, waits for
   * one of them before an idle connection of another datasource is closed
   * to open one more (see {@link ConnectionBudgetOptions}). Defaults to the
   * running mean of the budget's connect times.
   */
  growAfterMillis?: number
  /** A pool with no client checked out for this long is closed. Defaults to `60000`. */
  poolIdleTimeoutMillis?: number
  /** Settings for every datasource's pool. Defaults to {@link DEFAULT_POOL_SETTINGS}. */
  pool?: PoolSettings
}

/**
 * Whether `client` is known to be outside any transaction. pg settles a
 * failed query's promise on the server's error, and reads the transaction
 * status from the ready-for-query message after it, which may come in a later
 * packet: until then `getTransactionStatus()` still says what it said before
 * the query (`'I'` before `begin; select 1/0`, which leaves a failed
 * transaction open). A client still waiting for that message (pg's
 * `readyForQuery` false) is not known to be idle.
 *
 * ```ts
 * if (!settledIdle(client)) client.release(true) // the server rolls back whatever is open
 * ```
 */
export function settledIdle (client: pg.ClientBase): boolean {
  return client.getTransactionStatus() === 'I' && (client as { readyForQuery?: unknown }).readyForQuery !== false
}

/** The pool settings used where neither the options nor the datasource say otherwise. */
export const DEFAULT_POOL_SETTINGS: Readonly<Required<PoolSettings>> = Object.freeze({
  max: 10,
  connectionTimeoutMillis: 5000,
  idleTimeoutMillis: 10000,
  allowExitOnIdle: true,
})

/** The pool manager's counters, in the manner of pg-pool. */
export interface PoolCounts {
  /** Pools open now. */
  pools: number
  /** Clients connected, over all open pools. */
  open: number
  /** Clients connected and not checked out. */
  idle: number
  /** Callers waiting: for a client of an open pool, or for a pool slot under `maxPools`. */
  waiting: number
  /** Clients checked out or being connected for a caller. */
  leased: number
  /** The connection budget's counters, when `maxConnections` is set. */
  budget?: BudgetCounts
}

/** The state of one datasource's pool. */
export type PoolState = 'open' | 'ending' | 'ended'

/** What {@link PoolManager.status} reports about one pool. */
export interface PoolStatus extends Omit<PoolCounts, 'pools'> {
  datasource: string
  state: PoolState
}

interface Entry {
  readonly datasource: string
  readonly pool: pg.Pool
  /** The pool's own cap on its clients. */
  readonly max: number
  state: PoolState
  /** Checked-out clients plus connects in progress: a pool with leases is never closed. */
  leases: number
  lastUsed: number
  /** Order of last use: milliseconds tie too often to rank pools by. */
  useOrder: number
}

/**
 * A client checked out through the manager; give it back with
 * {@link PoolManager.release}. The manager that made it knows which pool it
 * came from; to anyone else it is only the client and its datasource.
 */
export interface Lease {
  readonly client: pg.PoolClient
  readonly datasource: string
}

interface SlotWaiter {
  readonly datasource: string
  readonly resolve: (entry: Entry) => void
  readonly reject: (err: Error) => void
  timer: NodeJS.Timeout
}

function defined<T extends object> (value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>
}

function positiveInteger (value: unknown): boolean {
  return Number.isSafeInteger(value) && (value as number) > 0
}

function checkSettings (settings: Record<string, unknown>, where: string): void {
  if (settings.max !== undefined && !positiveInteger(settings.max)) throw new InvalidOptionsError(`${where}: max must be a positive integer, not ${JSON.stringify(settings.max)}`)
  for (const key of ['connectionTimeoutMillis', 'idleTimeoutMillis'] as const) {
    const value = settings[key]
    if (value !== undefined && !(Number.isSafeInteger(value) && (value as number) >= 0)) {
      throw new InvalidOptionsError(`${where}: ${key} must be a whole number of milliseconds, not ${JSON.stringify(value)}`)
    }
  }
}

/**
 * Owns one pg pool per datasource. Pools open on first use, at most `maxPools`
 * at a time (the least recently used idle pool is closed to make room; a pool
 * with a client checked out never is), close after `poolIdleTimeoutMillis`
 * without use, and all end on {@link close}. Every pool's and client's `error`
 * event is handled: a client dying while idle must not end the process.
 *
 * ```ts
 * const pools = new PoolManager({ default: process.env.DATABASE_URL!, acme: { connectionString: '…', max: 2 } }, { maxPools: 20 })
 * const lease = await pools.acquire('acme', 'acme')
 * try { await lease.client.query('select 1') } finally { pools.release(lease) }
 * await pools.close()
 * ```
 */
export class PoolManager {
  readonly #configs = new Map<string, pg.PoolConfig>()
  // The settings every datasource starts from, for those added at run time.
  readonly #defaults: pg.PoolConfig
  readonly #entries = new Map<string, Entry>()
  // Pools being ended, until their end() settles: a connection still checked
  // out of one is open on the server until it is given back.
  readonly #ending = new Map<Entry, Promise<void>>()
  readonly #waiters: SlotWaiter[] = []
  readonly #maxPools: number
  readonly #poolIdleTimeoutMillis: number
  #sweeper: NodeJS.Timeout | undefined
  // Which pool each lease came from; a lease given back leaves the map, so a second release does nothing.
  readonly #leases = new WeakMap<Lease, Entry>()
  // What each connection's session carries, whoever set it: every routing
  // pool over this manager, and every lease, sees the same state.
  readonly #sessions = new WeakMap<pg.PoolClient, SessionState>()
  readonly #sessionOrFresh = (client: pg.PoolClient): SessionState => this.#sessions.get(client) ?? FRESH_SESSION
  readonly #budget: ConnectionBudget | undefined
  #state: 'open' | 'ending' | 'ended' = 'open'
  #uses = 0
  #evictions = 0
  #connects = 0

  constructor (datasources: Record<string, DatasourceConfig>, options: PoolManagerOptions = {}) {
    if (datasources === null || typeof datasources !== 'object') throw new InvalidOptionsError('datasources must be an object of connection strings or pg PoolConfigs')
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('the pool options must be an object')
    const { maxConnections, growAfterMillis, poolIdleTimeoutMillis = 60000, pool = {} } = options
    // With a budget, an open pool without connections costs nothing: only the connections are limited.
    const maxPools = options.maxPools ?? (maxConnections === undefined ? 10 : Number.MAX_SAFE_INTEGER)
    if (!positiveInteger(maxPools)) throw new InvalidOptionsError(`maxPools must be a positive integer, not ${JSON.stringify(maxPools)}`)
    if (!positiveInteger(poolIdleTimeoutMillis)) throw new InvalidOptionsError(`poolIdleTimeoutMillis must be a positive whole number of milliseconds, not ${JSON.stringify(poolIdleTimeoutMillis)}`)
    if (pool === null || typeof pool !== 'object') throw new InvalidOptionsError('pool must be an object of pool settings')
    checkSettings(pool as Record<string, unknown>, 'pool')
    this.#maxPools = maxPools
    this.#budget = maxConnections === undefined ? undefined : new ConnectionBudget(maxConnections,
      () => this.#ending.size === 0 ? this.#entries.values() : [...this.#entries.values(), ...this.#ending.keys()], { growAfterMillis })
    this.#poolIdleTimeoutMillis = poolIdleTimeoutMillis
    const defaults = { ...DEFAULT_POOL_SETTINGS, ...defined(pool) }
    this.#defaults = defaults
    for (const [name, config] of Object.entries(datasources)) {
      if (typeof config === 'string') {
        this.#configs.set(name, { ...defaults, connectionString: config })
      } else if (config !== null && typeof config === 'object') {
        checkSettings(config as Record<string, unknown>, `datasource ${JSON.stringify(name)}`)
        this.#configs.set(name, { ...defaults, ...defined(config) })
      } else {
        throw new InvalidOptionsError(`datasource ${JSON.stringify(name)} must be a connection string or a pg PoolConfig`)
      }
    }
    if (!this.#configs.has('default')) throw new InvalidOptionsError('datasources must include "default"')
  }

  /** The names of the configured datasources. */
  names (): IterableIterator<string> {
    return this.#configs.keys()
  }

  /**
   * Adds a datasource at run time, such as the database of an instance
   * created since start-up. Its pool opens on first use, with the manager's
   * pool settings unless a `PoolConfig` says otherwise. A name already
   * configured throws `TENANCY_INVALID_OPTIONS`.
   *
   * ```ts
   * pools.addDatasource('main/tenant_acme', 'postgres://app:secret@db1/tenant_acme')
   * ```
   */
  addDatasource (name: string, config: DatasourceConfig): void {
    if (this.#state !== 'open') throw new ClosedError('its connection pools cannot be used any more.')
    if (this.#configs.has(name)) throw new InvalidOptionsError(`datasource ${JSON.stringify(name)} is already configured`)
    if (typeof config === 'string') {
      this.#configs.set(name, { ...this.#defaults, connectionString: config })
    } else if (config !== null && typeof config === 'object') {
      checkSettings(config as Record<string, unknown>, `datasource ${JSON.stringify(name)}`)
      this.#configs.set(name, { ...this.#defaults, ...defined(config) })
    } else {
      throw new InvalidOptionsError(`datasource ${JSON.stringify(name)} must be a connection string or a pg PoolConfig`)
    }
  }

  /**
   * Removes a datasource (not `default`): it can no longer be leased, callers
   * waiting for a slot for it fail with 503, and its pool ends: idle clients
   * now, checked-out ones when given back; {@link close} waits for them.
   * An unknown name does nothing.
   */
  removeDatasource (name: string): void {
    if (name === 'default') throw new InvalidOptionsError('the default datasource cannot be removed')
    this.#configs.delete(name)
    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      const waiter = this.#waiters[i]!
      if (waiter.datasource !== name) continue
      this.#waiters.splice(i, 1)
      clearTimeout(waiter.timer)
      waiter.reject(new DatasourceUnavailableError(quote(name)))
    }
    this.#budget?.rejectDatasource(name, (label) => new DatasourceUnavailableError(quote(label)))
    const entry = this.#entries.get(name)
    if (entry !== undefined) this.#close(entry)
  }

  /** Pools closed to make room under `maxPools`, since start. */
  get evictions (): number {
    return this.#evictions
  }

  /**
   * Connections opened, over every pool, since start: with the reads or
   * requests served, how often a checkout paid for a connect (the miss rate
   * that sizes `maxConnections` and `maxPools`, see the README's Performance).
   */
  get connects (): number {
    return this.#connects
  }

  /** `open` until {@link close} is called, then `ending`, then `ended`. */
  get state (): 'open' | 'ending' | 'ended' {
    return this.#state
  }

  /**
   * Checks out a client of `datasource`'s pool, opening the pool if needed,
   * with its session at the server's defaults: a connection a routing pool
   * left with a schema, a role or settings is reset first (one round trip).
   * `label` names the instance in the 503 `TENANCY_DATASOURCE_UNAVAILABLE`
   * raised when the database cannot be reached in time. Give the client back
   * with `destroy` if you change its session.
   */
  async acquire (datasource: string, label: string = datasource): Promise<Lease> {
    const lease = await this.acquireAsIs(datasource, label, SERVER_DEFAULTS)
    const session = this.sessionOf(lease.client)
    const changes = session.changesTo(SERVER_DEFAULTS)
    if (changes === '') return lease
    try {
      await lease.client.query(changes)
    } catch (err) {
      this.release(lease, true)
      const refused = err instanceof pg.DatabaseError && !/^(?:08|57P)/.test(err.code ?? '')
      if (!refused) throw Object.assign(new DatasourceUnavailableError(quote(label)), { cause: err })
      throw Object.assign(new SessionError(`The session of a connection of datasource ${JSON.stringify(datasource)} could not be reset to the server's defaults (${changes}): ${err instanceof Error ? err.message : String(err)}. The connection was destroyed.`), { cause: err })
    }
    session.applied(SERVER_DEFAULTS)
    return lease
  }

  /**
   * @internal Checks out a client as its session stands; the routing pool
   * brings it to its target itself. With `target`, a client whose session
   * already is `target` is handed out before the others (see
   * {@link connectWithAffinity}), so that a schema instance's checkout needs
   * a round trip to switch less often.
   */
  async acquireAsIs (datasource: string, label: string = datasource, target?: SessionTarget): Promise<Lease> {
    const entry = this.#entry(datasource) ?? await this.#waitForSlot(datasource, label)
    try {
      const client = this.#budget === undefined
        ? await connectWithAffinity(entry.pool, target, this.#sessionOrFresh)
        : await this.#budget.connect(entry, label, this.#configs.get(datasource)?.connectionTimeoutMillis ?? DEFAULT_POOL_SETTINGS.connectionTimeoutMillis,
          () => connectWithAffinity(entry.pool, target, this.#sessionOrFresh),
          target === undefined ? undefined : () => idleHolds(entry.pool, target, this.#sessionOrFresh))
      const lease: Lease = { client, datasource }
      this.#leases.set(lease, entry)
      return lease
    } catch (err) {
      this.#drop(entry)
      // The budget's own refusals (timed out, datasource removed, closed) already say what happened.
      if (err instanceof DatasourceUnavailableError || err instanceof ClosedError) throw err
      throw Object.assign(new DatasourceUnavailableError(quote(label)), { cause: err })
    }
  }

  /**
   * Gives a client back. It is closed instead of pooled again when `destroy`
   * says its session is broken or unknown, or when a transaction is still open
   * or failed on it, or may be (see {@link settledIdle}): closing ends the
   * transaction on the server with a rollback, so it cannot run into the next
   * checkout. A lease given back twice, or by another manager, is ignored.
   */
  release (lease: Lease, destroy = false): void {
    const entry = this.#leases.get(lease)
    if (entry === undefined) return
    this.#leases.delete(lease)
    const discard = destroy || !settledIdle(lease.client)
    if (!discard) releaseWithAffinity(entry.pool, this.#sessionOrFresh(lease.client))
    lease.client.release(discard)
    this.#drop(entry)
  }

  /** @internal What `client`'s session carries, shared by everyone who checks it out. */
  sessionOf (client: pg.PoolClient): SessionState {
    let session = this.#sessions.get(client)
    if (session === undefined) {
      session = new SessionState()
      this.#sessions.set(client, session)
    }
    return session
  }

  /** Counters over every open pool. */
  counts (): PoolCounts {
    const counts: PoolCounts = { pools: this.#entries.size, open: 0, idle: 0, waiting: this.#waiters.length, leased: 0 }
    for (const entry of this.#entries.values()) {
      counts.open += entry.pool.totalCount
      counts.idle += entry.pool.idleCount
      counts.waiting += entry.pool.waitingCount
      counts.leased += entry.leases
    }
    if (this.#budget !== undefined) {
      counts.budget = this.#budget.counts()
      counts.waiting += counts.budget.waiting
    }
    return counts
  }

  /** One line per open pool. */
  status (): PoolStatus[] {
    return [...this.#entries.values()].map((entry) => ({
      datasource: entry.datasource,
      state: entry.state,
      open: entry.pool.totalCount,
      idle: entry.pool.idleCount,
      waiting: entry.pool.waitingCount,
      leased: entry.leases,
    }))
  }

  /** Ends every pool and fails everyone waiting for one. Safe to call twice. */
  async close (): Promise<void> {
    if (this.#state === 'open') {
      this.#state = 'ending'
      if (this.#sweeper) clearInterval(this.#sweeper)
      for (const waiter of this.#waiters.splice(0)) {
        clearTimeout(waiter.timer)
        waiter.reject(new ClosedError('this query was waiting for a connection pool, and none will be opened any more.'))
      }
      const closed = (): Error => new ClosedError('this query was waiting for a connection, and none will be opened any more.')
      this.#budget?.rejectAll(closed)
      for (const entry of [...this.#entries.values()]) this.#close(entry, closed)
    }
    while (this.#ending.size > 0) await Promise.allSettled([...this.#ending.values()])
    this.#state = 'ended'
  }

  /** The open entry of `datasource` with a lease taken, or undefined when the caller must wait for a slot. */
  #entry (datasource: string): Entry | undefined {
    if (this.#state !== 'open') throw new ClosedError('its connection pools cannot be used any more.')
    const existing = this.#entries.get(datasource)
    if (existing) return this.#lease(existing)
    const config = this.#configs.get(datasource)
    if (!config) throw new InvalidOptionsError(`datasource ${JSON.stringify(datasource)} is not configured`)
    // Waiters are served first: a newcomer must not take the slot they wait for.
    if (this.#waiters.length > 0) return undefined
    if (this.#entries.size >= this.#maxPools) {
      const victim = this.#leastRecentlyUsedIdle()
      if (!victim) return undefined
      this.#close(victim)
      this.#evictions++
    }
    return this.#lease(this.#open(datasource, config))
  }

  #lease (entry: Entry): Entry {
    entry.leases++
    entry.lastUsed = Date.now()
    entry.useOrder = ++this.#uses
    return entry
  }

  async #waitForSlot (datasource: string, label: string): Promise<Entry> {
    const timeout = this.#configs.get(datasource)!.connectionTimeoutMillis ?? DEFAULT_POOL_SETTINGS.connectionTimeoutMillis
    return await new Promise<Entry>((resolve, reject) => {
      const waiter: SlotWaiter = {
        datasource,
        resolve,
        reject,
        timer: setTimeout(() => {
          const index = this.#waiters.indexOf(waiter)
          if (index >= 0) this.#waiters.splice(index, 1)
          const cause = new Error(`All ${this.#maxPools} connection pools (maxPools) had clients checked out for ${timeout} ms, so no pool could be opened for datasource ${JSON.stringify(datasource)}.`)
          reject(Object.assign(new DatasourceUnavailableError(quote(label)), { cause }))
        }, timeout),
      }
      this.#waiters.push(waiter)
    })
  }

  /** A lease ended: an idle pool is handed to the first waiter for a slot. */
  #drop (entry: Entry): void {
    entry.leases--
    entry.lastUsed = Date.now()
    entry.useOrder = ++this.#uses
    if (entry.leases === 0 && this.#waiters.length > 0 && entry.state === 'open') this.#grant(entry)
  }

  // Runs synchronously, so nobody can take the freed slot between the close and the open.
  #grant (idle: Entry): void {
    while (this.#waiters.length > 0) {
      const first = this.#waiters.shift()!
      clearTimeout(first.timer)
      const existing = this.#entries.get(first.datasource)
      // Not reached today (a newcomer never opens a pool while anyone waits, and the
      // waiters of the pool opened below are served with it); kept so that a waiter can
      // never get a second pool of a datasource that has one.
      if (existing) {
        first.resolve(this.#lease(existing))
        continue
      }
      this.#close(idle)
      this.#evictions++
      const entry = this.#open(first.datasource, this.#configs.get(first.datasource)!)
      first.resolve(this.#lease(entry))
      for (let i = this.#waiters.length - 1; i >= 0; i--) {
        const waiter = this.#waiters[i]!
        if (waiter.datasource !== first.datasource) continue
        this.#waiters.splice(i, 1)
        clearTimeout(waiter.timer)
        waiter.resolve(this.#lease(entry))
      }
      return
    }
  }

  #leastRecentlyUsedIdle (): Entry | undefined {
    let victim: Entry | undefined
    for (const entry of this.#entries.values()) {
      if (entry.leases === 0 && (!victim || entry.useOrder < victim.useOrder)) victim = entry
    }
    return victim
  }

  #open (datasource: string, config: pg.PoolConfig): Entry {
    const pool = new pg.Pool(config)
    // An idle client whose server goes away emits 'error' on the pool; pg-pool
    // drops the client, and without a listener the process would crash.
    pool.on('error', () => {})
    // A checked-out client that dies between queries emits 'error' on itself;
    // its next query fails and the routing pool discards it.
    pool.on('connect', (client) => {
      this.#connects++
      client.on('error', () => {})
    })
    const budget = this.#budget
    if (budget !== undefined) {
      // A client given back is idle only after pg-pool's release returns; a closed one has left the count.
      pool.on('release', () => { if (budget.waiting > 0) queueMicrotask(() => { budget.pump() }) })
      pool.on('remove', () => { budget.pump() })
    }
    const entry: Entry = { datasource, pool, max: config.max ?? DEFAULT_POOL_SETTINGS.max, state: 'open', leases: 0, lastUsed: Date.now(), useOrder: ++this.#uses }
    this.#entries.set(datasource, entry)
    this.#sweeper ??= this.#startSweeper()
    return entry
  }

  /** Ends a pool; the checkouts waiting in its queue fail at once with `reason()` (pg-pool's end() would serve none). */
  #close (entry: Entry, reason: () => Error = () => new DatasourceUnavailableError(quote(entry.datasource))): void {
    // Closing twice would end the pool twice and count it twice in #ending; no caller does today.
    if (entry.state !== 'open') return
    entry.state = 'ending'
    this.#entries.delete(entry.datasource)
    failQueued(entry.pool, reason)
    this.#ending.set(entry, entry.pool.end().catch(() => {}).then(() => {
      entry.state = 'ended'
      this.#ending.delete(entry)
    }))
  }

  #startSweeper (): NodeJS.Timeout {
    const every = Math.min(Math.max(Math.floor(this.#poolIdleTimeoutMillis / 2), 50), 30000)
    const sweeper = setInterval(() => {
      const before = Date.now() - this.#poolIdleTimeoutMillis
      for (const entry of [...this.#entries.values()]) {
        if (entry.leases !== 0 || entry.lastUsed > before) continue
        // #drop already hands a pool whose last lease ends to the waiters, so none wait
        // here today; if one did, closing the pool without serving it would strand it.
        if (this.#waiters.length > 0) this.#grant(entry)
        else this.#close(entry)
      }
    }, every)
    sweeper.unref()
    return sweeper
  }
}
