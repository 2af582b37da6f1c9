import pg from 'pg'
import { InvalidOptionsError, quote } from '../errors.js'
import { RLS_SETTING } from '../filter/row-level-security.js'

// Copying an instance from a template instance. A schema template is copied
// into a schema the instance migrations have built (same tables, indexes,
// constraints and foreign keys, made the way every instance's are), table by
// table, with the tenant column rewritten on the way; an isolated template is
// copied whole by the server (CREATE DATABASE … TEMPLATE) and its tenant
// column rewritten in place. Both run in one transaction and may run again:
// a retried clone starts the copy over.

/** What {@link copySchema} copies. */
export interface SchemaCopy {
  /** The template's schema. */
  readonly from: string
  /** The new instance's schema, already migrated to the template's version. */
  readonly to: string
  /** The template's id, in its rows' tenant column. */
  readonly templateId: number
  /** The new instance's id, written instead. */
  readonly id: number
  /** The tenant column. */
  readonly tenantColumn: string
  /** Tables left alone on both sides: the migration table and its lock, which the migrations keep for each target. */
  readonly skip: ReadonlySet<string>
}

interface TableInfo {
  table: string
  columns: string[]
  identity: boolean
}

interface TriggerInfo {
  table: string
  name: string
  enabled: string
}

function ident (name: string): string {
  return pg.escapeIdentifier(name)
}

function qualified (schema: string, name: string): string {
  return `${ident(schema)}.${ident(name)}`
}

function cloneError (text: string): Error {
  return new InvalidOptionsError(`the clone cannot be made: ${text}`)
}

async function tablesOf (client: pg.ClientBase, schema: string, skip: ReadonlySet<string>): Promise<Map<string, TableInfo>> {
  // Partitions are reached through their parent; generated columns are computed again by the copy.
  const { rows } = await client.query<TableInfo>(`select c.relname::text as table,
      coalesce(array_agg(a.attname::text order by a.attnum) filter (where a.attnum > 0 and not a.attisdropped and a.attgenerated = ''), '{}') as columns,
      coalesce(bool_or(a.attidentity <> '' and a.attnum > 0 and not a.attisdropped), false) as identity
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      join pg_catalog.pg_attribute a on a.attrelid = c.oid
    where n.nspname = $1 and c.relkind in ('r', 'p') and not c.relispartition
    group by c.relname order by c.relname`, [schema])
  return new Map(rows.filter((row) => !skip.has(row.table)).map((row) => [row.table, row]))
}

/** The user triggers of `tables` in `schema` that are on: the copy's rows are the template's as they stand, not rows to react to. */
async function triggersOf (client: pg.ClientBase, schema: string, tables: readonly string[]): Promise<TriggerInfo[]> {
  const { rows } = await client.query<TriggerInfo>(`select c.relname::text as table, t.tgname::text as name, t.tgenabled::text as enabled
    from pg_catalog.pg_trigger t join pg_catalog.pg_class c on c.oid = t.tgrelid join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where n.nspname = $1 and c.relname = any($2::text[]) and not t.tgisinternal and t.tgparentid = 0 and t.tgenabled <> 'D'
    order by 1, 2`, [schema, tables])
  return rows
}

async function setTriggers (client: pg.ClientBase, schema: string, triggers: readonly TriggerInfo[], on: boolean): Promise<void> {
  for (const trigger of triggers) {
    const how = !on ? 'disable' : trigger.enabled === 'A' ? 'enable always' : trigger.enabled === 'R' ? 'enable replica' : 'enable'
    await client.query(`alter table ${qualified(schema, trigger.table)} ${how} trigger ${ident(trigger.name)}`)
  }
}

/** `tables` with each one after the tables it refers to by foreign key; a circle is cut where it closes. */
function parentsFirst (tables: readonly string[], edges: ReadonlyArray<{ child: string, parent: string }>): string[] {
  const parents = new Map<string, string[]>(tables.map((table) => [table, []]))
  for (const { child, parent } of edges) if (child !== parent && parents.has(parent)) parents.get(child)?.push(parent)
  const order: string[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (table: string): void => {
    if (state.has(table)) return
    state.set(table, 'visiting')
    for (const parent of parents.get(table)!) visit(parent)
    state.set(table, 'done')
    order.push(table)
  }
  for (const table of tables) visit(table)
  return order
}

/**
 * Copies the rows and sequence positions of schema `from` into schema `to`,
 * whose tables the instance migrations made: the rows of `to` are first
 * removed (so a retried clone starts over), then each table's rows are
 * inserted after those of the tables it refers to, the tenant column's
 * `templateId` written as `id`, with the copy's user triggers off; then every
 * sequence is set where the template's stands. Runs inside the caller's
 * transaction, which should be `repeatable read` so that every table is read
 * at the same moment.
 *
 * ```sql
 * set constraints all deferred;
 * truncate table "tenant_copy"."course", "tenant_copy"."student";
 * insert into "tenant_copy"."course" ("id", "iid", "title") overriding system value
 *   select "id", case when "iid" = 3 then 9 else "iid" end, "title" from "tenant_template"."course";
 * …
 * select setval('"tenant_copy"."course_id_seq"', 12, true)
 * ```
 */
export async function copySchema (client: pg.ClientBase, copy: SchemaCopy): Promise<void> {
  const { from, to, templateId, id, tenantColumn, skip } = copy
  if (from === to) throw cloneError(`the template's schema ${quote(from)} is the new instance's`)
  if (!Number.isSafeInteger(templateId) || !Number.isSafeInteger(id)) throw cloneError('instance ids must be whole numbers')
  const source = await tablesOf(client, from, skip)
  const target = await tablesOf(client, to, skip)
  for (const [table, info] of source) {
    const made = target.get(table)
    if (made === undefined) throw cloneError(`the template's table ${quote(`${from}.${table}`)} is not one the instance migrations make`)
    const missing = info.columns.filter((column) => !made.columns.includes(column))
    if (missing.length > 0) throw cloneError(`the template's table ${quote(`${from}.${table}`)} has columns the instance migrations do not make: ${missing.join(', ')}`)
  }
  const { rows: edges } = await client.query<{ child: string, parent: string }>(`select c.relname::text as child, p.relname::text as parent
    from pg_catalog.pg_constraint k join pg_catalog.pg_class c on c.oid = k.conrelid join pg_catalog.pg_class p on p.oid = k.confrelid
    where k.contype = 'f' and c.relnamespace = $1::regnamespace and p.relnamespace = $1::regnamespace`, [ident(to)])
  const tables = [...target.keys()]
  const triggers = await triggersOf(client, to, tables)
  // Foreign keys declared deferrable wait for the commit, so a circle of them copies in any order.
  await client.query('set constraints all deferred')
  await setTriggers(client, to, triggers, false)
  if (tables.length > 0) await client.query(`truncate table ${tables.map((table) => qualified(to, table)).join(', ')}`)
  for (const table of parentsFirst(tables, edges)) {
    const info = source.get(table)
    if (info === undefined || info.columns.length === 0) continue
    const names = info.columns.map(ident).join(', ')
    const values = info.columns.map((column) => column === tenantColumn
      ? `case when ${ident(column)} = ${templateId} then ${id} else ${ident(column)} end`
      : ident(column)).join(', ')
    await client.query(`insert into ${qualified(to, table)} (${names})${info.identity ? ' overriding system value' : ''} select ${values} from ${qualified(from, table)}`)
  }
  await setTriggers(client, to, triggers, true)
  const sequences = async (schema: string): Promise<string[]> => (await client.query<{ name: string }>(`select relname::text as name from pg_catalog.pg_class
    where relnamespace = $1::regnamespace and relkind = 'S' order by 1`, [ident(schema)])).rows.map((row) => row.name)
  const made = new Set(await sequences(to))
  for (const sequence of await sequences(from)) {
    if (!made.has(sequence)) throw cloneError(`the template's sequence ${quote(`${from}.${sequence}`)} is not one the instance migrations make`)
    const { rows: [at] } = await client.query<{ last_value: string, is_called: boolean }>(`select last_value, is_called from ${qualified(from, sequence)}`)
    await client.query('select setval($1::regclass, $2::bigint, $3)', [qualified(to, sequence), at!.last_value, at!.is_called])
  }
}

/**
 * In a database copied from a template, writes `id` over `templateId` in
 * the tenant column of every table that has it, in every schema: foreign
 * keys that include the column are dropped for the update and made again
 * (which checks them), and user triggers are off meanwhile. Runs in one
 * transaction of its own on `client`; running it again changes nothing.
 *
 * ```sql
 * begin;
 * alter table "public"."enrolment" drop constraint "enrolment_student_fk";
 * update "public"."student" set "iid" = 9 where "iid" = 3;
 * alter table "public"."enrolment" add constraint "enrolment_student_fk" foreign key (iid, student_id) references student(iid, id);
 * commit
 * ```
 */
export async function rewriteInstanceId (client: pg.ClientBase, copy: Pick<SchemaCopy, 'templateId' | 'id' | 'tenantColumn'>): Promise<void> {
  const { templateId, id, tenantColumn } = copy
  if (!Number.isSafeInteger(templateId) || !Number.isSafeInteger(id)) throw cloneError('instance ids must be whole numbers')
  await client.query('begin')
  try {
    // Row-level security policies of this library let '*' through: the rewrite reads and writes two ids.
    await client.query('select set_config($1, \'*\', true)', [RLS_SETTING])
    const { rows: tables } = await client.query<{ schema: string, table: string }>(`select n.nspname::text as schema, c.relname::text as table
      from pg_catalog.pg_attribute a join pg_catalog.pg_class c on c.oid = a.attrelid join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where a.attname = $1 and a.attnum > 0 and not a.attisdropped and a.attgenerated = '' and c.relkind in ('r', 'p') and not c.relispartition
        and n.nspname <> 'information_schema' and n.nspname not like 'pg\\_%'
      order by 1, 2`, [tenantColumn])
    const { rows: keys } = await client.query<{ table: string, name: string, definition: string }>(`select k.conrelid::regclass::text as table, k.conname::text as name,
        pg_catalog.pg_get_constraintdef(k.oid) as definition
      from pg_catalog.pg_constraint k
      where k.contype = 'f' and k.conparentid = 0 and (
        exists (select from pg_catalog.pg_attribute a where a.attrelid = k.conrelid and a.attnum = any(k.conkey) and a.attname = $1) or
        exists (select from pg_catalog.pg_attribute a where a.attrelid = k.confrelid and a.attnum = any(k.confkey) and a.attname = $1))
      order by 1, 2`, [tenantColumn])
    for (const key of keys) await client.query(`alter table ${key.table} drop constraint ${ident(key.name)}`)
    const bySchema = new Map<string, string[]>()
    for (const { schema, table } of tables) bySchema.set(schema, [...(bySchema.get(schema) ?? []), table])
    const triggers = new Map<string, TriggerInfo[]>()
    for (const [schema, names] of bySchema) triggers.set(schema, await triggersOf(client, schema, names))
    for (const [schema, list] of triggers) await setTriggers(client, schema, list, false)
    const column = ident(tenantColumn)
    for (const { schema, table } of tables) await client.query(`update ${qualified(schema, table)} set ${column} = ${id} where ${column} = ${templateId}`)
    for (const [schema, list] of triggers) await setTriggers(client, schema, list, true)
    for (const key of keys) await client.query(`alter table ${key.table} add constraint ${ident(key.name)} ${key.definition}`)
    await client.query('commit')
  } catch (err) {
    await client.query('rollback').catch(() => {})
    throw err
  }
}
