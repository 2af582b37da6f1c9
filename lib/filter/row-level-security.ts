import pg from 'pg'
import type { TenancyContext } from '../context.js'
import { tenantColumn } from './tenant-column.js'
import type { SessionSettings } from '../routing/session-state.js'
import { TenantTables, type TenantTablesOption } from './tenant-tables.js'

/** The session setting the `rls` option sets and the policies read. */
export const RLS_SETTING = 'tenancy.iid'

/**
 * The value of {@link RLS_SETTING} for a context: the instance id in an
 * instance context, `'host'` in host context, `'*'` in `unscoped` (the policies
 * let everything through, as the filter does) and `''` with no context (the
 * policies let nothing through).
 */
export function rowLevelSecurityValue (context: TenancyContext | undefined): string {
  if (context === undefined) return ''
  if (context.kind === 'unscoped') return '*'
  if (context.kind === 'host' || context.instance === undefined) return 'host'
  return String(context.instance.id)
}

// One frozen object per value: the routing pool compares settings by identity
// first, so a connection that already carries the value costs no round trip.
const settingsByValue = new Map<string, Readonly<Record<string, string>>>()

/**
 * The session settings of the `rls` option: {@link RLS_SETTING} set to
 * {@link rowLevelSecurityValue} on every connection the routing pool hands out,
 * so a value never outlives the checkout it was meant for.
 *
 * ```ts
 * createTenancy({ …, settings: rowLevelSecuritySettings() }) // what rls: true does
 * ```
 */
export function rowLevelSecuritySettings (): SessionSettings {
  return (context) => {
    const value = rowLevelSecurityValue(context)
    let settings = settingsByValue.get(value)
    if (settings === undefined) {
      settings = Object.freeze({ [RLS_SETTING]: value })
      if (settingsByValue.size < 10_000) settingsByValue.set(value, settings)
    }
    return settings
  }
}

/** @internal Both settings functions' keys; the second wins. */
export function withSettings (first: SessionSettings | undefined, second: SessionSettings): SessionSettings {
  if (first === undefined) return second
  return (context) => ({ ...first(context), ...second(context) })
}

/** Options of {@link rowLevelSecurityStatements}. */
export interface RowLevelSecurityOptions {
  /** The tenant column. Defaults to `'iid'`. */
  tenantColumn?: string
  /** The policy's name. Defaults to `'tenancy_instance'`. */
  policyName?: string
}

function qualified (key: string): string {
  return key.split('.').map((part) => pg.escapeIdentifier(part)).join('.')
}

/**
 * The statements that put the tenant tables under row-level security: `ENABLE`
 * and `FORCE ROW LEVEL SECURITY` (so the owner is bound too; superusers and
 * `BYPASSRLS` roles never are) and one policy per table on
 * `current_setting('tenancy.iid', true)`: an instance sees and writes its own
 * rows, host context the host rows of `may` tables, `unscoped` everything, no
 * context nothing. Run them once, from a migration, as the tables' owner;
 * they can be run again.
 *
 * A view reads its tables with its owner's rights, so a view owned by a
 * superuser or by the tables' owner would bypass the policies: a view gets
 * `security_invoker = true` instead (PostgreSQL 15 or later), so that the
 * policies of its tables apply to whoever queries it. Materialized views and
 * foreign tables cannot have policies: no statement is made for them (the
 * filter still confines them; raw SQL on them is not confined).
 *
 * ```ts
 * rowLevelSecurityStatements({ student: 'must', student_names: { kind: 'must', relation: 'view' } })
 * // alter table "student" enable row level security
 * // alter table "student" force row level security
 * // drop policy if exists "tenancy_instance" on "student"
 * // create policy "tenancy_instance" on "student" using ("iid" >= (select case when current_setting('tenancy.iid', true) = '*'
 * //   then '-9223372036854775808'::bigint when current_setting('tenancy.iid', true) ~ '^[0-9]+$' then current_setting('tenancy.iid', true)::bigint end)
 * //   and "iid" <= (…the same with '9223372036854775807'::bigint…)) with check (…the same…)
 * // a `may` table adds: or ("iid" is null and (select current_setting('tenancy.iid', true)) in ('host', '*'))
 * // alter view "student_names" set (security_invoker = true)
 * ```
 */
export function rowLevelSecurityStatements (tables: TenantTables | TenantTablesOption, options: RowLevelSecurityOptions = {}): string[] {
  const column = tenantColumn(options.tenantColumn)
  const policy = pg.escapeIdentifier(options.policyName ?? 'tenancy_instance')
  const list = tables instanceof TenantTables ? tables : new TenantTables(tables)
  const raw = `current_setting('${RLS_SETTING}', true)`
  // Each value is a scalar subquery so that PostgreSQL computes it once per
  // statement (an InitPlan), not once per row.
  const setting = `(select ${raw})`
  // The instance's rows are one range of the tenant column: [id, id] in an
  // instance, everything in `unscoped` ('*'), nothing otherwise ('' after a
  // transaction-local reset, 'host', no setting: NULL bounds match no row).
  // A range, not `= '*' or iid = id`: PostgreSQL uses both bounds as index
  // conditions on iid and estimates them as one narrow range, where the OR
  // kept iid out of the index conditions of raw SQL and made join plans
  // worse. The CASE keeps the cast from failing on a value that is no number.
  const bound = (all: string): string => `(select case when ${raw} = '*' then ${all} when ${raw} ~ '^[0-9]+$' then ${raw}::bigint end)`
  // Quoted: an unquoted -9223372036854775808 is numeric, which would turn every comparison numeric and unindexed.
  const low = bound(`'-9223372036854775808'::bigint`)
  const high = bound(`'9223372036854775807'::bigint`)
  const statements: string[] = []
  for (const [key, entry] of Object.entries(list.toJSON())) {
    const table = qualified(key)
    const kind = typeof entry === 'string' ? entry : entry.kind
    const relation = list.relation(key)
    if (relation === 'view') {
      statements.push(`alter view ${table} set (security_invoker = true)`)
      continue
    }
    if (relation !== 'table') continue
    const name = pg.escapeIdentifier(column)
    const range = `${name} >= ${low} and ${name} <= ${high}`
    const rule = kind === 'must'
      ? range
      : `${range} or (${name} is null and ${setting} in ('host', '*'))`
    statements.push(
      `alter table ${table} enable row level security`,
      `alter table ${table} force row level security`,
      `drop policy if exists ${policy} on ${table}`,
      `create policy ${policy} on ${table} using (${rule}) with check (${rule})`,
    )
  }
  return statements
}
