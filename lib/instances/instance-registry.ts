import { InvalidOptionsError, UnknownInstanceError, InstanceDisabledError, InstanceNotReadyError, quote } from '../errors.js'
import { toInstance, type Instance, type InstanceConfig } from './instance.js'

/**
 * Where instances are read from. Lookups are synchronous and O(1): a store
 * backed by a database loads its rows into memory and refreshes them, so a
 * request never waits on the store.
 */
export interface InstanceStore {
  /** The instance with this name, or `undefined`. */
  byName (name: string): Instance | undefined
  /** The instance with this id, or `undefined`. */
  byId (id: number): Instance | undefined
  /** Every instance, in configuration order. */
  list (): readonly Instance[]
}

/**
 * The instances given in configuration, validated once at start-up.
 *
 * ```ts
 * const registry = new InstanceRegistry([{ name: '', id: 1 }, { name: 'acme', id: 2 }], ['default'])
 * registry.get('acme').id // 2
 * registry.get(2).name    // 'acme'
 * ```
 */
export class InstanceRegistry implements InstanceStore {
  readonly #byName = new Map<string, Instance>()
  readonly #byId = new Map<number, Instance>()
  readonly #list: readonly Instance[]

  constructor (instances: readonly InstanceConfig[], datasources: Iterable<string>) {
    if (!Array.isArray(instances)) throw new InvalidOptionsError('instances must be an array of instance objects or an InstanceStore')
    const known = new Set(datasources)
    const list: Instance[] = []
    for (const config of instances) {
      const instance = toInstance(config, known)
      if (typeof instance === 'string') throw new InvalidOptionsError(instance)
      if (this.#byName.has(instance.name)) throw new InvalidOptionsError(`two instances are named ${JSON.stringify(instance.name)}`)
      const other = this.#byId.get(instance.id)
      if (other) throw new InvalidOptionsError(`instances ${JSON.stringify(other.name)} and ${JSON.stringify(instance.name)} have the same id ${instance.id}`)
      this.#byName.set(instance.name, instance)
      this.#byId.set(instance.id, instance)
      list.push(instance)
    }
    this.#list = Object.freeze(list)
  }

  byName (name: string): Instance | undefined {
    return this.#byName.get(name)
  }

  byId (id: number): Instance | undefined {
    return this.#byId.get(id)
  }

  list (): readonly Instance[] {
    return this.#list
  }
}

/**
 * Looks an instance up by name or id in any store and refuses unknown,
 * disabled and not yet ready ones (503 `TENANCY_INSTANCE_NOT_READY`): the one
 * gate every context switch and request passes.
 */
export function requireInstance (store: InstanceStore, nameOrId: string | number): Instance {
  const instance = typeof nameOrId === 'number' ? store.byId(nameOrId) : typeof nameOrId === 'string' ? store.byName(nameOrId) : undefined
  if (instance === undefined) throw new UnknownInstanceError(quote(nameOrId))
  if (instance.disabled) throw new InstanceDisabledError(quote(instance.name))
  if (instance.state !== undefined && instance.state !== 'ready') throw new InstanceNotReadyError(quote(instance.name), instance.state === 'failed' ? 'failed while being provisioned' : `being ${instance.state === 'removed' ? 'removed' : 'provisioned'}`)
  return instance
}
