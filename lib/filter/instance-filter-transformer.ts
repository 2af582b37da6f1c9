import {
  AliasNode, AndNode, BinaryOperationNode, CastNode, ColumnNode, DataTypeNode, FromNode, IdentifierNode, JoinNode,
  OnNode, OperationNodeTransformer, OperatorNode, ParensNode, ReferenceNode, SelectionNode, SelectQueryNode,
  TableNode, ValueListNode, ValueNode, ValuesNode, WhereNode,
  type ColumnUpdateNode, type DeleteQueryNode, type InsertQueryNode, type MergeQueryNode, type OnConflictNode,
  type OperationNode, type QueryId, type UpdateQueryNode, type WithNode,
} from 'kysely'
import { HostContextError, MismatchError, NoContextError, UnknownTableError, UnsupportedStatementError, quote } from '../errors.js'
import type { TenantTableKind, TenantTables } from './tenant-tables.js'

/**
 * What the transformer confines to: an instance id, host rows, or nothing
 * (no context: any tenant table fails closed).
 */
export type InstanceFilterTarget =
  | { readonly kind: 'instance', readonly id: number }
  | { readonly kind: 'host' }
  | { readonly kind: 'none' }

// Nodes this transformer made. A subquery passed as a builder is transformed
// when it is built and again inside the outer query, possibly under another
// instance: its old predicates and filled values are recognised here and
// replaced, never stacked. Kysely nodes are immutable, so identity is stable
// as long as the transformer hands these nodes back untouched.
const own = new WeakSet<OperationNode>()

// Node kinds with no query and no FROM item below them (a ReferenceNode's table
// is a qualifier, not a FROM item). RawNode is not one: its fragments may be queries.
const LEAVES: ReadonlySet<string> = new Set([
  'IdentifierNode', 'SchemableIdentifierNode', 'ColumnNode', 'ReferenceNode', 'TableNode', 'OperatorNode',
  'ValueNode', 'PrimitiveValueListNode', 'SelectAllNode', 'DataTypeNode', 'DefaultInsertValueNode',
])

// The derived table an INSERT … SELECT is wrapped in to add the tenant column.
const SOURCE = 'tenancy_source'

interface TableRef {
  readonly kind: TenantTableKind
  /** The table itself. */
  readonly table: TableNode
  /** Its alias in the query, if it has one. */
  readonly alias: string | undefined
}

/** The table of `ref` for an error message. */
function labelOf (ref: TableRef): string {
  const { identifier, schema } = ref.table.table
  return quote(schema === undefined ? identifier.name : `${schema.name}.${identifier.name}`)
}

// Predicates are immutable, so one node serves every query that needs the same
// one; building them was a fifth of the filter's cost. Bounded by a reset.
const PREDICATE_CACHE_SIZE = 10_000

/**
 * The logic of {@link InstanceFilterPlugin}: an `OperationNodeTransformer` that
 * confines every tenant-table reference of a query tree, in every nested
 * query, to one instance (or to host rows). One transformer is reused for
 * every query of a plugin; {@link InstanceFilterTransformer.confine} sets the
 * target and is not re-entrant (Kysely runs plugins synchronously).
 *
 * ```ts
 * const transformer = new InstanceFilterTransformer(tables, 'iid')
 * transformer.confine(db.selectFrom('student').selectAll().toOperationNode(), { kind: 'instance', id: 2 })
 * // select * from "student" where "student"."iid" = $1   -- [2]
 * ```
 */
export class InstanceFilterTransformer extends OperationNodeTransformer {
  readonly #source: () => TenantTables
  #tables: TenantTables
  readonly #column: string
  #target: InstanceFilterTarget = { kind: 'none' }
  // Names of the CTEs visible at the current point, one set per query with a WITH.
  #ctes: Array<Set<string>> = []
  readonly #predicates = new Map<string, OperationNode>()

  /** `tables` may be a function, read once per query, so that the tables can be discovered again. */
  constructor (tables: TenantTables | (() => TenantTables), tenantColumn = 'iid') {
    super()
    this.#source = typeof tables === 'function' ? tables : () => tables
    this.#tables = this.#source()
    this.#column = tenantColumn
  }

  /** Returns `node` with every tenant-table reference confined to `target`. Throws before anything runs. */
  confine<T extends OperationNode> (node: T, target: InstanceFilterTarget, queryId?: QueryId): T {
    this.#target = target
    this.#tables = this.#source()
    this.#ctes = []
    return this.transformNode(node, queryId)
  }

  // Most nodes of a query are leaves that can hold neither a table to confine
  // nor a query: they are immutable, so they are handed back as they are
  // instead of being copied. This halves the work of a typical statement.
  override transformNode<T extends OperationNode | undefined> (node: T, queryId?: QueryId): T {
    if (node === undefined || LEAVES.has(node.kind)) return node
    return super.transformNode(node, queryId)
  }

  // Marked nodes are handed back as they are, so that they can be recognised.
  protected override transformBinaryOperation (node: BinaryOperationNode, queryId?: QueryId): BinaryOperationNode {
    return own.has(node) ? node : super.transformBinaryOperation(node, queryId)
  }

  protected override transformValue (node: ValueNode, queryId?: QueryId): ValueNode {
    return own.has(node) ? node : super.transformValue(node, queryId)
  }

  protected override transformCast (node: CastNode, queryId?: QueryId): CastNode {
    return own.has(node) ? node : super.transformCast(node, queryId)
  }

  protected override transformSelectQuery (node: SelectQueryNode, queryId?: QueryId): SelectQueryNode {
    return this.#inScope(node.with, () => this.#confineSelect(super.transformSelectQuery(node, queryId)))
  }

  protected override transformUpdateQuery (node: UpdateQueryNode, queryId?: QueryId): UpdateQueryNode {
    return this.#inScope(node.with, () => this.#confineUpdate(super.transformUpdateQuery(node, queryId)))
  }

  protected override transformDeleteQuery (node: DeleteQueryNode, queryId?: QueryId): DeleteQueryNode {
    return this.#inScope(node.with, () => this.#confineDelete(super.transformDeleteQuery(node, queryId)))
  }

  protected override transformInsertQuery (node: InsertQueryNode, queryId?: QueryId): InsertQueryNode {
    return this.#inScope(node.with, () => this.#confineInsert(super.transformInsertQuery(node, queryId)))
  }

  protected override transformMergeQuery (node: MergeQueryNode, queryId?: QueryId): MergeQueryNode {
    return this.#inScope(node.with, () => {
      const transformed = super.transformMergeQuery(node, queryId)
      // MERGE decides between UPDATE, DELETE and INSERT per row from its ON
      // condition: confining it soundly needs every branch rewritten, so it is refused.
      const ref = this.#tableRef(transformed.into) ?? (transformed.using && this.#tableRef(transformed.using.table))
      if (ref) throw new UnsupportedStatementError(`MERGE on the tenant table ${labelOf(ref)} cannot be confined to an instance: use INSERT … ON CONFLICT, UPDATE and DELETE, or unscoped() with an explicit ${this.#column}.`)
      return transformed
    })
  }

  // A CTE's body sees the CTEs before it (all of them with RECURSIVE), while
  // the main statement sees all; a real table of the same name stays a table
  // where the CTE is not visible.
  protected override transformWith (node: WithNode, queryId?: QueryId): WithNode {
    const frame = this.#ctes.at(-1)
    if (frame === undefined) return super.transformWith(node, queryId)
    const names = node.expressions.map((expression) => expression.name.table.table.identifier.name)
    const expressions = node.expressions.map((expression, i) => {
      frame.clear()
      for (const name of node.recursive === true ? names : names.slice(0, i)) frame.add(name)
      return this.transformNode(expression, queryId)
    })
    for (const name of names) frame.add(name)
    return { kind: 'WithNode', expressions, recursive: node.recursive }
  }

  #inScope<T> (withNode: WithNode | undefined, fn: () => T): T {
    if (withNode === undefined) return fn()
    this.#ctes.push(new Set(withNode.expressions.map((expression) => expression.name.table.table.identifier.name)))
    try {
      return fn()
    } finally {
      this.#ctes.pop()
    }
  }

  #isCte (name: string): boolean {
    for (const frame of this.#ctes) if (frame.has(name)) return true
    return false
  }

  /** The tenant table `node` names (a table or an aliased table), or `undefined`. */
  #tableRef (node: OperationNode | undefined): TableRef | undefined {
    if (node === undefined) return undefined
    let table: TableNode
    let alias: string | undefined
    if (node.kind === 'TableNode') {
      table = node as TableNode
    } else if (node.kind === 'AliasNode' && (node as AliasNode).node.kind === 'TableNode') {
      table = (node as AliasNode).node as TableNode
      const aliasNode = (node as AliasNode).alias
      if (aliasNode.kind === 'IdentifierNode') alias = (aliasNode as IdentifierNode).name
    } else {
      return undefined
    }
    const name = table.table.identifier.name
    const schema = table.table.schema?.name
    if (schema === undefined && this.#isCte(name)) return undefined
    const kind = this.#tables.kind(name, schema)
    if (kind === undefined) {
      if (!this.#tables.isKnown(name, schema)) throw new UnknownTableError(quote(schema === undefined ? name : `${schema}.${name}`))
      return undefined
    }
    return { kind, table, alias }
  }

  /** The value the tenant column must hold for `ref` in the current target; throws when `ref` may not be used. */
  #value (ref: TableRef): number | null {
    const target = this.#target
    if (target.kind === 'instance') return target.id
    if (target.kind === 'none') throw new NoContextError(labelOf(ref))
    if (ref.kind === 'must') throw new HostContextError(labelOf(ref))
    return null
  }

  /**
   * `<alias>.iid = $id`, or `<alias>.iid is null` for host rows; qualified by
   * the table itself when it has no alias or when `byTable` is set.
   */
  #predicate (ref: TableRef, byTable = false): OperationNode {
    const value = this.#value(ref)
    const alias = byTable ? undefined : ref.alias
    const { identifier, schema } = ref.table.table
    const key = `${String(value)}\u0000${alias ?? ''}\u0000${schema?.name ?? ''}\u0000${identifier.name}`
    let predicate = this.#predicates.get(key)
    if (predicate !== undefined) return predicate
    const column = ReferenceNode.create(ColumnNode.create(this.#column), alias === undefined ? ref.table : TableNode.create(alias))
    predicate = value === null
      ? BinaryOperationNode.create(column, OperatorNode.create('is'), ValueNode.createImmediate(null))
      : BinaryOperationNode.create(column, OperatorNode.create('='), ValueNode.create(value))
    own.add(predicate)
    if (this.#predicates.size >= PREDICATE_CACHE_SIZE) this.#predicates.clear()
    this.#predicates.set(key, predicate)
    return predicate
  }

  /** `condition and p1 and p2 …`, without this transformer's earlier predicates. */
  #and (condition: OperationNode | undefined, predicates: readonly OperationNode[]): OperationNode | undefined {
    let out = condition === undefined ? undefined : strip(condition)
    if (out !== undefined && predicates.length > 0 && needsParens(out)) out = ParensNode.create(out)
    for (const predicate of predicates) out = out === undefined ? predicate : AndNode.create(out, predicate)
    return out
  }

  #where (where: WhereNode | undefined, predicates: readonly OperationNode[]): WhereNode | undefined {
    if (predicates.length === 0 && where === undefined) return undefined
    const condition = this.#and(where?.where, predicates)
    return condition === undefined ? undefined : WhereNode.create(condition)
  }

  #confineJoins (joins: readonly JoinNode[] | undefined): readonly JoinNode[] | undefined {
    if (joins === undefined) return undefined
    let changed = false
    const out = joins.map((join) => {
      const ref = this.#tableRef(join.table)
      if (ref === undefined) return join
      changed = true
      const predicate = this.#predicate(ref)
      // A cross join has no ON clause: as an inner join with the predicate as
      // its condition it means the same.
      if (join.joinType === 'CrossJoin') return JoinNode.createWithOn('InnerJoin', join.table, predicate)
      if (join.joinType === 'LateralCrossJoin') return JoinNode.createWithOn('LateralInnerJoin', join.table, predicate)
      return JoinNode.createWithOn(join.joinType, join.table, this.#and(join.on?.on, [predicate])!)
    })
    return changed ? out : joins
  }

  /** `(select * from <table> where <table>.iid = $id) as <alias>`: a table confined on its own. */
  #derived (item: OperationNode): OperationNode {
    const ref = this.#tableRef(item)
    if (ref === undefined) return item
    const inner: SelectQueryNode = {
      ...SelectQueryNode.createFrom([ref.table]),
      selections: [SelectionNode.createSelectAll()],
      where: WhereNode.create(this.#predicate(ref, true)),
    }
    return AliasNode.create(inner, IdentifierNode.create(ref.alias ?? ref.table.table.identifier.name))
  }

  #confineSelect (node: SelectQueryNode): SelectQueryNode {
    const froms = node.from?.froms ?? []
    // A table on the preserved side of a RIGHT or FULL join cannot be confined
    // in WHERE (null-extended rows would vanish) nor in ON (its unmatched rows
    // would stay): every tenant table of such a query becomes a confined derived table.
    if (node.joins?.some((join) => join.joinType === 'RightJoin' || join.joinType === 'FullJoin') === true) {
      return {
        ...node,
        from: node.from && FromNode.create(froms.map((item) => this.#derived(item))),
        joins: node.joins.map((join) => {
          const table = this.#derived(join.table)
          return table === join.table ? join : { ...join, table }
        }),
      }
    }
    return this.#confineWhere(node, froms)
  }

  #confineUpdate (node: UpdateQueryNode): UpdateQueryNode {
    const target = this.#tableRef(node.table)
    if (target) this.#checkUpdates(target, node.updates)
    return this.#confineWhere(node, [node.table, ...node.from?.froms ?? []])
  }

  #confineDelete (node: DeleteQueryNode): DeleteQueryNode {
    return this.#confineWhere(node, [...node.from.froms, ...node.using?.tables ?? []])
  }

  /** WHERE gets a predicate for each tenant table among `items`; joined tables get theirs in ON. */
  #confineWhere<N extends { readonly joins?: readonly JoinNode[], readonly where?: WhereNode }> (node: N, items: ReadonlyArray<OperationNode | undefined>): N {
    const predicates: OperationNode[] = []
    for (const item of items) {
      const ref = this.#tableRef(item)
      if (ref) predicates.push(this.#predicate(ref))
    }
    const joins = this.#confineJoins(node.joins)
    if (predicates.length === 0 && joins === node.joins) return node
    return { ...node, joins, where: this.#where(node.where, predicates) }
  }

  /** An update may set the tenant column only to the value it already must hold. */
  #checkUpdates (ref: TableRef, updates: readonly ColumnUpdateNode[] | undefined): void {
    for (const update of updates ?? []) {
      if (update.column.kind !== 'ColumnNode' || (update.column as ColumnNode).column.name !== this.#column) continue
      const value = this.#value(ref)
      if (!sameValue(update.value, value)) {
        throw new MismatchError(`An UPDATE of ${labelOf(ref)} sets ${this.#column} to another instance than the current one (${String(value)}); rows cannot move between instances outside unscoped().`)
      }
    }
  }

  #fill (value: number | null): OperationNode {
    const node = ValueNode.create(value)
    own.add(node)
    return node
  }

  #confineInsert (node: InsertQueryNode): InsertQueryNode {
    const ref = this.#tableRef(node.into)
    if (ref === undefined) return node
    const value = this.#value(ref)
    const columns = node.columns ?? []
    const index = columns.findIndex((column) => column.column.name === this.#column)
    const mismatch = (): never => {
      throw new MismatchError(`An INSERT into ${labelOf(ref)} names ${this.#column} other than the current instance's (${String(value)}); leave ${this.#column} out, it is filled in.`)
    }
    let out: InsertQueryNode = node
    if (node.values === undefined) {
      // `default values`: the tenant column is the only one given.
      out = { ...node, defaultValues: false, columns: [ColumnNode.create(this.#column)], values: ValuesNode.create([ValueListNode.create([this.#fill(value)])]) }
    } else if (node.values.kind === 'ValuesNode') {
      const rows = (node.values as ValuesNode).values.map((row) => {
        const items: OperationNode[] = row.kind === 'PrimitiveValueListNode'
          ? row.values.map((item) => ValueNode.create(item))
          : [...row.values]
        if (index < 0) {
          items.push(this.#fill(value))
        } else {
          const item = items[index]!
          if (own.has(item) || item.kind === 'DefaultInsertValueNode') items[index] = this.#fill(value)
          else if (!sameValue(item, value)) mismatch()
        }
        return ValueListNode.create(items)
      })
      out = { ...node, columns: index < 0 ? [...columns, ColumnNode.create(this.#column)] : columns, values: ValuesNode.create(rows) }
    } else if (node.values.kind === 'SelectQueryNode') {
      let source = node.values as SelectQueryNode
      if (index >= 0) {
        // Only this transformer's own wrapper may name the column: the value of
        // an arbitrary select cannot be checked before it runs.
        const wrapped = source.from?.froms[0]
        if (index !== columns.length - 1 || wrapped?.kind !== 'AliasNode' || (wrapped as AliasNode).alias.kind !== 'IdentifierNode' ||
          ((wrapped as AliasNode).alias as IdentifierNode).name !== SOURCE) {
          throw new MismatchError(`An INSERT … SELECT into ${labelOf(ref)} names ${this.#column}; leave it out, it is filled in with the current instance's.`)
        }
        source = (wrapped as AliasNode).node as SelectQueryNode
      }
      const fill = CastNode.create(this.#fill(value), DataTypeNode.create('bigint'))
      own.add(fill)
      const wrapper: SelectQueryNode = {
        ...SelectQueryNode.createFrom([AliasNode.create(source, IdentifierNode.create(SOURCE))]),
        selections: [SelectionNode.createSelectAllFromTable(TableNode.create(SOURCE)), SelectionNode.create(fill as never)],
      }
      out = { ...node, columns: index < 0 ? [...columns, ColumnNode.create(this.#column)] : columns, values: wrapper }
    } else {
      mismatch()
    }
    if (out.onConflict?.updates !== undefined) out = { ...out, onConflict: this.#confineOnConflict(ref, out.onConflict) }
    return out
  }

  // ON CONFLICT … DO UPDATE meets the existing row, which may belong to another
  // instance when keys are unique across instances only: the update is
  // confined with DO UPDATE … WHERE, so such a row is left as it is.
  #confineOnConflict (ref: TableRef, node: OnConflictNode): OnConflictNode {
    this.#checkUpdates(ref, node.updates)
    const condition = this.#and(node.updateWhere?.where, [this.#predicate(ref, true)])!
    return { ...node, updateWhere: WhereNode.create(condition) }
  }
}

/** `condition` without the predicates {@link InstanceFilterTransformer} added to it earlier. */
function strip (condition: OperationNode): OperationNode | undefined {
  if (own.has(condition)) return undefined
  if (condition.kind === 'AndNode') {
    const { left, right } = condition as AndNode
    const l = strip(left)
    const r = strip(right)
    if (l === left && r === right) return condition
    if (l === undefined) return r
    if (r === undefined) return l
    return AndNode.create(l, r)
  }
  return condition
}

function needsParens (condition: OperationNode): boolean {
  return condition.kind !== 'BinaryOperationNode' && condition.kind !== 'AndNode' && condition.kind !== 'ParensNode' &&
    condition.kind !== 'UnaryOperationNode'
}

/** True when `node` is a plain value equal to `value`. */
function sameValue (node: OperationNode, value: number | null): boolean {
  if (node.kind !== 'ValueNode') return false
  const given = (node as ValueNode).value
  if (value === null) return given === null
  return (typeof given === 'number' || typeof given === 'bigint' || typeof given === 'string') && String(given) === String(value)
}
