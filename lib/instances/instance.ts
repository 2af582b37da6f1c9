/**
 * Instance names known to the application. Empty by default, so any string is
 * accepted; extend it to make unknown names a type error:
 *
 * ```ts
 * declare module 'fastify-tenancy' {
 *   interface InstanceRecord { shareTest: never; isolateTest: never }
 * }
 * runAsInstance('typo', job) // error: not assignable to InstanceName
 * ```
 */
// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface InstanceRecord {}

/** `''` (the default instance) and the names in {@link InstanceRecord}, or any string when it is empty. */
export type InstanceName = [keyof InstanceRecord] extends [never] ? string : Extract<keyof InstanceRecord, string> | ''

/** How an instance's rows are stored. */
export type InstanceMode = 'shared' | 'isolated' | 'schema'

/**
 * Where an instance stands in its lifecycle: `provisioning` (being created:
 * requests get 503), `ready`, `failed` (its creation stopped half-way: 503
 * until a retry completes it or it is removed), `removed` (removed without
 * `drop`: no lookup finds it, its data stays). Configured instances are `ready`.
 */
export type InstanceState = 'provisioning' | 'ready' | 'failed' | 'removed'

/** An instance as configured. */
export interface InstanceConfig {
  /** Unique; `''` is the default instance. At most 63 of `[A-Za-z0-9._-]`, not starting with a dot. */
  name: string
  /** Unique positive integer: the value of the tenant column. Required, so reordering configuration never renumbers data. */
  id: number
  /** Display title. Defaults to the name. */
  title?: string
  /** Initial password for the instance's administrator; never serialised. */
  password?: string
  /** Free-form configuration of the instance. Defaults to `{}`. */
  config?: Record<string, unknown>
  /** The instance has its own database, named by `isolateClient`. Defaults to `false`. */
  isolate?: boolean
  /** The datasource holding the isolated instance's database. Required with `isolate`. */
  isolateClient?: string
  /** The instance's own schema: schema mode. Defaults to none. */
  schema?: string
  /** The datasource holding `schema`. Defaults to `'default'`. */
  datasource?: string
  /** A database role to `SET ROLE` to on the instance's connections. Defaults to none. */
  role?: string
  /** A disabled instance exists but refuses requests and jobs. Defaults to `false`. */
  disabled?: boolean
}

/** An instance as the registry holds it: complete, frozen. */
export interface Instance {
  readonly name: string
  readonly id: number
  readonly title: string
  readonly config: Readonly<Record<string, unknown>>
  readonly mode: InstanceMode
  /** The datasource its queries run on. */
  readonly datasource: string
  /** Its schema in schema mode, otherwise `null`. */
  readonly schema: string | null
  /** Its database role, or `null`. */
  readonly role: string | null
  readonly disabled: boolean
  /**
   * Its lifecycle state; only `ready` instances serve requests and jobs. Not
   * enumerable, so it is not in JSON. A store written before states existed
   * may leave it out, which means `ready`.
   */
  readonly state?: InstanceState
  /** With state `failed`: what stopped its creation. Not enumerable. */
  readonly error?: string
  /** Not enumerable, so it never appears in JSON or logs. */
  readonly password?: string
}

// No leading dot: `.` and `..` read as path steps wherever names become paths or identifiers.
const NAME = /^(?:[A-Za-z0-9_-][A-Za-z0-9._-]{0,62})?$/

/** True when `name` may name an instance: `''`, or at most 63 of `[A-Za-z0-9._-]`, not starting with a dot. */
export function isValidInstanceName (name: unknown): name is string {
  return typeof name === 'string' && NAME.test(name)
}

/** A PostgreSQL identifier that needs no quoting and cannot be mistaken for anything else. */
export const SAFE_IDENTIFIER = /^[a-z_][a-z0-9_$]{0,62}$/

/**
 * The identifier an instance name maps to inside schema, role and database
 * names: lower case, `.` and `-` as `_`. Names that map to the same
 * identifier (`Acme`, `acme`; `a-b`, `a.b`, `a_b`) would get the same schema
 * or database, so a store refuses the second one.
 *
 * ```ts
 * instanceIdentifier('Shop.EU-1') // 'shop_eu_1'
 * ```
 */
export function instanceIdentifier (name: string): string {
  return name.toLowerCase().replace(/[.-]/g, '_')
}

/**
 * Checks one configured instance and returns its frozen form, or the reason it
 * is not valid. `lifecycle` is for stores: configured instances are `ready`.
 */
export function toInstance (input: InstanceConfig, datasources: ReadonlySet<string>, lifecycle: { state: InstanceState, error?: string | null } = { state: 'ready' }): Instance | string {
  if (input === null || typeof input !== 'object') return `an instance must be an object, not ${String(input)}`
  const { name, id } = input
  const label = `instance ${JSON.stringify(name)}`
  if (!isValidInstanceName(name)) return `${label}: the name must be at most 63 of [A-Za-z0-9._-], not starting with a dot`
  if (!Number.isSafeInteger(id) || id <= 0) return `${label}: id must be a positive integer, not ${JSON.stringify(id)}`
  if (input.isolate && input.schema !== undefined) return `${label}: choose isolate or schema, not both`
  if (input.isolate && !input.isolateClient) return `${label}: isolate needs isolateClient, the datasource of its database`
  if (!input.isolate && input.isolateClient !== undefined) return `${label}: isolateClient is only for isolate: true`
  if (input.schema !== undefined && !SAFE_IDENTIFIER.test(input.schema)) {
    return `${label}: schema ${JSON.stringify(input.schema)} is not a safe identifier (lower-case letters, digits, _ and $, at most 63)`
  }
  if (input.role !== undefined && !SAFE_IDENTIFIER.test(input.role)) {
    return `${label}: role ${JSON.stringify(input.role)} is not a safe identifier (lower-case letters, digits, _ and $, at most 63)`
  }
  if (input.config !== undefined && (input.config === null || typeof input.config !== 'object')) return `${label}: config must be an object`
  const datasource = input.isolate ? input.isolateClient! : (input.datasource ?? 'default')
  if (!datasources.has(datasource)) return `${label}: datasource ${JSON.stringify(datasource)} is not configured`
  const mode: InstanceMode = input.isolate ? 'isolated' : input.schema !== undefined ? 'schema' : 'shared'
  const instance = {
    name,
    id,
    title: input.title ?? name,
    config: Object.freeze({ ...(input.config ?? {}) }),
    mode,
    datasource,
    schema: input.schema ?? null,
    role: input.role ?? null,
    disabled: input.disabled === true,
  }
  // Not enumerable: instances serialise as they did before states existed, and a
  // failure's reason, which may name internals, never reaches a response or a log.
  Object.defineProperty(instance, 'state', { value: lifecycle.state, enumerable: false })
  if (lifecycle.error != null) Object.defineProperty(instance, 'error', { value: lifecycle.error, enumerable: false })
  if (input.password !== undefined) Object.defineProperty(instance, 'password', { value: input.password, enumerable: false })
  return Object.freeze(instance)
}
