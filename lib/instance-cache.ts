import { currentContext, type TenancyContext } from './context.js'
import { InvalidOptionsError, NoContextError } from './errors.js'

/** Whose frames a cache reads: a tenancy (its own innermost frame), or by default the innermost frame of any. */
export interface InstanceCacheOptions {
  /** Read this tenancy's frame only. Defaults to the innermost frame of any tenancy. */
  tenancy?: { context (): TenancyContext | undefined }
}

/** A synchronous, `Map`-like cache: a `Map`, an `lru-cache` `LRUCache`, anything with these methods and `keys()`. */
export interface SyncCacheStore<V = unknown> {
  get (key: string, ...rest: any[]): V | undefined
  set (key: string, value: V, ...rest: any[]): unknown
  has (key: string, ...rest: any[]): boolean
  delete (key: string): boolean
  keys (): Iterable<string>
}

/** An asynchronous cache shaped like a `Keyv`. */
export interface AsyncCacheStore<V = unknown> {
  get (key: string): Promise<V | undefined>
  set (key: string, value: V, ttl?: number): Promise<unknown>
  has (key: string): Promise<boolean>
  delete (key: string): Promise<boolean>
  deleteMany (keys: string[]): Promise<unknown>
  iterator (): AsyncIterable<unknown>
  readonly store?: unknown
}

type Rest<F> = F extends (key: string, ...rest: infer R) => any ? R : never
type SetRest<F> = F extends (key: string, value: any, ...rest: infer R) => any ? R : never
type ValueOf<C> = C extends { get (key: string, ...rest: any[]): infer R } ? Exclude<R, undefined> : unknown

/** A synchronous cache whose keys belong to the current instance. */
export interface InstanceCache<V, C extends SyncCacheStore<any> = SyncCacheStore<V>> {
  get (key: string, ...rest: Rest<C['get']>): V | undefined
  /** Extra arguments go to the cache as they are (`lru-cache`'s `{ ttl }`). */
  set (key: string, value: V, ...rest: SetRest<C['set']>): this
  has (key: string, ...rest: Rest<C['has']>): boolean
  delete (key: string): boolean
  /** Removes the current instance's keys (or the host's) and nobody else's: it walks the cache's keys, O(size of the cache). */
  clear (): void
  /** The wrapped cache, whose keys carry the prefixes. */
  readonly store: C
}

/** An asynchronous (`Keyv`) cache whose keys belong to the current instance. */
export interface AsyncInstanceCache<V, C extends AsyncCacheStore<any> = AsyncCacheStore<V>> {
  get (key: string): Promise<V | undefined>
  /** `ttl` in milliseconds, as Keyv takes it. */
  set (key: string, value: V, ttl?: number): Promise<boolean>
  has (key: string): Promise<boolean>
  delete (key: string): Promise<boolean>
  /**
   * Removes the current instance's keys (or the host's) and nobody else's,
   * found through the store's `iterator()` (Keyv's memory store, Redis, the
   * SQL stores); rejects with `TENANCY_INVALID_OPTIONS` on a store that cannot
   * list its keys, rather than remove nothing or everything.
   */
  clear (): Promise<void>
  readonly store: C
}

function noContext (): Error {
  const message = 'A cache key was asked for outside any instance: use the cache inside runAsInstance(), or runAsHost() for the host\'s keys.'
  const err = new NoContextError(message)
  err.message = message
  return err
}

function prefixOf (options: InstanceCacheOptions | undefined): string {
  const context = options?.tenancy !== undefined ? options.tenancy.context() : currentContext()
  // Ids hold no ':' and are never reused, so `2:` can neither be mistaken for `23:` nor outlive instance 2.
  if (context?.instance !== undefined) return `${context.instance.id}:`
  if (context?.kind === 'host') return 'host:'
  throw noContext()
}

/**
 * `key` prefixed with the current instance's id (`2:user:7`), or with `host:`
 * in host context, for keys built by hand (a shared Redis, a CDN tag). Throws
 * `TENANCY_NO_CONTEXT` outside any instance, and in `unscoped()` without one.
 *
 * ```ts
 * await tenancy.runAsInstance('acme', () => redis.set(cacheKey('user:7'), json)) // SET 2:user:7 …
 * ```
 */
export function cacheKey (key: string, options?: InstanceCacheOptions): string {
  return prefixOf(options) + key
}

function isAsync (cache: object): cache is AsyncCacheStore<unknown> {
  return typeof (cache as AsyncCacheStore).iterator === 'function' && typeof (cache as SyncCacheStore).keys !== 'function'
}

/**
 * Whether a Keyv's store can list its keys, by the adapter's own account
 * (`capabilities`): Keyv's memory adapter walks the `entries()` of the Map-like
 * store it wraps; other adapters (Redis, SQL, a bridged legacy store) have an
 * `iterator()` or not. Keyv's `iterator()` yields nothing where there is none.
 */
function canList (cache: AsyncCacheStore<unknown>): boolean {
  const adapter = cache.store as { iterator?: unknown, store?: { entries?: unknown }, capabilities?: { store?: string, methods?: { iterator?: { exists?: boolean } } } } | undefined
  if (adapter === null || typeof adapter !== 'object') return false
  if (adapter.capabilities?.store === 'mapLike') return typeof adapter.store?.entries === 'function'
  return typeof adapter.iterator === 'function' && adapter.capabilities?.methods?.iterator?.exists !== false
}

/**
 * Wraps a cache (a `Map`, an `lru-cache`, a `Keyv`) so that every key belongs
 * to the current instance: `get('user:7')` as instance 2 reads `2:user:7`, as
 * instance 3 `3:user:7`, in host context `host:user:7`. The same record id in
 * every instance can never be served to another one. Every call outside any
 * instance throws `TENANCY_NO_CONTEXT` (and in `unscoped()` without one).
 * The wrapper keeps nothing itself: wrap the cache once, at start-up.
 *
 * ```ts
 * const users = instanceCache(new LRUCache<string, User>({ max: 10_000 }))
 * app.get('/users/:id', async (request) => users.get(request.params.id) ?? load(request.params.id))
 * // as acme (id 2): LRUCache key '2:7'
 * const sessions = instanceCache<Session>(new Keyv({ store: new KeyvRedis(url) })) // a Keyv's value type is given here
 * ```
 */
export function instanceCache<V = unknown> (cache: AsyncCacheStore<any>, options?: InstanceCacheOptions): AsyncInstanceCache<V>
export function instanceCache<C extends SyncCacheStore<any>> (cache: C, options?: InstanceCacheOptions): InstanceCache<ValueOf<C>, C>
export function instanceCache (cache: SyncCacheStore<unknown> | AsyncCacheStore<unknown>, options?: InstanceCacheOptions): InstanceCache<unknown, any> | AsyncInstanceCache<unknown, any> {
  if (cache === null || typeof cache !== 'object') throw new InvalidOptionsError('instanceCache() needs a Map, an LRUCache or a Keyv')
  if (options?.tenancy !== undefined && typeof options.tenancy?.context !== 'function') throw new InvalidOptionsError('instanceCache(): tenancy must be a Tenancy')
  if (isAsync(cache)) return asyncCache(cache, options)
  for (const method of ['get', 'set', 'has', 'delete', 'keys'] as const) {
    if (typeof (cache as SyncCacheStore)[method] !== 'function') throw new InvalidOptionsError(`instanceCache(): the cache has no ${method}() method; pass a Map, an LRUCache or a Keyv`)
  }
  return syncCache(cache as SyncCacheStore<unknown>, options)
}

function syncCache (store: SyncCacheStore<unknown>, options: InstanceCacheOptions | undefined): InstanceCache<unknown, any> {
  const wrapper: InstanceCache<unknown, any> = {
    store,
    get: (key, ...rest) => store.get(prefixOf(options) + key, ...rest),
    set (key, value, ...rest) {
      store.set(prefixOf(options) + key, value, ...rest)
      return wrapper
    },
    has: (key, ...rest) => store.has(prefixOf(options) + key, ...rest),
    delete: (key) => store.delete(prefixOf(options) + key),
    clear () {
      const prefix = prefixOf(options)
      // Collected first: deleting while a Map or an LRUCache is being walked skips entries.
      const mine: string[] = []
      for (const key of store.keys()) if (typeof key === 'string' && key.startsWith(prefix)) mine.push(key)
      for (const key of mine) store.delete(key)
    },
  }
  return wrapper
}

function asyncCache (store: AsyncCacheStore<unknown>, options: InstanceCacheOptions | undefined): AsyncInstanceCache<unknown, any> {
  // The prefix is read before the first await: the context is the caller's, whatever the store does next.
  return {
    store,
    get: async (key) => await store.get(prefixOf(options) + key),
    set: async (key, value, ttl) => Boolean(await store.set(prefixOf(options) + key, value, ttl)),
    has: async (key) => await store.has(prefixOf(options) + key),
    delete: async (key) => await store.delete(prefixOf(options) + key),
    async clear () {
      const prefix = prefixOf(options)
      if (!canList(store)) throw new InvalidOptionsError('instanceCache(): this Keyv\'s store cannot list its keys, so clear() cannot remove one instance\'s keys alone; delete them by key, or give each instance a Keyv namespace of its own')
      const mine: string[] = []
      for await (const entry of store.iterator()) {
        const key = Array.isArray(entry) ? entry[0] : entry
        if (typeof key === 'string' && key.startsWith(prefix)) mine.push(key)
      }
      if (mine.length > 0) await store.deleteMany(mine)
    },
  }
}
