import type pg from 'pg'
import { DatasourceUnavailableError, InvalidOptionsError, quote } from '../errors.js'
import { chooseWaiter } from './session-affinity.js'

// pg-pool hands an idle client to a checkout on the next tick, and opens a
// client for a checkout it queued when no idle one is left by then: until
// then the idle one is promised and the new one is not counted yet.

/** Idle clients not promised to a checkout already. */
function spare (pool: pg.Pool): number {
  return pool.idleCount - pool.waitingCount
}

/** Clients open, being opened, or about to be opened for checkouts queued in pg-pool. */
function size (pool: pg.Pool): number {
  return pool.totalCount + Math.max(0, pool.waitingCount - pool.idleCount)
}

/**
 * While a datasource waits for room under the budget, another datasource
 * behind it in the round may go on using its own idle connections, at most
 * this many times, before one of them is closed for the one waiting: each
 * such checkout saves a connect (2–25 ms) and delays the waiting one by a
 * statement, and without it two busy datasources over a small budget close
 * and open a connection on nearly every checkout.
 */
const REUSES_WHILE_BLOCKED = 8

/**
 * Weight of the newest connect in the budget's running mean of connect
 * times: about the last ten connects count.
 */
const CONNECT_WEIGHT = 0.1

/** What the budget needs of a datasource's pool. */
export interface BudgetedPool {
  readonly datasource: string
  readonly pool: pg.Pool
  /** The pool's own cap (`max`): a checkout beyond it waits inside pg-pool, and opens nothing. */
  readonly max: number
  /** Order of last use, larger is more recent: among pools alike, the idle connections of the least recently used are closed first. */
  readonly useOrder: number
}

const wantsIdle = (waiter: Waiter): boolean => waiter.wants?.() === true
const passes = (waiter: Waiter): Waiter => waiter

interface Waiter {
  readonly entry: BudgetedPool
  readonly label: string
  /** Checks out of `entry.pool` (the pool manager's, with its session affinity). */
  readonly open: () => Promise<pg.PoolClient>
  /** Whether an idle connection of `entry.pool` already carries the session this checkout needs (session affinity). */
  readonly wants: (() => boolean) | undefined
  /** Later waiters of its datasource served before it because they wanted an idle connection's session. */
  overtaken: number
  /** When it began to wait (performance.now()): how long it has waited for its own pool's connections. */
  readonly since: number
  readonly resolve: (client: Promise<pg.PoolClient>) => void
  readonly reject: (err: Error) => void
  timer: NodeJS.Timeout | undefined
}

/** The budget's counters. */
export interface BudgetCounts {
  /** The most connections open at once, over every datasource. */
  max: number
  /** Connections open (or being opened) now, over every pool the budget sees. */
  open: number
  /** Checkouts waiting for room under the budget. */
  waiting: number
  /** Idle connections of another datasource being closed to make room. */
  closing: number
  /** Idle connections closed to make room, since start. */
  evictions: number
  /**
   * How long (ms) a checkout whose pool has connections, all checked out,
   * waits for one of them before an idle connection of another datasource
   * is closed for it: `growAfterMillis`, or the running mean of this
   * budget's connects.
   */
  growAfterMillis: number
}

/** Options of {@link ConnectionBudget}. */
export interface ConnectionBudgetOptions {
  /**
   * When every connection of the budget is open, a checkout whose own pool
   * already has connections, all checked out, waits this long for one of
   * them before an idle connection of another datasource is closed to open
   * one more for it. A checkout whose pool has none gets room at once. Waiting
   * for one's own connection costs a statement's time; closing another's
   * costs a connect now and likely another when that datasource returns.
   * Defaults to the running mean of the time this budget's connects took
   * (`0` until one is measured): waiting as long as a connect costs is never
   * worse than twice the better choice, whichever it turns out to be.
   */
  growAfterMillis?: number
}

/**
 * One limit on the connections of every datasource together: the server's
 * real limit (`max_connections` less what others use), where each pool's own
 * `max` only caps that datasource. A checkout that needs a new connection when
 * the budget is spent closes an idle connection (a datasource's second one
 * first, the least recently used first), or waits; one whose own pool has
 * connections (all checked out) first waits for one of them, up to
 * `growAfterMillis`, because a connection given back costs less than a
 * connect. Waiters queue per datasource and are served in turn, one
 * datasource after the other, so a busy datasource cannot starve a quiet
 * one; a newcomer never takes the room a waiter is owed. A waiter that gets
 * no room within `connectionTimeoutMillis` fails with 503
 * `TENANCY_DATASOURCE_UNAVAILABLE`.
 *
 * Made by the pool manager when `maxConnections` is set:
 *
 * ```ts
 * const tenancy = await createTenancy({ instances, datasources, maxConnections: 80, pool: { max: 10 } })
 * // 200 isolated instances, at most 80 connections open at once, 10 per database
 * ```
 */
export class ConnectionBudget {
  readonly #max: number
  readonly #pools: () => Iterable<BudgetedPool>
  // One FIFO per datasource, served round-robin in the order the datasources began to wait.
  readonly #queues = new Map<string, Waiter[]>()
  #waiting = 0
  #closing = 0
  #evictions = 0
  // Checkouts served from their own pool's idle connection while a waiter ahead of them waited for the budget.
  #reuses = 0
  readonly #growAfter: number | undefined
  // Running mean of the connects this budget opened (ms), undefined until the first.
  #connectMillis: number | undefined
  // One timer for the waiters that wait for their own pool: it wakes pump() when the first of them may grow.
  #wake: NodeJS.Timeout | undefined
  #wakeAt = Infinity

  /**
   * `pools` lists, whenever the budget needs to count or pick one, the pools
   * whose connections count: the open ones, and those being ended while some
   * of their connections are still checked out.
   */
  constructor (max: number, pools: () => Iterable<BudgetedPool>, options: ConnectionBudgetOptions = {}) {
    if (!Number.isSafeInteger(max) || max < 1) throw new InvalidOptionsError(`maxConnections must be a positive integer, not ${JSON.stringify(max)}`)
    const { growAfterMillis } = options
    if (growAfterMillis !== undefined && !(Number.isSafeInteger(growAfterMillis) && growAfterMillis >= 0)) {
      throw new InvalidOptionsError(`growAfterMillis must be a whole number of milliseconds, 0 or more, not ${JSON.stringify(growAfterMillis)}`)
    }
    this.#max = max
    this.#pools = pools
    this.#growAfter = growAfterMillis
  }

  /** How long a checkout whose pool has connections waits for one of them before another datasource's idle one is closed. */
  get growAfterMillis (): number {
    return this.#growAfter ?? this.#connectMillis ?? 0
  }

  /** Checkouts waiting for room. */
  get waiting (): number {
    return this.#waiting
  }

  /**
   * `open()` (`entry.pool.connect()` by default), once the budget has room
   * for the connection it may open. While anyone waits, every checkout queues
   * behind them (also one its pool could serve from an idle connection):
   * waiting happens here, never in pg-pool's own queue, so the turns stay
   * fair across datasources. A datasource's waiters are served in order,
   * but for session affinity: when its turn comes with an idle connection,
   * that goes to a waiter that `wants` it (one of the idle connections
   * carries its session), past each one before it at most 8 times, as in
   * pg-pool's queue.
   */
  async connect (entry: BudgetedPool, label: string, timeoutMillis: number, open: () => Promise<pg.PoolClient> = async () => await entry.pool.connect(), wants?: () => boolean): Promise<pg.PoolClient> {
    if (this.#waiting === 0) {
      if (spare(entry.pool) > 0) return await open()
      if (size(entry.pool) < entry.max && this.#open() < this.#max) return await this.#timed(open)
    }
    return await new Promise<Promise<pg.PoolClient>>((resolve, reject) => {
      const waiter: Waiter = { entry, label, open, wants, overtaken: 0, since: performance.now(), resolve, reject, timer: undefined }
      if (timeoutMillis > 0) {
        waiter.timer = setTimeout(() => {
          // Never false: every other way out of the queue clears this timer first. Kept so
          // that a timer can never take another waiter's place.
          if (!this.#remove(waiter)) return
          const cause = new Error(`No connection of datasource ${JSON.stringify(entry.datasource)} could be had for ${timeoutMillis} ms: its pool had all ${entry.max} checked out, or all ${this.#max} connections of the budget (maxConnections) were in use.`)
          reject(Object.assign(new DatasourceUnavailableError(quote(label)), { cause }))
        }, timeoutMillis)
      }
      let queue = this.#queues.get(entry.datasource)
      if (queue === undefined) {
        queue = []
        this.#queues.set(entry.datasource, queue)
      }
      queue.push(waiter)
      this.#waiting++
      this.pump()
    })
  }

  /**
   * Serves the waiters, one datasource after the other. A datasource whose
   * pool is at its own `max`, or has connections and has waited less than
   * {@link growAfterMillis}, waits for its own connections and lets the next
   * one go first; the first one that waits only for the budget stops the
   * round: an idle connection is closed (see {@link #evictOne})
   * for it, and those behind it may take only their own pools' idle
   * connections, {@link REUSES_WHILE_BLOCKED} times in all, until it is served
   * (else a busy datasource would take every connection it frees, and starve
   * a quiet one). The pool manager calls it whenever a connection goes back
   * to a pool or closes: either can make room.
   */
  pump (): void {
    round: while (this.#waiting > 0) {
      let blocked = false
      // The first datasource that waits for its own connections and could open one: it gets room nobody else wants.
      let patient: Waiter[] | undefined
      // Counting walks every pool; nothing opens or closes within one pass (a serve starts the next).
      let open: number | undefined
      for (const queue of this.#queues.values()) {
        const waiter = queue[0]!
        const pool = waiter.entry.pool
        if (!blocked) {
          if (spare(pool) > 0) {
            this.#reuses = 0
            this.#serve(queue, chooseWaiter(queue, wantsIdle, passes))
            continue round
          }
          if (size(pool) >= waiter.entry.max) continue
          // Its pool has connections: one given back soon costs less than a connect, and room
          // just made by closing an idle connection is owed to a datasource that has none.
          const waits = size(pool) > 0 && this.#waitsForOwn(waiter)
          open ??= this.#open()
          if (open < this.#max) {
            if (waits) {
              patient ??= queue
              continue
            }
            // Nobody ahead of it waits for the budget: a waiter that did has been served.
            this.#reuses = 0
            this.#serve(queue, 0, true)
            continue round
          }
          if (!waits) blocked = true
          continue
        }
        if (spare(pool) > 0 && this.#reuses < REUSES_WHILE_BLOCKED) {
          this.#reuses++
          this.#serve(queue, chooseWaiter(queue, wantsIdle, passes))
          continue round
        }
      }
      // With room, nobody was blocked.
      if (patient !== undefined) {
        this.#reuses = 0
        this.#serve(patient, 0, true)
        continue
      }
      if (blocked && this.#closing === 0) this.#evictOne()
      return
    }
  }

  #serve (queue: Waiter[], index: number, connects = false): void {
    const waiter = queue[index]!
    this.#take(waiter, index)
    // pg-pool counts a new client at once, so the next round sees it.
    waiter.resolve(connects ? this.#timed(waiter.open) : waiter.open())
  }

  /** `open()`, which makes a new connection: its time goes into the running mean. */
  #timed (open: () => Promise<pg.PoolClient>): Promise<pg.PoolClient> {
    const started = performance.now()
    const opening = open()
    opening.then(() => {
      const took = performance.now() - started
      this.#connectMillis = this.#connectMillis === undefined ? took : this.#connectMillis + CONNECT_WEIGHT * (took - this.#connectMillis)
    }, () => {})
    return opening
  }

  /**
   * Whether the waiter should wait for its own pool's connections still
   * (it has waited less than {@link growAfterMillis}); if so, pump() is woken
   * when it has waited long enough.
   */
  #waitsForOwn (waiter: Waiter): boolean {
    const at = waiter.since + this.growAfterMillis
    const now = performance.now()
    if (at <= now) return false
    if (at < this.#wakeAt) {
      if (this.#wake !== undefined) clearTimeout(this.#wake)
      this.#wakeAt = at
      this.#wake = setTimeout(() => {
        this.#wake = undefined
        this.#wakeAt = Infinity
        this.pump()
      }, Math.ceil(at - now))
    }
    return true
  }

  /** Fails every waiter (the manager is closing). */
  rejectAll (err: () => Error): void {
    if (this.#wake !== undefined) clearTimeout(this.#wake)
    this.#wake = undefined
    this.#wakeAt = Infinity
    for (const queue of this.#queues.values()) {
      for (const waiter of queue.splice(0)) {
        if (waiter.timer) clearTimeout(waiter.timer)
        waiter.reject(err())
      }
    }
    this.#queues.clear()
    this.#waiting = 0
  }

  /** Fails the waiters of one datasource (it was removed). */
  rejectDatasource (datasource: string, err: (label: string) => Error): void {
    const queue = this.#queues.get(datasource)
    if (queue === undefined) return
    this.#queues.delete(datasource)
    this.#waiting -= queue.length
    for (const waiter of queue) {
      if (waiter.timer) clearTimeout(waiter.timer)
      waiter.reject(err(waiter.label))
    }
  }

  /** The counters, in the manner of pg-pool's. */
  counts (): BudgetCounts {
    return { max: this.#max, open: this.#open(), waiting: this.#waiting, closing: this.#closing, evictions: this.#evictions, growAfterMillis: this.growAfterMillis }
  }

  #open (): number {
    let open = 0
    for (const entry of this.#pools()) open += size(entry.pool)
    return open
  }

  #take (waiter: Waiter, index: number): void {
    const queue = this.#queues.get(waiter.entry.datasource)!
    queue.splice(index, 1)
    this.#waiting--
    if (waiter.timer) clearTimeout(waiter.timer)
    // Its datasource goes to the back of the round: the others are served before its next waiter.
    this.#queues.delete(waiter.entry.datasource)
    if (queue.length > 0) this.#queues.set(waiter.entry.datasource, queue)
  }

  #remove (waiter: Waiter): boolean {
    const queue = this.#queues.get(waiter.entry.datasource)
    const index = queue?.indexOf(waiter) ?? -1
    if (index < 0) return false
    queue!.splice(index, 1)
    if (queue!.length === 0) this.#queues.delete(waiter.entry.datasource)
    this.#waiting--
    return true
  }

  /**
   * Closes one idle connection: of the least recently used pool that has
   * another connection open, else of the least recently used pool. A pool's
   * second connection only lets its datasource run more at once, while its
   * last one saves a connect on each of its next checkouts (and a datasource
   * that has one waits for it before growing, see {@link growAfterMillis}).
   * The connection is checked out (pg-pool hands over an idle one at once) and
   * given back destroyed, the only way pg-pool's public interface closes one.
   * False when no pool has one idle.
   */
  #evictOne (): boolean {
    let victim: BudgetedPool | undefined
    let victimKeeps = false
    // A pool with an idle connection has nobody waiting (pump served them first).
    for (const entry of this.#pools()) {
      if (spare(entry.pool) <= 0) continue
      const keeps = size(entry.pool) > 1
      if (victim === undefined || (keeps && !victimKeeps) || (keeps === victimKeeps && entry.useOrder < victim.useOrder)) {
        victim = entry
        victimKeeps = keeps
      }
    }
    if (victim === undefined) return false
    this.#closing++
    this.#evictions++
    victim.pool.connect().then((client) => {
      client.release(true)
    }, () => {}).finally(() => {
      this.#closing--
      this.pump()
    })
    return true
  }
}
