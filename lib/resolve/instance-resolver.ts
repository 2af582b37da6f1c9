import { InvalidInstanceNameError, InvalidOptionsError, InstanceForbiddenError, InstanceRequiredError, UnknownInstanceError, quote } from '../errors.js'
import { isValidInstanceName, type Instance } from '../instances/instance.js'
import { requireInstance, type InstanceStore } from '../instances/instance-registry.js'

/**
 * The parts of an HTTP request that resolvers read. Fastify's request has them;
 * so does anything shaped like it, which keeps this module framework-free.
 */
export interface ResolveRequest {
  readonly headers: Record<string, string | string[] | undefined>
  readonly query?: unknown
  /** The host name without the port. */
  readonly hostname?: string
  /** The path and query string. */
  readonly url: string
  /** The connection, for the port the request arrived on. */
  readonly socket?: { readonly localPort?: number }
  /** The verified claims of the request's token, for the `claim` resolver (`request.user`, set by `@fastify/jwt`'s `request.jwtVerify()`). */
  readonly user?: unknown
}

/**
 * Finds the instance name a request asks for, or returns `undefined` to let
 * the next resolver try. A value that is present but unusable (a list, a name
 * with bad characters) is returned as it is: the chain rejects it with 400.
 */
export type InstanceResolver = (request: ResolveRequest) => unknown

/** The built-in resolvers, by the names `order` uses. */
export type ResolverName = 'claim' | 'custom' | 'query' | 'header' | 'cookie' | 'path' | 'port' | 'host'

/** Options of the resolver chain: the plugin's `resolve` option. */
export interface ResolveOptions {
  /**
   * The claim of the request's verified token (`request.user`) that holds the
   * instance's id, tried first; `'host'` there marks a host token, which
   * names no instance. With the plugin, a request whose token names one
   * instance and asks for another gets 403 `TENANCY_INSTANCE_FORBIDDEN` (see
   * `createInstanceBinding`). Defaults to `false`.
   */
  claim?: string | false
  /** A custom resolver: returns a name, or `undefined` to pass. May be async. Defaults to none. */
  getInstanceName?: (request: ResolveRequest) => string | undefined | Promise<string | undefined>
  /** The query field holding the name, or `false`. Defaults to `'x-instance-name'`. */
  queryField?: string | false
  /** The header holding the name, or `false`. Defaults to `'x-instance-name'`. */
  headerField?: string | false
  /** The cookie holding the name, or `false`. Defaults to `false`. */
  cookie?: string | false
  /** Take the name from the first path segment (`/acme/students` → `acme`). Defaults to `false`. */
  pathSegment?: boolean
  /** The instance served on each local port (`{ 3001: 'acme' }`), or `false`. Defaults to `false`. */
  ports?: Record<number, string> | false
  /** Labels of the host name that are the site's own domain (`1`: `store.cabloy.com` → `cabloy.store`), or `false`. Defaults to `1`. */
  subdomainOffset?: number | false
  /** The order resolvers are tried in; functions are custom resolvers. Defaults to `['claim', 'custom', 'query', 'header', 'cookie', 'path', 'port', 'host']`. */
  order?: ReadonlyArray<ResolverName | InstanceResolver>
  /** What a request that names no instance gets: the default instance `''`, host context, or 400 `TENANCY_INSTANCE_REQUIRED`. Defaults to `'default'`. */
  fallback?: 'default' | 'host' | 'reject'
}

/** Where a request runs: an instance, or host context. */
export type Resolution = Instance | null

const DEFAULT_ORDER: readonly ResolverName[] = ['claim', 'custom', 'query', 'header', 'cookie', 'path', 'port', 'host']
const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/

/**
 * The instance name carried by `host`, counting `offset` labels from the right
 * as the site's own domain: with offset 1, `cabloy.com` → `cabloy` and
 * `store.cabloy.com` → `cabloy.store`; with offset 2, `cabloy.com` → `''` and
 * `store.cabloy.com` → `store`. IP addresses and `localhost` carry none.
 */
export function instanceNameFromHost (host: string, offset: number): string | undefined {
  // A fully qualified name may end with the root's dot: `cabloy.com.` is `cabloy.com`.
  if (host.endsWith('.')) host = host.slice(0, -1)
  if (host === '' || host === 'localhost' || IPV4.test(host) || host.startsWith('[') || host.includes(':')) return undefined
  return host.split('.').reverse().slice(offset).join('.')
}

/**
 * The value of cookie `name` in a `Cookie` header, `undefined` when it is
 * absent, or every value when it is there more than once (Node joins repeated
 * `Cookie` headers with `; `): the chain refuses a list with 400, as it does a
 * repeated header or query field, instead of picking one.
 */
export function readCookie (header: string, name: string): string | string[] | undefined {
  let found: string[] | undefined
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq !== -1 && part.slice(0, eq).trim() === name) {
      let value = part.slice(eq + 1).trim()
      try { value = decodeURIComponent(value) } catch {}
      ;(found ??= []).push(value)
    }
  }
  return found === undefined ? undefined : found.length === 1 ? found[0] : found
}

// Host names arrive in lower case, instance names need not be: an index of the
// names folded to lower case, built once per list of instances. A folded name
// that two instances share maps to nothing, so neither is guessed.
const foldedIndexes = new WeakMap<readonly Instance[], Map<string, string | undefined>>()
function byFoldedName (store: InstanceStore): Map<string, string | undefined> {
  const list = store.list()
  let index = foldedIndexes.get(list)
  if (index === undefined) {
    index = new Map()
    for (const { name } of list) {
      const folded = name.toLowerCase()
      index.set(folded, index.has(folded) ? undefined : name)
    }
    foldedIndexes.set(list, index)
  }
  return index
}

function builtIn (name: ResolverName, options: ResolveOptions, store: InstanceStore): InstanceResolver | undefined {
  switch (name) {
    case 'claim': {
      const claim = options.claim ?? false
      if (claim === false) return undefined
      return (request) => {
        const value = request.user !== null && typeof request.user === 'object' ? (request.user as Record<string, unknown>)[claim] : undefined
        if (value === undefined || value === 'host') return undefined
        // Ids, never names: an id is never reused, so a token outliving its instance reaches no later one of the same name.
        if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new InstanceForbiddenError(`its claim ${claim} is ${quote(value)}, not an instance id.`)
        const instance = store.byId(value)
        if (instance === undefined) throw new UnknownInstanceError(quote(value))
        return instance.name
      }
    }
    case 'custom':
      return options.getInstanceName
    case 'query': {
      const field = options.queryField ?? 'x-instance-name'
      if (field === false) return undefined
      return (request) => {
        const query = request.query as Record<string, unknown> | undefined
        return query != null && typeof query === 'object' ? query[field] : undefined
      }
    }
    case 'header': {
      const field = options.headerField ?? 'x-instance-name'
      if (field === false) return undefined
      const key = field.toLowerCase()
      return (request) => request.headers[key]
    }
    case 'cookie': {
      const cookie = options.cookie ?? false
      if (cookie === false) return undefined
      return (request) => {
        const header = request.headers.cookie
        return typeof header === 'string' ? readCookie(header, cookie) : undefined
      }
    }
    case 'path':
      if (options.pathSegment !== true) return undefined
      return (request) => {
        const rest = request.url.slice(1)
        const stop = rest.search(/[/?#]/)
        const segment = stop === -1 ? rest : rest.slice(0, stop)
        if (segment === '') return undefined
        try { return decodeURIComponent(segment) } catch { return segment }
      }
    case 'port': {
      const ports = options.ports ?? false
      if (ports === false) return undefined
      const map = new Map(Object.entries(ports).map(([port, name]) => [Number(port), name]))
      return (request) => {
        const port = request.socket?.localPort
        return port === undefined ? undefined : map.get(port)
      }
    }
    case 'host': {
      const offset = options.subdomainOffset ?? 1
      if (offset === false) return undefined
      return (request) => {
        if (request.hostname === undefined) return undefined
        const name = instanceNameFromHost(request.hostname.toLowerCase(), offset)
        return name === undefined || store.byName(name) !== undefined ? name : byFoldedName(store).get(name) ?? name
      }
    }
  }
}

function validate (options: ResolveOptions): void {
  const fail = (reason: string): never => { throw new InvalidOptionsError(`resolve.${reason}`) }
  if (options === null || typeof options !== 'object') fail(' must be an object')
  if (options.getInstanceName !== undefined && typeof options.getInstanceName !== 'function') fail('getInstanceName must be a function')
  for (const key of ['claim', 'queryField', 'headerField', 'cookie'] as const) {
    const value = options[key]
    if (value !== undefined && value !== false && (typeof value !== 'string' || value === '')) fail(`${key} must be a non-empty string or false`)
  }
  if (options.pathSegment !== undefined && typeof options.pathSegment !== 'boolean') fail('pathSegment must be a boolean')
  const offset = options.subdomainOffset
  if (offset !== undefined && offset !== false && (!Number.isInteger(offset) || offset < 0)) fail('subdomainOffset must be a whole number of labels or false')
  if (options.ports !== undefined && options.ports !== false) {
    if (options.ports === null || typeof options.ports !== 'object') fail('ports must be an object of port: instance name')
    for (const [port, name] of Object.entries(options.ports)) {
      if (!/^\d{1,5}$/.test(port)) fail(`ports: ${JSON.stringify(port)} is not a port number`)
      if (!isValidInstanceName(name)) fail(`ports: ${JSON.stringify(name)} is not an instance name`)
    }
  }
  if (options.fallback !== undefined && !['default', 'host', 'reject'].includes(options.fallback)) fail(`fallback must be 'default', 'host' or 'reject', not ${JSON.stringify(options.fallback)}`)
  if (options.order !== undefined) {
    if (!Array.isArray(options.order)) fail('order must be an array')
    for (const entry of options.order) {
      if (typeof entry !== 'function' && !DEFAULT_ORDER.includes(entry)) fail(`order: ${JSON.stringify(entry)} is not a resolver (${DEFAULT_ORDER.join(', ')}, or a function)`)
    }
  }
}

/**
 * Builds the resolver chain once, at start-up: the first resolver that finds a
 * name wins; the name is validated and looked up. Returns the instance, `null`
 * for host context, or a promise of either when a custom resolver is async.
 * Throws `TENANCY_INVALID_INSTANCE_NAME` (400), `TENANCY_UNKNOWN_INSTANCE`
 * (404), `TENANCY_INSTANCE_DISABLED` (403) or `TENANCY_INSTANCE_REQUIRED` (400).
 *
 * ```ts
 * const resolve = createInstanceResolver(tenancy.instances, { headerField: 'x-tenant' })
 * resolve({ headers: { 'x-tenant': 'acme' }, url: '/' }) // the acme instance
 * ```
 */
export function createInstanceResolver (store: InstanceStore, options: ResolveOptions = {}): (request: ResolveRequest) => Resolution | Promise<Resolution> {
  validate(options)
  const resolvers = (options.order ?? DEFAULT_ORDER)
    .map((entry) => typeof entry === 'function' ? entry : builtIn(entry, options, store))
    .filter((resolver): resolver is InstanceResolver => resolver !== undefined)
  const fallback = options.fallback ?? 'default'
  if (fallback === 'default' && store.byName('') === undefined) {
    throw new InvalidOptionsError('resolve.fallback is \'default\' but there is no default instance named \'\': add one, or set resolve.fallback to \'host\' or \'reject\'')
  }

  const accept = (found: unknown): Resolution => {
    if (!isValidInstanceName(found)) throw new InvalidInstanceNameError(Array.isArray(found) ? 'given more than once' : quote(found))
    return requireInstance(store, found)
  }
  const nothing = (): Resolution => {
    if (fallback === 'host') return null
    if (fallback === 'reject') throw new InstanceRequiredError()
    return requireInstance(store, '')
  }
  const from = (request: ResolveRequest, start: number): Resolution | Promise<Resolution> => {
    for (let i = start; i < resolvers.length; i++) {
      const found = resolvers[i]!(request)
      if (found instanceof Promise) {
        return found.then((name) => name === undefined ? from(request, i + 1) : accept(name))
      }
      if (found !== undefined) return accept(found)
    }
    return nothing()
  }
  return (request) => from(request, 0)
}
