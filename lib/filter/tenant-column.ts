import { InvalidOptionsError } from '../errors.js'
import { SAFE_IDENTIFIER } from '../instances/instance.js'

/** The column that holds the instance's id in a shared table, unless `tenantColumn` names another. */
export const DEFAULT_TENANT_COLUMN = 'iid'

/**
 * The tenant column `value` names, `iid` when it is `undefined`. It is written
 * into SQL as an identifier, so anything but a plain lower-case name is
 * refused with `TENANCY_INVALID_OPTIONS` at start-up.
 *
 * ```ts
 * tenantColumn(undefined) // 'iid'
 * tenantColumn('tenant_id') // 'tenant_id'
 * tenantColumn('iid; drop table x') // throws TENANCY_INVALID_OPTIONS
 * ```
 */
export function tenantColumn (value: unknown): string {
  const column = value ?? DEFAULT_TENANT_COLUMN
  if (typeof column !== 'string' || !SAFE_IDENTIFIER.test(column)) {
    throw new InvalidOptionsError(`tenantColumn ${JSON.stringify(column)} is not a safe column name`)
  }
  return column
}
