import createError from '@fastify/error'

/**
 * The base of every error this library raises. Each error has a stable `code`
 * and the HTTP `statusCode` the Fastify plugin answers with; only a client's
 * mistake is 4xx.
 *
 * ```ts
 * try { await runAsInstance('nope', job) }
 * catch (err) { if (err instanceof TenancyError) console.log(err.code) } // TENANCY_UNKNOWN_INSTANCE
 * ```
 */
export class TenancyError extends Error {
  declare code: string
  declare statusCode: number
}

// @fastify/error wants a plain ErrorConstructor for its Base argument.
const Base = TenancyError as unknown as ErrorConstructor

type Tagged<C extends string, S extends number> = TenancyError & { code: C; statusCode: S }
type ErrorClass<C extends string, S extends number> = {
  new (...args: unknown[]): Tagged<C, S>
  (...args: unknown[]): Tagged<C, S>
  readonly prototype: Tagged<C, S>
}

function define<C extends string, S extends number> (code: C, statusCode: S, message: string): ErrorClass<C, S> {
  return createError(code, message, statusCode, Base) as unknown as ErrorClass<C, S>
}

/**
 * Renders a value that came from outside (a header, a query field) for an
 * error message: quoted, control characters escaped, cut to a readable length.
 */
export function quote (value: unknown): string {
  // String() of a null-prototype object (a query parser's plainObjects) throws:
  // a client's value must never turn into a 500 while its error is described.
  const text = typeof value === 'string' ? value
    : typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean' || value === null || value === undefined ? String(value)
      : Array.isArray(value) ? 'a list' : typeof value === 'object' ? 'an object' : `a ${typeof value}`
  const cut = text.length > 80 ? text.slice(0, 80) + '…' : text
  return JSON.stringify(cut)
}

/** 400: a resolved name has characters outside `[A-Za-z0-9._-]`, starts with a dot, is over 63 characters, or was given more than once. */
export const InvalidInstanceNameError = define('TENANCY_INVALID_INSTANCE_NAME', 400,
  'The instance name %s is not valid: use at most 63 of the characters A-Z, a-z, 0-9, ".", "_" and "-", not starting with ".".')

/** 400: the request named no instance and the resolver chain's fallback is `reject`. */
export const InstanceRequiredError = define('TENANCY_INSTANCE_REQUIRED', 400,
  'The request does not name an instance, and this server has no default instance.')

/** 404: no instance has that name or id. */
export const UnknownInstanceError = define('TENANCY_UNKNOWN_INSTANCE', 404,
  'There is no instance named or numbered %s.')

/** 403: the instance exists but is disabled. */
export const InstanceDisabledError = define('TENANCY_INSTANCE_DISABLED', 403,
  'The instance %s is disabled.')

/**
 * 400: a new instance's name is taken once case is ignored, or its schema or
 * database name would be another instance's. It has the code of
 * {@link InvalidInstanceNameError}, and `instanceof` says it is one.
 */
export const InstanceNameCollisionError = define('TENANCY_INVALID_INSTANCE_NAME', 400,
  'The instance name %s cannot be used: %s')

/** 409: an instance with that name or id exists or is being created, or something the new instance needs is someone else's. */
export const InstanceExistsError = define('TENANCY_INSTANCE_EXISTS', 409, '%s')

/** 503: the instance exists but is not ready (being provisioned, or its creation failed). */
export const InstanceNotReadyError = define('TENANCY_INSTANCE_NOT_READY', 503,
  'The instance %s is not ready: it is %s.')

/** 403: the request's verified token belongs to another instance than the one the request asks for, or names none. */
export const InstanceForbiddenError = define('TENANCY_INSTANCE_FORBIDDEN', 403,
  'This token may not act on the instance the request asks for: %s')

/** 500: a tenant table was queried with no instance in context. */
export const NoContextError = define('TENANCY_NO_CONTEXT', 500,
  'The table %s belongs to instances, but this query runs outside any instance: use runAsInstance(), runAsHost() or unscoped().')

/** 500: a `must` table was queried in host context. */
export const HostContextError = define('TENANCY_HOST_CONTEXT', 500,
  'The table %s holds only instance rows, but this query runs in host context: use runAsInstance() or unscoped().')

/** 500: a write names another instance's iid, or a transaction crosses instances. */
export const MismatchError = define('TENANCY_MISMATCH', 500, '%s')

/** 500: a raw SQL statement names a tenant table outside `unscoped` while `strict` is on. */
export const RawSqlError = define('TENANCY_RAW_SQL', 500,
  'A raw SQL statement names the tenant table %s; raw statements cannot be confined to an instance. Use the query builder, or unscoped() with an explicit iid.')

/** 500: a statement on a tenant table cannot be confined to an instance (MERGE), or may change the session under PgBouncer's transaction pooling, so it is refused. */
export const UnsupportedStatementError = define('TENANCY_UNSUPPORTED_STATEMENT', 500, '%s')

/** 500: a query names a table that table discovery did not see: it may hold instance rows. */
export const UnknownTableError = define('TENANCY_UNKNOWN_TABLE', 500,
  'The table %s did not exist when the tenant tables were discovered, so it cannot be confined: call tenancy.discoverTables() after migrations, or list the tenant tables in the tables option.')

/** 503: the instance's database cannot be reached; other instances keep working. */
export const DatasourceUnavailableError = define('TENANCY_DATASOURCE_UNAVAILABLE', 503,
  'The database of instance %s cannot be reached right now.')

/** 500: the tenancy was closed; its Kysely and pools cannot be used any more. */
export const ClosedError = define('TENANCY_CLOSED', 500, 'The tenancy has been closed: %s')

/** 500: a connection's session (schema, role, settings) could not be prepared for its instance; the connection was discarded (under PgBouncer's transaction pooling, a transaction's set-up failed and was rolled back). */
export const SessionError = define('TENANCY_SESSION_FAILED', 500, '%s')

/** 500: a named export (`runAsInstance`, `runAsHost`, `unscoped`) was called outside any tenancy's context. */
export const NoTenancyError = define('TENANCY_NO_TENANCY', 500,
  '%s() was called outside any tenancy\'s context, so it cannot tell which tenancy to act on: call tenancy.%s() on the tenancy itself.')

/** 500: a job's payload does not name its instance (an id) or host context, so it cannot run. */
export const InvalidJobError = define('TENANCY_INVALID_JOB', 500,
  'The job cannot run: %s')

/** 500, at start-up: the options given to createTenancy or the plugin are not valid. */
export const InvalidOptionsError = define('TENANCY_INVALID_OPTIONS', 500, 'Invalid tenancy options: %s')

/** 500, at start-up with `doctor: 'throw'`: the set-up check found problems; `findings` lists them. */
export const DoctorError = define('TENANCY_DOCTOR_FINDINGS', 500, 'The set-up check (doctor) found problems: %s')

/** Every error class, by code: the README's error table is checked against it. */
export const errorClasses = {
  TENANCY_INVALID_INSTANCE_NAME: InvalidInstanceNameError,
  TENANCY_INSTANCE_REQUIRED: InstanceRequiredError,
  TENANCY_UNKNOWN_INSTANCE: UnknownInstanceError,
  TENANCY_INSTANCE_DISABLED: InstanceDisabledError,
  TENANCY_INSTANCE_FORBIDDEN: InstanceForbiddenError,
  TENANCY_INSTANCE_EXISTS: InstanceExistsError,
  TENANCY_INSTANCE_NOT_READY: InstanceNotReadyError,
  TENANCY_NO_CONTEXT: NoContextError,
  TENANCY_HOST_CONTEXT: HostContextError,
  TENANCY_MISMATCH: MismatchError,
  TENANCY_RAW_SQL: RawSqlError,
  TENANCY_UNSUPPORTED_STATEMENT: UnsupportedStatementError,
  TENANCY_UNKNOWN_TABLE: UnknownTableError,
  TENANCY_DATASOURCE_UNAVAILABLE: DatasourceUnavailableError,
  TENANCY_CLOSED: ClosedError,
  TENANCY_SESSION_FAILED: SessionError,
  TENANCY_NO_TENANCY: NoTenancyError,
  TENANCY_INVALID_JOB: InvalidJobError,
  TENANCY_INVALID_OPTIONS: InvalidOptionsError,
  TENANCY_DOCTOR_FINDINGS: DoctorError,
} as const
