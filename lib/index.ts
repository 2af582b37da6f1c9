// The public surface of the framework-free part, name by name, as Kysely's
// index does: anything not listed here is internal and may change in any release.
// README "Public names" says which of these are stable.

export {
  TenancyError, errorClasses,
  InvalidInstanceNameError, InstanceRequiredError, UnknownInstanceError, InstanceDisabledError,
  NoContextError, HostContextError, MismatchError, RawSqlError, UnsupportedStatementError, UnknownTableError,
  DatasourceUnavailableError, ClosedError, SessionError, NoTenancyError, InvalidOptionsError,
} from './errors.js'

export { runAsInstance, runAsHost, unscoped, currentInstance, currentContext } from './context.js'
export type { ContextKind, ContextOwner, TenancyContext } from './context.js'

export { Tenancy, createTenancy } from './tenancy.js'
export type { TenancyOptions } from './tenancy.js'

export { isValidInstanceName } from './instances/instance.js'
export type { Instance, InstanceConfig, InstanceMode, InstanceName, InstanceRecord } from './instances/instance.js'
export { InstanceRegistry } from './instances/instance-registry.js'
export type { InstanceStore } from './instances/instance-registry.js'

export { createInstanceResolver, instanceNameFromHost } from './resolve/instance-resolver.js'
export type { InstanceResolver, Resolution, ResolveOptions, ResolveRequest, ResolverName } from './resolve/instance-resolver.js'

export { InstanceFilterPlugin } from './filter/instance-filter-plugin.js'
export type { InstanceFilterPluginOptions } from './filter/instance-filter-plugin.js'
export { TenantTables, discoverTenantTables } from './filter/tenant-tables.js'
export type { CatalogQueryable, TenantTableKind, TenantTablesOption } from './filter/tenant-tables.js'
export { RawSqlGuard } from './filter/raw-sql-guard.js'
export { RLS_SETTING, rowLevelSecuritySettings, rowLevelSecurityStatements, rowLevelSecurityValue } from './filter/row-level-security.js'
export type { RowLevelSecurityOptions } from './filter/row-level-security.js'
export type { InstanceDatabase, InstanceInsertable, TenantColumn } from './filter/instance-database.js'

export { PoolManager, DEFAULT_POOL_SETTINGS } from './routing/pool-manager.js'
export type { DatasourceConfig, Lease, PoolCounts, PoolManagerOptions, PoolSettings, PoolState, PoolStatus } from './routing/pool-manager.js'
export { RoutingPool } from './routing/routing-pool.js'
export type { RoutingPoolOptions, RoutingStats } from './routing/routing-pool.js'
export { SessionState, sessionTarget } from './routing/session-state.js'
export type { SessionSettings, SessionTarget } from './routing/session-state.js'

// Names of 0.1, kept for one minor version.
import { InstanceFilterPlugin } from './filter/instance-filter-plugin.js'
import type { InstanceFilterPluginOptions } from './filter/instance-filter-plugin.js'
import type { InstanceDatabase, InstanceInsertable } from './filter/instance-database.js'
/** @deprecated Renamed {@link InstanceFilterPlugin}; this alias goes in 0.3. */
export const TenantFilterPlugin = InstanceFilterPlugin
/** @deprecated Renamed {@link InstanceFilterPlugin}; this alias goes in 0.3. */
export type TenantFilterPlugin = InstanceFilterPlugin
/** @deprecated Renamed {@link InstanceFilterPluginOptions}; this alias goes in 0.3. */
export type TenantFilterPluginOptions = InstanceFilterPluginOptions
/** @deprecated Renamed {@link InstanceDatabase}; this alias goes in 0.3. */
export type TenantDatabase<DB, Column extends string = 'iid'> = InstanceDatabase<DB, Column>
/** @deprecated Renamed {@link InstanceInsertable}; this alias goes in 0.3. */
export type TenantInsertable<Row, Column extends string = 'iid'> = InstanceInsertable<Row, Column>
