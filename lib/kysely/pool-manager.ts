import pg from 'pg'
import { InvalidOptionsError, DatasourceUnavailableError, quote } from '../errors.js'

/** A datasource: a connection string or a pg `PoolConfig`. */
export type DatasourceConfig = string | pg.PoolConfig

/** The pool manager's counters, in the manner of pg-pool. */
export interface PoolCounts {
  /** Pools open now. */
  pools: number
  /** Clients connected, over all pools. */
  open: number
  /** Clients connected and not checked out. */
  idle: number
  /** Callers waiting for a client. */
  waiting: number
}

/** @internal One pg.Pool per datasource, created on first use. */
export class PoolManager {
  readonly #configs = new Map<string, pg.PoolConfig>()
  readonly #pools = new Map<string, pg.Pool>()
  #state: 'open' | 'ending' | 'ended' = 'open'

  constructor (datasources: Record<string, DatasourceConfig>) {
    if (datasources === null || typeof datasources !== 'object') throw new InvalidOptionsError('datasources must be an object of connection strings or pg PoolConfigs')
    for (const [name, config] of Object.entries(datasources)) {
      if (typeof config === 'string') this.#configs.set(name, { connectionString: config })
      else if (config !== null && typeof config === 'object') this.#configs.set(name, { ...config })
      else throw new InvalidOptionsError(`datasource ${JSON.stringify(name)} must be a connection string or a pg PoolConfig`)
    }
    if (!this.#configs.has('default')) throw new InvalidOptionsError('datasources must include "default"')
  }

  /** The names of the configured datasources. */
  names (): IterableIterator<string> {
    return this.#configs.keys()
  }

  /** The pool of `datasource`, created on first use. */
  pool (datasource: string): pg.Pool {
    if (this.#state !== 'open') throw new Error('The tenancy has been closed; its pools cannot be used any more.')
    let pool = this.#pools.get(datasource)
    if (pool) return pool
    const config = this.#configs.get(datasource)
    if (!config) throw new InvalidOptionsError(`datasource ${JSON.stringify(datasource)} is not configured`)
    pool = new pg.Pool(config)
    // A client dying while idle or checked out emits 'error'; unhandled, it ends the process.
    pool.on('error', () => {})
    pool.on('connect', (client) => { client.on('error', () => {}) })
    this.#pools.set(datasource, pool)
    return pool
  }

  /** A client of `datasource`'s pool. */
  async connect (datasource: string, label: string): Promise<pg.PoolClient> {
    try {
      return await this.pool(datasource).connect()
    } catch (err) {
      throw Object.assign(new DatasourceUnavailableError(quote(label)), { cause: err })
    }
  }

  counts (): PoolCounts {
    const counts: PoolCounts = { pools: this.#pools.size, open: 0, idle: 0, waiting: 0 }
    for (const pool of this.#pools.values()) {
      counts.open += pool.totalCount
      counts.idle += pool.idleCount
      counts.waiting += pool.waitingCount
    }
    return counts
  }

  /** Ends every pool. */
  async end (): Promise<void> {
    if (this.#state !== 'open') return
    this.#state = 'ending'
    const pools = [...this.#pools.values()]
    this.#pools.clear()
    await Promise.allSettled(pools.map(async (pool) => await pool.end()))
    this.#state = 'ended'
  }
}
