import { EventEmitter } from 'node:events'
import pg from 'pg'
import type { Kysely } from 'kysely'
import {
  DatasourceUnavailableError, InstanceExistsError, InstanceNameCollisionError, InstanceNotReadyError, InvalidInstanceNameError,
  InvalidOptionsError, UnknownInstanceError, quote,
} from '../errors.js'
import { SAFE_IDENTIFIER, instanceIdentifier, isValidInstanceName, type Instance, type InstanceMode } from '../instances/instance.js'
import type { InstanceStore } from '../instances/instance-registry.js'
import { DatabaseStore, asLogin, serverDatasource, type NewStoredInstance, type StoreChange, type StoredInstance } from '../instances/database-store.js'
import type { TenantTables } from '../filter/tenant-tables.js'
import { DEFAULT_POOL_SETTINGS, type DatasourceConfig, type PoolManager, type PoolSettings } from '../routing/pool-manager.js'
import { dropDatabase, dropRole, dropSchema, ensureDatabase, ensureRole, ensureSchema, generatePassword, grantSchema, markerOf } from './provision.js'
import { copySchema, rewriteInstanceId } from './template-clone.js'
import type { MigrationsOption } from './fleet-migrator.js'
import { tenantColumn } from '../filter/tenant-column.js'
import { RLS_SETTING } from '../filter/row-level-security.js'

/** What `tenancy.createInstance()` takes. */
export interface CreateInstanceInput {
  /** At most 63 of `[A-Za-z0-9._-]`, not starting with a dot, unique without regard to case. */
  name: string
  /** Where its rows live. Defaults to `'shared'`, or with `from` the template's mode. */
  mode?: InstanceMode
  /** Display title. Defaults to the name. */
  title?: string
  /** Free-form configuration, stored as JSON. Defaults to `{}`. */
  config?: Record<string, unknown>
  /**
   * The instance administrator's initial password, handed to `onProvision`
   * and nowhere else: it is neither stored nor logged. Defaults to a random one,
   * returned once by `createInstance`.
   */
  password?: string
  /**
   * Schema mode: a database role of its own (`true`: named like the schema,
   * or the name given), with a random password and the grants of the README.
   * Defaults to none.
   */
  role?: boolean | string
  /** Schema mode: the schema's name. Defaults to the store's prefix + the name mapped to an identifier (`tenant_acme`). */
  schema?: string
  /** Schema mode: the datasource that holds the schema. Defaults to `'default'`. */
  datasource?: string
  /** Isolated mode: which of `servers` gets its database. Defaults to the first. */
  server?: string
  /** Isolated mode: the database's name. Defaults to the store's prefix + the name mapped to an identifier. */
  database?: string
  /**
   * The name of a ready schema or isolated instance to copy: its tables,
   * rows and sequences (schema), or its whole database (isolated, on the
   * template's server), with the template's id in the tenant column rewritten
   * to the new instance's. The new instance has the template's mode and
   * datasource or server. A retry of a failed clone gives `from` again.
   * Defaults to none: a new instance starts empty.
   */
  from?: string
}

/** What `tenancy.createInstance()` returns. */
export interface CreatedInstance {
  /** The instance, `ready`. */
  readonly instance: Instance
  /** The administrator's initial password: the one given, or the one generated. Shown only here. */
  readonly password: string
  /** With `role`: the role's password, generated. Shown only here. */
  readonly rolePassword?: string
}

/** What `tenancy.updateInstance()` may change while the instance serves requests. */
export interface InstancePatch {
  title?: string
  /** Replaces the whole configuration. */
  config?: Record<string, unknown>
  disabled?: boolean
}

/** Options of `tenancy.removeInstance()`. */
export interface RemoveInstanceOptions {
  /**
   * Also delete its data: its rows in every tenant table (shared), its schema
   * and role (schema), its database (isolated), then its record. Without it the
   * record is marked removed and the data stays. Defaults to `false`.
   */
  drop?: boolean
}

/** What `onProvision` is called with, in the new instance's context, after its migrations. */
export interface ProvisionContext {
  readonly instance: Instance
  /** The administrator's initial password. */
  readonly password: string
  /** The tenancy's Kysely, confined to the new instance. */
  readonly db: Kysely<any>
}

/** The events of a tenancy, fired in every process that sees the change. */
export interface TenancyEvents {
  /** An instance became ready. */
  instanceCreated: [instance: Instance]
  /** An instance changed (title, config, disabled, a retry starting). */
  instanceUpdated: [instance: Instance, previous: Instance]
  /** An instance was removed (its record deleted, or marked removed). */
  instanceRemoved: [instance: Instance]
  /** An instance's creation failed; `error` carries the reason it stored. */
  provisionFailed: [instance: Instance, error: Error]
}

/** The lifecycle options of `createTenancy`. */
export interface LifecycleOptions {
  instances: readonly unknown[] | InstanceStore
  datasources: Record<string, DatasourceConfig>
  pool?: PoolSettings
  /**
   * Servers on which `createInstance({ mode: 'isolated' })` creates databases,
   * by name: the connection settings of a login that may `CREATE DATABASE`.
   * The new database's datasource is the same settings with the database
   * replaced. Every process needs the same servers. Defaults to none.
   */
  servers?: Record<string, DatasourceConfig>
  /** Called for each new instance after its migrations, in its context. Defaults to none. */
  onProvision?: (context: ProvisionContext) => unknown
  /** The tenant column, which a clone rewrites. Defaults to `'iid'`. */
  tenantColumn?: string
  /** The migrations: a schema clone is built by the `instance` set, and skips its migration tables. Defaults to none. */
  migrations?: MigrationsOption
}

/** What the lifecycle needs of its tenancy. */
export interface LifecycleHost {
  readonly pools: PoolManager
  /** The tenant tables as the filter knows them now. */
  tenantTables (): TenantTables | undefined
  kysely (): Kysely<any>
  /** Runs `fn` as `instance` past the gate: provisioning and removal act on instances that are not ready, or disabled. */
  runAs<R> (instance: Instance, fn: () => R): R
  /** Runs the instance migrations on the target of `instance`, up to `to` (a migration's name) or the latest; throws what stopped them. */
  migrate (instance: Instance, to?: string): Promise<void>
  /** The migrations applied on the target of `instance`, or `undefined` without instance migrations; throws what stopped the reading. */
  appliedMigrations (instance: Instance): Promise<readonly string[] | undefined>
  /** Another process made an instance ready: tables it brought may need discovering. */
  instanceReady (): void
}

const SERVER_NAME = /^[A-Za-z0-9_-]{1,63}$/
const INPUT_KEYS = new Set(['name', 'mode', 'title', 'config', 'password', 'role', 'schema', 'datasource', 'server', 'database', 'from'])
const PATCH_KEYS = new Set(['title', 'config', 'disabled'])

/** A connection string or `PoolConfig` with its database replaced. */
export function withDatabase (config: DatasourceConfig, database: string): DatasourceConfig {
  const inUrl = (url: string): string => {
    const parsed = new URL(url)
    parsed.pathname = '/' + database
    return parsed.toString()
  }
  if (typeof config === 'string') return inUrl(config)
  const { connectionString, ...rest } = config
  return connectionString === undefined ? { ...rest, database } : { ...rest, connectionString: inUrl(connectionString) }
}

function clientConfig (config: DatasourceConfig, pool: PoolSettings | undefined): pg.ClientConfig {
  const own = typeof config === 'string' ? { connectionString: config } : { ...config }
  return { ...own, connectionTimeoutMillis: own.connectionTimeoutMillis ?? pool?.connectionTimeoutMillis ?? DEFAULT_POOL_SETTINGS.connectionTimeoutMillis }
}

function plainObject (value: unknown, what: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidOptionsError(`${what} must be an object`)
  try {
    return JSON.parse(JSON.stringify(value)) as Record<string, unknown>
  } catch (err) {
    throw Object.assign(new InvalidOptionsError(`${what} must be JSON: ${(err as Error).message}`), { cause: err })
  }
}

/** The place the store's `physical` column gives a row: two instances with the same place would share a schema or a database. */
function placeOf (values: Pick<NewStoredInstance, 'mode' | 'datasource' | 'schema' | 'server' | 'database'>): string | undefined {
  if (values.mode === 'schema') return `schema:${values.datasource ?? 'default'}.${values.schema!}`
  if (values.mode === 'isolated') return values.server !== null ? `database:${values.server}.${values.database!}` : `datasource:${values.datasource!}`
  return undefined
}

function placeOfRecord (record: StoredInstance): string | undefined {
  const { instance } = record
  return placeOf({ mode: instance.mode, datasource: record.server !== null ? null : instance.datasource, schema: instance.schema, server: record.server, database: record.database })
}

/** What `createInstance` will do: the new row, whether it gets a role, and the template it copies. */
type Plan = NewStoredInstance & { wantsRole: boolean, template: StoredInstance | undefined }

function messageOf (err: unknown): string {
  const text = err instanceof Error ? err.message : String(err)
  return text.length > 1000 ? text.slice(0, 1000) + '…' : text
}

/**
 * Creates, changes and removes the instances of a {@link DatabaseStore}, and
 * turns the store's changes into the tenancy's events and its pools'
 * datasources. `Tenancy` holds one; its `createInstance`, `updateInstance`,
 * `removeInstance`, `on` and `off` call it.
 */
export class InstanceLifecycle {
  readonly events = new EventEmitter()
  readonly #host: LifecycleHost
  readonly #store: DatabaseStore | undefined
  readonly #servers: ReadonlyMap<string, DatasourceConfig>
  readonly #onProvision: ((context: ProvisionContext) => unknown) | undefined
  readonly #client: pg.ClientConfig
  readonly #pool: PoolSettings | undefined
  readonly #datasources: ReadonlySet<string>
  readonly #tenantColumn: string
  readonly #migrations: MigrationsOption | undefined
  // Datasources this lifecycle added to the pools, by instance id.
  readonly #added = new Map<number, string>()
  #unsubscribe: (() => void) | undefined
  // Whether this lifecycle opened the store: a tenancy given a store another one opened must not close it.
  #owns = false

  constructor (host: LifecycleHost, options: LifecycleOptions) {
    this.#host = host
    this.#store = options.instances instanceof DatabaseStore ? options.instances : undefined
    const servers = options.servers ?? {}
    if (servers === null || typeof servers !== 'object') throw new InvalidOptionsError('servers must be an object of connection strings or pg PoolConfigs')
    const map = new Map<string, DatasourceConfig>()
    for (const [name, config] of Object.entries(servers)) {
      if (!SERVER_NAME.test(name)) throw new InvalidOptionsError(`server name ${quote(name)} must be 1 to 63 of [A-Za-z0-9_-]`)
      if (typeof config !== 'string' && (config === null || typeof config !== 'object')) throw new InvalidOptionsError(`server ${quote(name)} must be a connection string or a pg PoolConfig`)
      map.set(name, config)
    }
    this.#servers = map
    if (options.onProvision !== undefined && typeof options.onProvision !== 'function') throw new InvalidOptionsError('onProvision must be a function')
    this.#onProvision = options.onProvision
    this.#pool = options.pool
    // Its own application name, so an operator can tell the store's connections in pg_stat_activity.
    this.#client = { application_name: 'fastify-tenancy instance store', ...clientConfig(options.datasources.default!, options.pool) }
    this.#datasources = new Set(Object.keys(options.datasources))
    this.#tenantColumn = tenantColumn(options.tenantColumn)
    this.#migrations = options.migrations
  }

  /** Opens the store: its rows are in memory, its isolated databases are datasources, and changes become events. */
  async start (): Promise<void> {
    const store = this.#store
    if (store === undefined) return
    if (store.opened) throw new InvalidOptionsError('a databaseStore serves one tenancy: make one per createTenancy call')
    this.#unsubscribe = store.subscribe((change) => { this.#changed(change) })
    this.#owns = true
    await store.open({ client: this.#client, pools: this.#host.pools, datasources: this.#datasources })
    for (const record of store.records()) this.#follow(record)
  }

  /** Ends the store's connections, when this lifecycle opened the store. */
  async close (): Promise<void> {
    this.#unsubscribe?.()
    if (this.#owns) await this.#store?.close()
  }

  #requireStore (): DatabaseStore {
    if (this.#store === undefined) throw new InvalidOptionsError('instances are a fixed list: give createTenancy instances: databaseStore({ … }) to create, change or remove them at run time')
    return this.#store
  }

  /** Keeps the pools' datasources in step with a row: an isolated database made on a server is a datasource while its instance is not removed. */
  #follow (record: StoredInstance | undefined, before?: StoredInstance): void {
    const id = record?.instance.id ?? before?.instance.id
    if (id === undefined) return
    const wanted = record !== undefined && record.state !== 'removed' && record.server !== null && record.database !== null
    const added = this.#added.get(id)
    if (!wanted) {
      if (added !== undefined) {
        this.#added.delete(id)
        this.#host.pools.removeDatasource(added)
      }
      return
    }
    const name = record.instance.datasource
    if (added === name) return
    const server = this.#servers.get(record.server!)
    if (server === undefined) {
      process.emitWarning(`fastify-tenancy: instance ${quote(record.instance.name)} has its database on server ${quote(record.server)}, which this process's servers option does not name: its queries cannot be routed here.`)
      return
    }
    this.#host.pools.addDatasource(name, withDatabase(server, record.database!))
    this.#added.set(id, name)
  }

  #changed ({ before, after }: StoreChange): void {
    this.#follow(after, before)
    const was = before?.state
    if (after === undefined || after.state === 'removed') {
      if (before !== undefined && was !== 'removed') this.#emit('instanceRemoved', (after ?? before).instance)
      return
    }
    if (after.state === 'ready' && was !== 'ready') {
      this.#host.instanceReady()
      this.#emit('instanceCreated', after.instance)
    } else if (after.state === 'failed' && was !== 'failed') {
      this.#emit('provisionFailed', after.instance, new Error(after.instance.error ?? 'provisioning failed'))
    } else if (before !== undefined && was !== 'removed') {
      this.#emit('instanceUpdated', after.instance, before.instance)
    }
  }

  #emit<E extends keyof TenancyEvents> (event: E, ...args: TenancyEvents[E]): void {
    for (const listener of this.events.listeners(event)) {
      try {
        (listener as (...a: unknown[]) => void)(...args)
      } catch (err) {
        // A listener's mistake must not stop the store from following changes.
        process.emitWarning(err as Error)
      }
    }
  }

  /** What `input` asks for, checked, with its derived names. */
  #plan (store: DatabaseStore, input: CreateInstanceInput): Plan {
    if (input === null || typeof input !== 'object') throw new InvalidOptionsError('createInstance takes an object: { name, mode, … }')
    for (const key of Object.keys(input)) if (!INPUT_KEYS.has(key)) throw new InvalidOptionsError(`createInstance: ${quote(key)} is not an option (${[...INPUT_KEYS].join(', ')})`)
    const { name } = input
    if (!isValidInstanceName(name)) throw new InvalidInstanceNameError(quote(name))
    const template = input.from === undefined ? undefined : this.#template(store, input)
    const mode = input.mode ?? template?.instance.mode ?? 'shared'
    if (mode !== 'shared' && mode !== 'schema' && mode !== 'isolated') throw new InvalidOptionsError(`mode must be "shared", "schema" or "isolated", not ${quote(mode)}`)
    const title = input.title ?? name
    if (typeof title !== 'string') throw new InvalidOptionsError('title must be a string')
    const config = input.config === undefined ? {} : plainObject(input.config, 'config')
    if (input.password !== undefined && (typeof input.password !== 'string' || input.password.length === 0)) throw new InvalidOptionsError('password must be a non-empty string')
    const only = (key: keyof CreateInstanceInput, modes: string): void => {
      if (input[key] !== undefined && !modes.includes(mode)) throw new InvalidOptionsError(`${key} is for mode ${modes}, not ${mode}`)
    }
    only('role', 'schema'); only('schema', 'schema'); only('datasource', 'schema'); only('server', 'isolated'); only('database', 'isolated')
    const derived = (what: string, given: unknown): string => {
      if (given !== undefined) {
        if (typeof given !== 'string' || !SAFE_IDENTIFIER.test(given)) throw new InvalidOptionsError(`${what} ${quote(given)} is not a safe identifier (lower-case letters, digits, _ and $, at most 63)`)
        return given
      }
      if (name === '') throw new InvalidOptionsError(`the default instance "" has no name to make a ${what} name of: give ${what}`)
      const made = store.prefix + instanceIdentifier(name)
      if (!SAFE_IDENTIFIER.test(made)) throw new InstanceNameCollisionError(quote(name), `its ${what} name ${quote(made)} would be over 63 characters: give ${what}`)
      return made
    }
    let datasource: string | null = null
    let schema: string | null = null
    let role: string | null = null
    let server: string | null = null
    let database: string | null = null
    if (mode === 'schema') {
      schema = derived('schema', input.schema)
      datasource = input.datasource ?? template?.instance.datasource ?? 'default'
      if (typeof datasource !== 'string' || !this.#datasources.has(datasource)) throw new InvalidOptionsError(`datasource ${quote(datasource)} is not configured`)
      if (input.role === true) role = schema
      else if (typeof input.role === 'string') role = derived('role', input.role)
      else if (input.role !== undefined && input.role !== false) throw new InvalidOptionsError('role must be true, false or a role name')
    } else if (mode === 'isolated') {
      if (this.#servers.size === 0) throw new InvalidOptionsError('isolated instances are created on one of the servers: give createTenancy a servers option')
      server = input.server ?? template?.server ?? this.#servers.keys().next().value!
      if (!this.#servers.has(server)) throw new InvalidOptionsError(`server ${quote(server)} is not one of the servers (${[...this.#servers.keys()].join(', ')})`)
      database = derived('database', input.database)
      datasource = serverDatasource(server, database)
    }
    return { name, title, config, mode, datasource: mode === 'isolated' ? null : datasource, schema, role, server, database, wantsRole: role !== null, template }
  }

  /** The template `input.from` names, refused unless a clone can be made of it as `input` asks. */
  #template (store: DatabaseStore, input: CreateInstanceInput): StoredInstance {
    const from: unknown = input.from
    if (typeof from !== 'string') throw new InvalidOptionsError(`from must be the name of the template instance, not ${quote(from)}`)
    const record = store.recordByName(from)
    if (record === undefined || record.instance.name !== from || record.state === 'removed') throw new UnknownInstanceError(quote(from))
    const { instance } = record
    const cannot = (why: string): Error => new InvalidOptionsError(`createInstance cannot clone the template ${quote(from)}: ${why}`)
    if (instance.mode === 'shared') throw cannot('it is a shared instance, whose rows live among other instances\' rows; only a schema or an isolated instance has a schema or database to copy')
    if (record.state !== 'ready') throw new InstanceNotReadyError(quote(from), record.state === 'failed' ? 'a creation that failed, so it cannot be a template' : 'being provisioned, so it cannot be a template yet')
    if (input.mode !== undefined && input.mode !== instance.mode) throw cannot(`it is ${instance.mode === 'isolated' ? 'an' : 'a'} ${instance.mode} instance and a clone has its template's mode, not ${quote(input.mode)}`)
    if (instance.mode === 'schema') {
      if (this.#migrations?.instance === undefined) throw cannot('a schema clone\'s tables are made by the instance migrations, and createTenancy has no migrations.instance')
      if (input.datasource !== undefined && input.datasource !== instance.datasource) throw cannot(`a schema is copied within its datasource ${quote(instance.datasource)}, not into ${quote(input.datasource)}`)
    } else {
      if (record.server === null || record.database === null) throw cannot('its database is a configured datasource, not one created on one of the servers, so there is no server to copy it on')
      if (!this.#servers.has(record.server)) throw cannot(`its database is on the server ${quote(record.server)}, which this process's servers option does not name`)
      if (input.server !== undefined && input.server !== record.server) throw cannot(`a database is copied on its own server ${quote(record.server)}, not onto ${quote(input.server)}`)
    }
    return record
  }

  /** Refuses, from what this process holds, a name taken without regard to case or a schema or database another instance has. */
  #checkFree (store: DatabaseStore, plan: NewStoredInstance, record: StoredInstance | undefined): void {
    if (record !== undefined && record.instance.name !== plan.name) {
      throw new InstanceNameCollisionError(quote(plan.name), `it differs only in case from the instance ${quote(record.instance.name)}`)
    }
    const place = placeOf(plan)
    if (place === undefined) return
    for (const other of store.records()) {
      if (other.instance.name !== plan.name && placeOfRecord(other) === place) {
        throw new InstanceNameCollisionError(quote(plan.name), `its ${plan.mode === 'schema' ? 'schema' : 'database'} would be instance ${quote(other.instance.name)}'s`)
      }
    }
  }

  /**
   * Creates an instance, or resumes one whose creation failed: the record in
   * state `provisioning`, then its schema (and role) or database, its
   * migrations, `onProvision`, and state `ready`. A step that fails leaves
   * state `failed` with the reason; every step may run again.
   */
  async create (input: CreateInstanceInput): Promise<CreatedInstance> {
    const store = this.#requireStore()
    const plan = this.#plan(store, input)
    this.#checkFree(store, plan, store.recordByName(plan.name))
    const lock = await store.lockName(plan.name)
    if (lock === undefined) throw new InstanceExistsError(`An instance named ${quote(plan.name)} is being created or removed by another process.`)
    try {
      let record = await store.read(plan.name)
      this.#checkFree(store, plan, record)
      if (record !== undefined) {
        if (record.state === 'ready' || record.state === 'removed') {
          throw new InstanceExistsError(`An instance named ${quote(plan.name)} already exists${record.state === 'removed' ? ' (removed, its data kept: remove it with drop to free the name)' : ''}.`)
        }
        if (placeOfRecord(record) !== placeOf(plan) || record.instance.mode !== plan.mode || record.instance.role !== plan.role) {
          throw new InstanceExistsError(`An instance named ${quote(plan.name)} exists in state ${record.state} with another mode, place or role: remove it first.`)
        }
        record = await store.update(record.instance.id, { state: 'provisioning', error: null, title: plan.title, config: plan.config })
        if (record === undefined) throw new UnknownInstanceError(quote(plan.name))
      } else {
        record = await store.insert(plan)
      }
      return await this.#provision(store, record, plan.wantsRole, input.password, plan.template)
    } finally {
      await lock.release()
    }
  }

  async #provision (store: DatabaseStore, record: StoredInstance, wantsRole: boolean, given: string | undefined, template: StoredInstance | undefined): Promise<CreatedInstance> {
    const { instance } = record
    const marker = markerOf(store.database, store.tableName, instance.id)
    const password = given ?? generatePassword()
    let rolePassword: string | undefined
    try {
      if (instance.mode === 'schema') {
        const schema = instance.schema!
        rolePassword = wantsRole ? generatePassword() : undefined
        await asLogin(this.#host.pools, instance.datasource, instance.name, async (client) => {
          await ensureSchema(client, schema, marker, instance.name)
          if (rolePassword !== undefined) await ensureRole(client, instance.role!, schema, marker, rolePassword, instance.name)
        })
        if (template !== undefined) await this.#copySchema(instance, template.instance)
      } else if (instance.mode === 'isolated' && record.server !== null) {
        if (template !== undefined) this.#closePool(template)
        await this.#onServer(record.server, instance.name, async (admin) => { await ensureDatabase(admin, record.database!, marker, instance.name, template?.database ?? undefined) })
        if (template !== undefined) {
          const copy = { templateId: template.instance.id, id: instance.id, tenantColumn: this.#tenantColumn }
          await this.#onServer(record.server, instance.name, async (client) => { await rewriteInstanceId(client, copy) }, record.database!)
        }
      }
      await this.#host.migrate(instance)
      if (rolePassword !== undefined) {
        await asLogin(this.#host.pools, instance.datasource, instance.name, async (client) => { await grantSchema(client, instance.role!, instance.schema!) })
      }
      const onProvision = this.#onProvision
      if (onProvision !== undefined) {
        const db = this.#host.kysely()
        await this.#host.runAs(instance, async () => { await onProvision({ instance, password, db }) })
      }
      const ready = await store.update(instance.id, { state: 'ready', error: null })
      if (ready === undefined) throw new UnknownInstanceError(quote(instance.name))
      return Object.freeze({ instance: ready.instance, password, ...(rolePassword === undefined ? {} : { rolePassword }) })
    } catch (err) {
      // With the store's database down the row stays `provisioning`; a retry resumes it all the same.
      await store.update(instance.id, { state: 'failed', error: messageOf(err) }).catch(() => {})
      throw err
    }
  }

  /**
   * Builds a schema clone: the instance migrations up to the template's last
   * one, so that both have the same tables, then the template's rows and
   * sequences in one repeatable-read transaction; the caller then runs the
   * migrations the template has not had yet.
   */
  async #copySchema (instance: Instance, template: Instance): Promise<void> {
    const wanted = await this.#host.appliedMigrations(template) ?? []
    const done = await this.#host.appliedMigrations(instance) ?? []
    const extra = done.filter((name) => !wanted.includes(name))
    if (extra.length > 0) throw new InvalidOptionsError(`the clone cannot be made: its schema ${quote(instance.schema)} has migrations the template ${quote(template.name)} has not (${extra.join(', ')}): migrate the template, or remove the instance and clone again`)
    if (done.length < wanted.length) await this.#host.migrate(instance, wanted.at(-1))
    const now = await this.#host.appliedMigrations(instance) ?? []
    if (now.length !== wanted.length || now.some((name) => !wanted.includes(name))) {
      throw new InvalidOptionsError(`the clone cannot be made: the template ${quote(template.name)}'s migrations (${wanted.join(', ')}) are not the first ones of the instance migrations: migrate the template first`)
    }
    const table = this.#migrations?.tableName ?? 'kysely_migration'
    const copy = { from: template.schema!, to: instance.schema!, templateId: template.id, id: instance.id, tenantColumn: this.#tenantColumn, skip: new Set([table, `${table}_lock`]) }
    await this.#inSnapshot(instance.datasource, instance.name, async (client) => { await copySchema(client, copy) })
  }

  /**
   * Runs `work` in a repeatable-read transaction as the connection's login,
   * where this library's row-level security policies let every row through.
   */
  async #inSnapshot (datasource: string, label: string, work: (client: pg.PoolClient) => Promise<void>): Promise<void> {
    await asLogin(this.#host.pools, datasource, label, async (client) => {
      await client.query('select set_config($1, \'*\', true)', [RLS_SETTING])
      await work(client)
    }, 'repeatable read')
  }

  /** Closes this process's pool of an isolated template, which stays a datasource: its next query opens a new one. */
  #closePool (template: StoredInstance): void {
    const name = this.#added.get(template.instance.id)
    const server = template.server === null ? undefined : this.#servers.get(template.server)
    if (name === undefined || server === undefined) return
    this.#host.pools.removeDatasource(name)
    this.#host.pools.addDatasource(name, withDatabase(server, template.database!))
  }

  async #onServer<T> (server: string, label: string, work: (admin: pg.Client) => Promise<T>, database?: string): Promise<T> {
    const settings = this.#servers.get(server)!
    const admin = new pg.Client(clientConfig(database === undefined ? settings : withDatabase(settings, database), this.#pool))
    admin.on('error', () => {})
    try {
      await admin.connect()
    } catch (err) {
      await admin.end().catch(() => {})
      throw Object.assign(new DatasourceUnavailableError(quote(label)), { cause: err })
    }
    try {
      return await work(admin)
    } finally {
      await admin.end().catch(() => {})
    }
  }

  #find (store: DatabaseStore, nameOrId: string | number, removed: boolean): StoredInstance {
    const record = typeof nameOrId === 'number' ? store.record(nameOrId) : typeof nameOrId === 'string' ? store.recordByName(nameOrId) : undefined
    if (record === undefined || (typeof nameOrId === 'string' && record.instance.name !== nameOrId) || (!removed && record.state === 'removed')) {
      throw new UnknownInstanceError(quote(nameOrId))
    }
    return record
  }

  /** Changes what may change while the instance serves requests: title, config, disabled. */
  async update (nameOrId: string | number, patch: InstancePatch): Promise<Instance> {
    const store = this.#requireStore()
    if (patch === null || typeof patch !== 'object') throw new InvalidOptionsError('updateInstance takes a patch object: { title, config, disabled }')
    for (const key of Object.keys(patch)) {
      if (!PATCH_KEYS.has(key)) throw new InvalidOptionsError(`updateInstance: ${quote(key)} cannot change while the instance lives (only title, config and disabled can; name, id, mode, schema, role, datasource and server cannot)`)
    }
    if (patch.title !== undefined && typeof patch.title !== 'string') throw new InvalidOptionsError('title must be a string')
    if (patch.disabled !== undefined && typeof patch.disabled !== 'boolean') throw new InvalidOptionsError('disabled must be true or false')
    const config = patch.config === undefined ? undefined : plainObject(patch.config, 'config')
    const record = this.#find(store, nameOrId, false)
    const after = await store.update(record.instance.id, { title: patch.title, config, disabled: patch.disabled })
    if (after === undefined) throw new UnknownInstanceError(quote(nameOrId))
    return after.instance
  }

  /** Disables the instance, then drops its data (with `drop`) and deletes its record, or marks it removed. */
  async remove (nameOrId: string | number, options: RemoveInstanceOptions = {}): Promise<void> {
    const store = this.#requireStore()
    if (options === null || typeof options !== 'object') throw new InvalidOptionsError('removeInstance takes an options object: { drop }')
    if (options.drop !== undefined && typeof options.drop !== 'boolean') throw new InvalidOptionsError('drop must be true or false')
    const found = this.#find(store, nameOrId, true)
    const lock = await store.lockName(found.instance.name)
    if (lock === undefined) throw new InstanceNotReadyError(quote(found.instance.name), 'being created or removed by another process')
    try {
      let record = store.record(found.instance.id)
      if (record === undefined) throw new UnknownInstanceError(quote(nameOrId))
      // Disabled first: no new request or job starts while the data goes.
      if (!record.instance.disabled) record = await store.update(record.instance.id, { disabled: true }) ?? record
      if (options.drop !== true) {
        if (record.state !== 'removed') await store.update(record.instance.id, { state: 'removed' })
        return
      }
      await this.#drop(store, record)
      await store.delete(record.instance.id)
    } finally {
      await lock.release()
    }
  }

  async #drop (store: DatabaseStore, record: StoredInstance): Promise<void> {
    const { instance } = record
    const marker = markerOf(store.database, store.tableName, instance.id)
    if (instance.mode === 'shared') {
      await this.#deleteRows(store, instance)
    } else if (instance.mode === 'schema') {
      await asLogin(this.#host.pools, instance.datasource, instance.name, async (client) => {
        await dropSchema(client, instance.schema!, marker)
        if (instance.role !== null) await dropRole(client, instance.role, marker)
      })
    } else if (record.server !== null) {
      const added = this.#added.get(instance.id)
      if (added !== undefined) {
        this.#added.delete(instance.id)
        this.#host.pools.removeDatasource(added)
      }
      await this.#onServer(record.server, instance.name, async (admin) => { await dropDatabase(admin, record.database!, marker) })
    }
  }

  /**
   * Deletes a shared instance's rows from every tenant table, through the
   * tenant filter in the instance's context; a table whose rows others still
   * refer to (a foreign key) is tried again after the rest.
   */
  async #deleteRows (store: DatabaseStore, instance: Instance): Promise<void> {
    const tables = this.#host.tenantTables()
    if (tables === undefined) return
    const others = new Set<string>()
    for (const record of store.records()) if (record.instance.schema !== null) others.add(record.instance.schema)
    let left = Object.entries(tables.toJSON())
      .filter(([key, entry]) => (typeof entry === 'string' || entry.relation === undefined || entry.relation === 'table') && !(key.includes('.') && others.has(key.split('.')[0]!)))
      .map(([key]) => key)
    const db = this.#host.kysely()
    await this.#host.runAs(instance, async () => {
      while (left.length > 0) {
        const blocked: string[] = []
        let lastError: unknown
        for (const table of left) {
          try {
            await db.deleteFrom(table).execute()
          } catch (err) {
            // 42P01: a table discovered on another datasource only.
            if (err instanceof pg.DatabaseError && err.code === '42P01') continue
            if (!(err instanceof pg.DatabaseError && err.code === '23503')) throw err
            blocked.push(table)
            lastError = err
          }
        }
        if (blocked.length === left.length) throw lastError
        left = blocked
      }
    })
  }
}
