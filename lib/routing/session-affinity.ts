import type pg from 'pg'
import type { SessionState, SessionTarget } from './session-state.js'

// pg-pool has no way to ask for a particular client, nor to hand a client to a
// particular waiter, so affinity reorders pg-pool's own lists: `_idle` (the
// clients not checked out, the one taken back last at the end, handed out
// first) and `_pendingQueue` (the checkouts waiting for a client, served from
// the front). Without either field nothing is preferred and pg-pool's order
// stands; test/session-affinity.test.ts fails when a pg-pool release changes
// them. Which client a checkout gets never decides what its session is: the
// routing pool still compares the session with what the checkout needs.
// The same lists tell when an idle client is promised to a checkout, which
// then needs no checkout timer (see connectPromised).
interface IdleItem { readonly client: pg.PoolClient }
type PendingItem = object
interface Lists { _idle?: unknown, _pendingQueue?: unknown, options?: { connectionTimeoutMillis?: number } }

/**
 * A waiter may be passed by this many later checkouts that wanted the
 * session of the client just given back, and then by none: affinity saves a
 * round trip each time, and must not make anyone wait without bound.
 */
const OVERTAKES = 8
/** How far into pg-pool's queue a client given back looks for a checkout that wants its session. */
const LOOKAHEAD = 64

interface Wanted {
  /** The session the checkout wants; `undefined` for a checkout that takes any (the budget closing an idle one). */
  readonly target: SessionTarget | undefined
  overtaken: number
}
const waiting = new WeakMap<PendingItem, Wanted>()

function idleOf (pool: pg.Pool): IdleItem[] | undefined {
  const idle = (pool as unknown as Lists)._idle
  return Array.isArray(idle) ? idle as IdleItem[] : undefined
}

function queueOf (pool: pg.Pool): PendingItem[] | undefined {
  const queue = (pool as unknown as Lists)._pendingQueue
  return Array.isArray(queue) ? queue as PendingItem[] : undefined
}

/**
 * `pool.connect()` for a checkout that wants `target`: an idle client whose
 * session {@link SessionState.holds} it is handed out before the others
 * (the most recently used of them); with none idle, the checkout waits in
 * pg-pool's queue marked with `target`, so that a client given back with
 * that session may go to it first (see {@link releaseWithAffinity}).
 *
 * ```ts
 * // a schema instance's checkout: a connection whose search_path is its schema, if one is idle
 * const client = await connectWithAffinity(pool, target, (client) => sessions.get(client))
 * ```
 */
export function connectWithAffinity (pool: pg.Pool, target: SessionTarget | undefined, sessionOf: (client: pg.PoolClient) => SessionState): Promise<pg.PoolClient> {
  // Not async: every checkout passes here, and each await costs ticks.
  const idle = idleOf(pool)
  // While others wait in pg-pool's queue the next idle client is theirs.
  if (target !== undefined && idle !== undefined && idle.length > 1 && pool.waitingCount === 0) {
    const i = heldAt(idle, target, sessionOf)
    if (i >= 0 && i !== idle.length - 1) idle.push(idle.splice(i, 1)[0]!)
  }
  const queued = pool.waitingCount
  if (idle !== undefined && idle.length > queued) {
    // Not marked: an idle client is promised to it on the next tick, and an
    // unmarked waiter is neither moved ahead nor passed (chooseWaiter), so
    // pg-pool's order stands for it. A mark is a WeakMap entry whose key dies
    // a tick later: about 0.55 µs of client CPU per checkout, half the routing
    // pool's own cost (bench/RESULTS.md, "No mark for a promised checkout").
    return connectPromised(pool)
  }
  const client = pool.connect()
  const queue = queueOf(pool)
  // pg-pool queues the checkout at once when it cannot open a client for it.
  if (queue !== undefined && pool.waitingCount === queued + 1) waiting.set(queue[queue.length - 1]!, { target, overtaken: 0 })
  return client
}

/**
 * Just before `client` (whose session is `session`) goes back to `pool`:
 * when the checkout at the front of pg-pool's queue does not want this
 * session and a later one within {@link LOOKAHEAD} does, that one moves to
 * the front and gets the client, unless it would pass a checkout already
 * passed {@link OVERTAKES} times.
 */
export function releaseWithAffinity (pool: pg.Pool, session: SessionState): void {
  const queue = queueOf(pool)
  if (queue === undefined || queue.length < 2) return
  const i = chooseWaiter(queue, (item) => {
    const target = waiting.get(item)?.target
    return target !== undefined && session.holds(target)
  }, (item) => waiting.get(item))
  if (i > 0) queue.unshift(queue.splice(i, 1)[0]!)
}

/**
 * `pool.connect()` when an idle client is promised to it (more are idle than
 * wait): pg-pool queues the checkout and serves it on the next tick, before
 * any timer or I/O callback could take that client away, so the checkout
 * timeout pg-pool would arm and clear (`connectionTimeoutMillis`, a timer on
 * every checkout) is left out. Only `pool.end()` in the same tick can strand
 * such a checkout: {@link failQueued} ends those. The option is pg-pool's
 * own object, read only while `connect()` queues (it never opens a client
 * while one is idle, so the connect timeout of a new client is not touched).
 */
function connectPromised (pool: pg.Pool): Promise<pg.PoolClient> {
  const options = (pool as unknown as Lists).options
  const timeout = options?.connectionTimeoutMillis
  if (options === undefined || timeout === undefined || timeout === 0) return pool.connect()
  options.connectionTimeoutMillis = 0
  try {
    return pool.connect()
  } finally {
    options.connectionTimeoutMillis = timeout
  }
}

/** Fails every checkout waiting in pg-pool's queue with `err()`: after `pool.end()` pg-pool serves none of them. */
export function failQueued (pool: pg.Pool, err: () => Error): void {
  const queue = queueOf(pool)
  if (queue === undefined) return
  for (const item of queue.splice(0)) {
    const callback = (item as { callback?: unknown }).callback
    if (typeof callback === 'function') callback(err())
  }
}

/** Whether an idle client of `pool` has a session that holds `target`. */
export function idleHolds (pool: pg.Pool, target: SessionTarget, sessionOf: (client: pg.PoolClient) => SessionState): boolean {
  const idle = idleOf(pool)
  return idle !== undefined && heldAt(idle, target, sessionOf) >= 0
}

/**
 * Which of `queue` (served from the front) gets a connection now: the first
 * within {@link LOOKAHEAD} that `wants` it, when those before it have been
 * passed fewer than {@link OVERTAKES} times (they are passed once more), else
 * the front one. A waiter without a record (`passes` gives `undefined`) is
 * never passed. Shared by pg-pool's queue and the connection budget's.
 */
export function chooseWaiter<T> (queue: readonly T[], wants: (waiter: T) => boolean, passes: (waiter: T) => { overtaken: number } | undefined): number {
  if (queue.length < 2 || wants(queue[0]!)) return 0
  const end = Math.min(queue.length, LOOKAHEAD)
  for (let i = 0; i < end; i++) {
    if (i > 0 && wants(queue[i]!)) {
      for (let j = 0; j < i; j++) {
        const passed = passes(queue[j]!)
        if (passed !== undefined) passed.overtaken++
      }
      return i
    }
    // Nobody may pass this one any more, nor anyone behind it.
    if ((passes(queue[i]!)?.overtaken ?? OVERTAKES) >= OVERTAKES) return 0
  }
  return 0
}

/** The index in pg-pool's idle list of the most recently used client whose session holds `target`, or -1. */
function heldAt (idle: IdleItem[], target: SessionTarget, sessionOf: (client: pg.PoolClient) => SessionState): number {
  for (let i = idle.length - 1; i >= 0; i--) if (sessionOf(idle[i]!.client).holds(target)) return i
  return -1
}
