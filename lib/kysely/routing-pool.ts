import type { PostgresPool, PostgresPoolClient } from 'kysely'
import { currentContext } from '../context.js'
import type { PoolManager } from './pool-manager.js'

/**
 * A pool-shaped router for Kysely's `PostgresDialect`: each `connect()` reads
 * the current context and takes a client from the pool of the context
 * instance's datasource (the `default` datasource in host context or with no
 * context). Kysely calls `connect()` for every query outside a transaction and
 * once per transaction, so one Kysely serves every instance.
 */
export class RoutingPool implements PostgresPool {
  readonly options = {}
  readonly #pools: PoolManager

  constructor (pools: PoolManager) {
    this.#pools = pools
  }

  async connect (): Promise<PostgresPoolClient> {
    const instance = currentContext()?.instance
    const datasource = instance?.datasource ?? 'default'
    return await this.#pools.connect(datasource, instance?.name ?? datasource)
  }

  async end (): Promise<void> {
    await this.#pools.end()
  }
}
