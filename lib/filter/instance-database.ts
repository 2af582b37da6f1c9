import type { ColumnType, Insertable } from 'kysely'

type Selected<V> = V extends ColumnType<infer S, any, any> ? S : V
type Updated<V> = V extends ColumnType<any, any, infer U> ? U : V
type Inserted<V> = V extends ColumnType<any, infer I, any> ? I : V

/** A tenant column that inserts may leave out: the filter fills it in. */
export type TenantColumn<V> = ColumnType<Selected<V>, Inserted<V> | undefined, Updated<V>>

/**
 * A database interface whose tables' tenant column is optional on insert (the
 * tenant filter fills it in) and unchanged everywhere else: selects still give
 * exactly the column's type. Tables without the column are left as they are.
 *
 * ```ts
 * interface DB { student: { id: number, iid: number, name: string } }
 * const db = tenancy.kysely<InstanceDatabase<DB>>()
 * await db.insertInto('student').values({ id: 1, name: 'Ada' }).execute()
 * // insert into "student" ("id", "name", "iid") values ($1, $2, $3)   -- [1, 'Ada', 2]
 * ```
 */
export type InstanceDatabase<DB, Column extends string = 'iid'> = {
  [T in keyof DB]: { [C in keyof DB[T]]: C extends Column ? TenantColumn<DB[T][C]> : DB[T][C] }
}

/** The insert type of one table row with the tenant column optional. */
export type InstanceInsertable<Row, Column extends string = 'iid'> = Insertable<InstanceDatabase<{ t: Row }, Column>['t']>
