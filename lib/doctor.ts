import pg from 'pg'
import { quote } from './errors.js'
import type { Instance } from './instances/instance.js'
import type { InstanceStore } from './instances/instance-registry.js'
import { DEFAULT_POOL_SETTINGS, type DatasourceConfig, type PoolManager, type PoolSettings } from './routing/pool-manager.js'
import type { MigrationStatusOptions, TargetMigrationState } from './lifecycle/fleet-migrator.js'

/**
 * What a finding is about; stable, for scripts and CI to match on:
 * - `login-bypasses-rls`: with `rls`, the application's login is a superuser
 *   or has `BYPASSRLS`, so the policies do not bind it;
 * - `rls-not-enabled`, `rls-not-forced`, `rls-no-policy`: with `rls`, a tenant
 *   table is not under row-level security, is not forced (its owner is not
 *   bound), or has no policy;
 * - `tenant-column-not-indexed`: no index of a tenant table starts with the
 *   tenant column, so every confined query reads the whole table;
 * - `unique-without-tenant-column`: a unique constraint or index of a tenant
 *   table leaves out the tenant column, so two instances' rows collide (an
 *   upsert of one instance updates another's row);
 * - `schema-missing`, `role-missing`: a schema instance's schema or role does
 *   not exist;
 * - `datasource-unreachable`: a datasource an instance uses cannot be reached;
 * - `migrations-pending`: a target has migrations not applied yet;
 * - `connections-over-limit`: the connections this process may open on one
 *   server exceed its `max_connections`.
 */
export type DoctorCode =
  | 'login-bypasses-rls' | 'rls-not-enabled' | 'rls-not-forced' | 'rls-no-policy'
  | 'tenant-column-not-indexed' | 'unique-without-tenant-column'
  | 'schema-missing' | 'role-missing' | 'datasource-unreachable'
  | 'migrations-pending' | 'connections-over-limit'

/** One problem of a set-up, with what to do about it. */
export interface DoctorFinding {
  readonly code: DoctorCode
  /**
   * What it concerns: `datasource:<name>`, `table:<datasource>:<schema>.<table>`,
   * `instance:<name>`, a migration target's key, or `server:<host>:<port>`.
   */
  readonly target: string
  /** One sentence: what is wrong. */
  readonly message: string
  /** One sentence: what to do. */
  readonly fix: string
}

/** Options of {@link doctor}. */
export interface DoctorOptions {
  /**
   * Also read every target's migration table (`migrationStatus()`) and report
   * pending migrations: one connection per target, so it is left out of the
   * start-up run. Defaults to `true` when migrations are configured.
   */
  migrations?: boolean
  /**
   * Also check the databases of isolated instances: one connection each,
   * which the pools otherwise open only when the instance is used, so the
   * start-up run leaves them out. Defaults to `true`.
   */
  isolated?: boolean
}

/** What the doctor reads of a tenancy's options. */
export interface DoctorSettings {
  readonly datasources: Readonly<Record<string, DatasourceConfig>>
  readonly rls?: boolean
  readonly maxPools?: number
  /** The connection budget over all datasources, when set. */
  readonly maxConnections?: number
  readonly pool?: PoolSettings
  readonly migrations?: object
  /** The instance store's listening connection: counted in the connection budget. */
  readonly listens?: boolean
}

/** What the doctor needs of a tenancy; `Tenancy` has it. */
export interface DoctorSubject {
  readonly instances: InstanceStore
  readonly tenantColumn: string
  readonly pools: PoolManager
  readonly doctorSettings: DoctorSettings
  migrationStatus (options?: MigrationStatusOptions): Promise<TargetMigrationState[]>
}

interface TableRow {
  schema: string
  name: string
  rls: boolean
  forced: boolean
  policy: boolean
  indexed: boolean
  unique_without: string[]
}

interface CatalogRow {
  login: string
  superuser: boolean
  bypassrls: boolean
  max_connections: number
  server: string
  schemas: string[]
  roles: string[]
  tables: TableRow[]
}

/**
 * One statement per datasource: the login's rights, the server's connection
 * limit, which of the instances' schemas and roles exist, and every tenant
 * table (a table with the tenant column, partitions left out) with its
 * row-level security, whether an index starts with the tenant column, and its
 * unique constraints and indexes that leave the column out. Primary keys are
 * not counted there: a generated key is unique across instances by itself.
 */
const CATALOG = `select r.rolname as login, r.rolsuper as superuser, r.rolbypassrls as bypassrls,
  current_setting('max_connections')::int as max_connections,
  coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'local:' || current_setting('port')) as server,
  array(select nspname::text from pg_namespace where nspname = any($1::text[])) as schemas,
  array(select rolname::text from pg_roles where rolname = any($2::text[])) as roles,
  coalesce((select json_agg(t order by t.schema, t.name) from (
    select n.nspname as schema, c.relname as name, c.relrowsecurity as rls, c.relforcerowsecurity as forced,
      exists (select 1 from pg_policy p where p.polrelid = c.oid) as policy,
      exists (select 1 from pg_index i where i.indrelid = c.oid and i.indkey[0] = a.attnum) as indexed,
      array(select ic.relname::text from pg_index i join pg_class ic on ic.oid = i.indexrelid
        where i.indrelid = c.oid and i.indisunique and not i.indisprimary and not (a.attnum = any(i.indkey::int2[]))
        order by ic.relname) as unique_without
    from pg_class c
    join pg_namespace n on n.oid = c.relnamespace
    join pg_attribute a on a.attrelid = c.oid and a.attname = $3 and a.attnum > 0 and not a.attisdropped
    where c.relkind in ('r', 'p') and not c.relispartition
      and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
  ) t), '[]') as tables
from pg_roles r where r.rolname = current_user`

/** `default` first, then every other datasource an instance uses, each with its instances. */
function datasourcesOf (instances: readonly Instance[]): Map<string, Instance[]> {
  const map = new Map<string, Instance[]>([['default', []]])
  for (const instance of instances) {
    const list = map.get(instance.datasource) ?? []
    list.push(instance)
    map.set(instance.datasource, list)
  }
  return map
}

function clientConfig (config: DatasourceConfig, pool: PoolSettings | undefined): pg.ClientConfig {
  const base = typeof config === 'string' ? { connectionString: config } : { ...config }
  return {
    ...base,
    connectionTimeoutMillis: base.connectionTimeoutMillis ?? pool?.connectionTimeoutMillis ?? DEFAULT_POOL_SETTINGS.connectionTimeoutMillis,
    application_name: 'fastify-tenancy doctor',
  }
}

/**
 * Reads one datasource's catalog on a connection of its own for a configured
 * datasource, so that the pools stay as lazy as they were; a datasource made
 * at run time (an isolated instance's database) is only known to the pools.
 */
async function readCatalog (subject: DoctorSubject, datasource: string, values: unknown[]): Promise<CatalogRow> {
  const config = subject.doctorSettings.datasources[datasource]
  if (config !== undefined) {
    const client = new pg.Client(clientConfig(config, subject.doctorSettings.pool))
    client.on('error', () => {})
    try {
      await client.connect()
      return (await client.query<CatalogRow>(CATALOG, values)).rows[0]!
    } finally {
      await client.end().catch(() => {})
    }
  }
  const lease = await subject.pools.acquire(datasource)
  try {
    return (await lease.client.query<CatalogRow>(CATALOG, values)).rows[0]!
  } finally {
    subject.pools.release(lease, true)
  }
}

function reason (err: unknown): string {
  const cause = (err as { cause?: unknown }).cause
  const message = cause instanceof Error ? cause.message : err instanceof Error ? err.message : String(err)
  return message === '' ? String((err as { code?: unknown }).code ?? 'unknown error') : message
}

/**
 * Checks a running set-up and returns its problems, each with what to do (none
 * when all is well): one catalog statement per datasource an instance uses
 * (the login's rights with `rls`, row-level security, indexes and unique
 * constraints of the tenant tables, schema instances' schemas and roles, the
 * server's `max_connections`), then, with `migrations`, each target's pending
 * migrations. It never throws for what it finds: an unreachable datasource is
 * a finding. `createTenancy` runs it at start-up (the `doctor` option), and
 * `fastify-tenancy doctor` prints it.
 *
 * ```ts
 * for (const finding of await doctor(tenancy)) console.log(finding.code, finding.target, finding.message, finding.fix)
 * // tenant-column-not-indexed table:default:public.student No index of public.student starts with its tenant column "iid"; …
 * ```
 */
export async function doctor (subject: DoctorSubject, options: DoctorOptions = {}): Promise<DoctorFinding[]> {
  const settings = subject.doctorSettings
  const column = subject.tenantColumn
  const findings: DoctorFinding[][] = []
  const servers = new Map<string, { limit: number, pools: number[] }>()
  const datasources = datasourcesOf(subject.instances.list())
  if (options.isolated === false) {
    for (const [name, instances] of datasources) {
      if (name !== 'default' && instances.every((instance) => instance.mode === 'isolated')) datasources.delete(name)
    }
  }
  const poolMax = (datasource: string): number => {
    const config = settings.datasources[datasource]
    const own = config !== undefined && typeof config === 'object' ? config.max : undefined
    return own ?? settings.pool?.max ?? DEFAULT_POOL_SETTINGS.max
  }
  await Promise.all([...datasources].map(async ([datasource, instances], index) => {
    const found: DoctorFinding[] = []
    findings[index] = found
    const schemas = instances.flatMap((instance) => instance.schema === null ? [] : [instance.schema])
    const roles = instances.flatMap((instance) => instance.role === null ? [] : [instance.role])
    let row: CatalogRow
    try {
      row = await readCatalog(subject, datasource, [schemas, roles, column])
    } catch (err) {
      const names = instances.map((instance) => quote(instance.name)).join(', ')
      found.push({
        code: 'datasource-unreachable',
        target: `datasource:${datasource}`,
        message: `The datasource ${quote(datasource)}${names === '' ? '' : ` (instances ${names})`} cannot be reached: ${reason(err)}.`,
        fix: 'Check its connection settings, that the server runs and that it accepts this login; its instances get 503 until it can be reached.',
      })
      return
    }
    const server = servers.get(row.server) ?? { limit: row.max_connections, pools: [] }
    server.pools.push(poolMax(datasource))
    servers.set(row.server, server)
    if (settings.rls === true && (row.superuser || row.bypassrls)) {
      found.push({
        code: 'login-bypasses-rls',
        target: `datasource:${datasource}`,
        message: `The login ${quote(row.login)} of datasource ${quote(datasource)} is ${row.superuser ? 'a superuser' : 'BYPASSRLS'}, so row-level security (rls: true) does not bind its queries.`,
        fix: `Connect as a login without SUPERUSER and BYPASSRLS (alter role ${pg.escapeIdentifier(row.login)} nosuperuser nobypassrls), owning the tables or granted on them.`,
      })
    }
    for (const table of row.tables) {
      const name = `${table.schema}.${table.name}`
      const target = `table:${datasource}:${name}`
      if (settings.rls === true) {
        if (!table.rls) {
          found.push({ code: 'rls-not-enabled', target, message: `The tenant table ${name} is not under row-level security, but rls is on.`, fix: 'Run rowLevelSecurityStatements() for it in a migration.' })
        } else if (!table.forced) {
          found.push({ code: 'rls-not-forced', target, message: `The tenant table ${name} has row-level security enabled but not forced, so its owner is not bound by the policies.`, fix: `Run alter table ${pg.escapeIdentifier(table.schema)}.${pg.escapeIdentifier(table.name)} force row level security (rowLevelSecurityStatements() does).` })
        }
        if (table.rls && !table.policy) {
          found.push({ code: 'rls-no-policy', target, message: `The tenant table ${name} is under row-level security but has no policy, so it hides every row.`, fix: 'Run rowLevelSecurityStatements() for it in a migration.' })
        }
      }
      if (!table.indexed) {
        found.push({
          code: 'tenant-column-not-indexed',
          target,
          message: `No index of the tenant table ${name} starts with its tenant column ${quote(column)}, so every confined query reads the whole table.`,
          fix: `Create an index that starts with it, e.g. create index on ${pg.escapeIdentifier(table.schema)}.${pg.escapeIdentifier(table.name)} (${pg.escapeIdentifier(column)}).`,
        })
      }
      for (const index of table.unique_without) {
        found.push({
          code: 'unique-without-tenant-column',
          target,
          message: `The unique index ${quote(index)} of the tenant table ${name} leaves out ${quote(column)}, so the rows of two instances collide (an upsert of one instance would update another's row).`,
          fix: `Put ${quote(column)} first in that unique constraint or index.`,
        })
      }
    }
    for (const instance of instances) {
      if (instance.schema !== null && !row.schemas.includes(instance.schema)) {
        found.push({ code: 'schema-missing', target: `instance:${instance.name}`, message: `The schema ${quote(instance.schema)} of instance ${quote(instance.name)} does not exist in datasource ${quote(datasource)}.`, fix: 'Create it (createInstance does for instances of a databaseStore), then run the migrations.' })
      }
      if (instance.role !== null && !row.roles.includes(instance.role)) {
        found.push({ code: 'role-missing', target: `instance:${instance.name}`, message: `The role ${quote(instance.role)} of instance ${quote(instance.name)} does not exist, so its queries fail to SET ROLE.`, fix: `Create the role and grant it to the login, or take role out of the instance's configuration.` })
      }
    }
  }))
  const found = findings.flat()
  for (const [server, { limit, pools }] of servers) {
    const maxPools = settings.maxPools ?? (settings.maxConnections === undefined ? 10 : Infinity)
    // The pools open at once are at most maxPools, the largest ones in the worst case; maxConnections caps them all.
    const open = Math.min(pools.sort((a, b) => b - a).slice(0, maxPools).reduce((sum, max) => sum + max, 0), settings.maxConnections ?? Infinity)
    const budget = open + (settings.listens === true ? 1 : 0)
    if (budget > limit) {
      const how = settings.maxConnections !== undefined && open === settings.maxConnections ? `maxConnections ${open}` : `${Math.min(maxPools, pools.length)} pools of up to ${pools.join(', ')}`
      found.push({
        code: 'connections-over-limit',
        target: `server:${server}`,
        message: `This process may open ${budget} connections on the server ${server} (${how}${settings.listens === true ? ', and the store\'s listening connection' : ''}), more than its max_connections of ${limit}.`,
        fix: 'Lower maxConnections, maxPools or pool.max, or raise max_connections; leave room for every other process as well.',
      })
    }
  }
  if (options.migrations ?? settings.migrations !== undefined) {
    if (settings.migrations !== undefined) {
      const unreachable = new Set(found.filter((finding) => finding.code === 'datasource-unreachable').map((finding) => finding.target.slice('datasource:'.length)))
      for (const state of await subject.migrationStatus()) {
        if (state.error !== undefined || unreachable.has(state.datasource) || state.pending.length === 0) continue
        const instances = state.instances.length === 0 ? '' : ` (instances ${state.instances.map((name) => quote(name)).join(', ')})`
        found.push({
          code: 'migrations-pending',
          target: state.target,
          message: `The target ${state.target}${instances} has ${state.pending.length} pending ${state.set} migration${state.pending.length === 1 ? '' : 's'}: ${state.pending.join(', ')}.`,
          fix: 'Run fastify-tenancy migrate (or tenancy.migrate()).',
        })
      }
    }
  }
  return found
}

/** Findings already reported by {@link warnFindings}, so each is logged once per process. */
const reported = new Set<string>()

/** Emits each finding not reported before in this process as a process warning. */
export function warnFindings (findings: readonly DoctorFinding[]): void {
  for (const finding of findings) {
    const key = `${finding.code}\u0000${finding.target}\u0000${finding.message}`
    if (reported.has(key)) continue
    if (reported.size < 10_000) reported.add(key)
    process.emitWarning(`${finding.message} ${finding.fix}`, { type: 'TenancyDoctorWarning', code: finding.code })
  }
}
