import type { Instance } from '../instances/instance.js'

/**
 * What a migration target is, physically:
 * - `host`: the default datasource's own tables, which belong to no instance;
 * - `shared`: the shared tables of one datasource, for all its shared instances;
 * - `schema`: one schema instance's schema;
 * - `isolated`: one isolated instance's database.
 */
export type MigrationTargetKind = 'host' | 'shared' | 'schema' | 'isolated'

/**
 * One place where a migration set runs and keeps its own migration and lock
 * tables, so that it can be at its own version and be migrated alone.
 */
export interface MigrationTarget {
  /**
   * A stable name: `host`, `shared:<datasource>`, `schema:<datasource>.<schema>`
   * or `isolated:<datasource>`.
   */
  readonly key: string
  readonly kind: MigrationTargetKind
  /** The datasource whose connections the target's migrations run on. */
  readonly datasource: string
  /**
   * The schema unqualified names resolve to (the only one on `search_path`),
   * for schema instances; `null` for the others, which use the connection's
   * own `search_path`.
   */
  readonly schema: string | null
  /** The instances whose tables the target holds, in configuration order (none for `host`). */
  readonly instances: readonly string[]
}

/** The host target: the default datasource, tables of no instance. */
export const HOST_TARGET: MigrationTarget = Object.freeze({ key: 'host', kind: 'host', datasource: 'default', schema: null, instances: Object.freeze([]) })

/**
 * The physical targets of the `instance` migration set, in the order their
 * first instance is configured: the shared tables of each datasource once,
 * each schema once, each isolated database once. Instances that share a
 * datasource and a schema share a target, whatever their mode says, since
 * they share tables.
 *
 * ```ts
 * migrationTargets(registry.list())
 * // [{ key: 'shared:default', instances: ['', 'shareTest'] },
 * //  { key: 'isolated:isolateTest', instances: ['isolateTest'] },
 * //  { key: 'schema:default.tenant_acme', schema: 'tenant_acme', instances: ['acme'] }]
 * ```
 */
export function migrationTargets (instances: readonly Instance[]): MigrationTarget[] {
  const groups = new Map<string, { datasource: string, schema: string | null, modes: Set<string>, names: string[] }>()
  for (const instance of instances) {
    const id = `${instance.datasource}\u0000${instance.schema ?? ''}`
    let group = groups.get(id)
    if (group === undefined) {
      group = { datasource: instance.datasource, schema: instance.schema, modes: new Set(), names: [] }
      groups.set(id, group)
    }
    group.modes.add(instance.mode)
    group.names.push(instance.name)
  }
  return [...groups.values()].map(({ datasource, schema, modes, names }) => {
    const kind: MigrationTargetKind = schema !== null ? 'schema' : modes.has('shared') ? 'shared' : 'isolated'
    const key = schema !== null ? `schema:${datasource}.${schema}` : `${kind}:${datasource}`
    return Object.freeze({ key, kind, datasource, schema, instances: Object.freeze(names) })
  })
}
