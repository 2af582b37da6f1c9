// The public surface of the framework-free part, name by name, as Kysely's
// index does: anything not listed here is internal and may change in any release.
// README "Public names" says which of these are stable.

export {
  TenancyError, errorClasses,
  InvalidInstanceNameError, InstanceRequiredError, UnknownInstanceError, InstanceDisabledError,
  InstanceNameCollisionError, InstanceExistsError, InstanceNotReadyError, InstanceForbiddenError, InvalidJobError,
  NoContextError, HostContextError, MismatchError, RawSqlError, UnsupportedStatementError, UnknownTableError,
  DatasourceUnavailableError, ClosedError, SessionError, NoTenancyError, InvalidOptionsError, DoctorError,
} from './errors.js'

export { runAsInstance, runAsHost, unscoped, currentInstance, currentContext } from './context.js'
export type { ContextKind, ContextOwner, TenancyContext } from './context.js'

export { Tenancy, createTenancy } from './tenancy.js'
export type { TenancyOptions } from './tenancy.js'

export { doctor } from './doctor.js'
export type { DoctorCode, DoctorFinding, DoctorOptions, DoctorSettings, DoctorSubject } from './doctor.js'

export { isValidInstanceName, instanceIdentifier } from './instances/instance.js'
export type { Instance, InstanceConfig, InstanceMode, InstanceName, InstanceRecord, InstanceState } from './instances/instance.js'
export { databaseStore, DatabaseStore } from './instances/database-store.js'
export type { DatabaseStoreOptions, StoredInstance, StoreChange } from './instances/database-store.js'
export type { CreateInstanceInput, CreatedInstance, InstancePatch, ProvisionContext, RemoveInstanceOptions, TenancyEvents } from './lifecycle/instance-lifecycle.js'
export { InstanceRegistry } from './instances/instance-registry.js'
export type { InstanceStore } from './instances/instance-registry.js'

export { createInstanceResolver, instanceNameFromHost } from './resolve/instance-resolver.js'
export type { InstanceResolver, Resolution, ResolveOptions, ResolveRequest, ResolverName } from './resolve/instance-resolver.js'

export { InstanceFilterPlugin } from './filter/instance-filter-plugin.js'
export type { InstanceFilterPluginOptions } from './filter/instance-filter-plugin.js'
export { TenantTables, discoverTenantTables } from './filter/tenant-tables.js'
export type { CatalogQueryable, TenantTableKind, TenantTablesOption, TenantRelation, TenantTableEntry, TenantTablesScope } from './filter/tenant-tables.js'
export { RawSqlGuard } from './filter/raw-sql-guard.js'
export { TableWatcher, catalogTriggerStatements, CATALOG_CHANNEL, CATALOG_WATCH_APPLICATION } from './filter/table-watcher.js'
export type { TableWatcherOptions } from './filter/table-watcher.js'
export { RLS_SETTING, rowLevelSecuritySettings, rowLevelSecurityStatements, rowLevelSecurityValue } from './filter/row-level-security.js'
export type { RowLevelSecurityOptions } from './filter/row-level-security.js'
export type { InstanceDatabase, InstanceInsertable, TenantColumn } from './filter/instance-database.js'

export { PoolManager, DEFAULT_POOL_SETTINGS } from './routing/pool-manager.js'
export type { DatasourceConfig, Lease, PoolCounts, PoolManagerOptions, PoolSettings, PoolState, PoolStatus } from './routing/pool-manager.js'
export { RoutingPool } from './routing/routing-pool.js'
export type { RoutingPoolOptions, RoutingStats } from './routing/routing-pool.js'
export { SessionState, sessionTarget } from './routing/session-state.js'
export type { SessionSettings, SessionTarget } from './routing/session-state.js'

export { JOB_CONTEXT_KEY, wrapJobData, unwrapJobData, runWrappedJob } from './jobs/job-context.js'
export type { JobTarget, WrappedJobData, JobTenancy } from './jobs/job-context.js'
export { InstanceJobs, scheduleKey } from './jobs/instance-jobs.js'
export type { InstanceScheduleOptions, InstanceUnscheduleOptions, ScheduleChanges } from './jobs/instance-jobs.js'
export { instanceCache, cacheKey } from './instance-cache.js'
export type { InstanceCache, AsyncInstanceCache, InstanceCacheOptions, SyncCacheStore, AsyncCacheStore } from './instance-cache.js'
export { instanceLogMixin } from './log-mixin.js'
export type { InstanceLogMixinOptions, InstanceLogFields } from './log-mixin.js'
export { createInstanceBinding, tokenOwner, HOST_CLAIM } from './resolve/instance-binding.js'
export type { BoundResolution, HostAccess, TokenOwner } from './resolve/instance-binding.js'

export { FleetMigrator } from './lifecycle/fleet-migrator.js'
export type {
  FleetMigrateOptions, MigrationsOption, MigrationSet, MigrationStatusOptions, MigrationReport,
  TargetMigrationResult, TargetMigrationStatus, TargetMigrationState, MigrationProgress,
} from './lifecycle/fleet-migrator.js'
export { migrationTargets, HOST_TARGET } from './lifecycle/migration-target.js'
export type { MigrationTarget, MigrationTargetKind } from './lifecycle/migration-target.js'

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
