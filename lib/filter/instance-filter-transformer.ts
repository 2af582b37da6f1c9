import {
  AliasNode, AndNode, BinaryOperationNode, CastNode, ColumnNode, DataTypeNode, FromNode, IdentifierNode, JoinNode,
  OperationNodeTransformer, OperatorNode, ParensNode, PostgresQueryCompiler, ReferenceNode, SelectionNode,
  SelectQueryNode, TableNode, UsingNode, ValueListNode, ValueNode, ValuesNode, WhereNode, createQueryId,
  type ColumnUpdateNode, type DeleteQueryNode, type InsertQueryNode, type ListNode, type MergeQueryNode,
  type OnConflictNode, type OperationNode, type QueryId, type RawNode, type RootOperationNode, type SelectModifierNode,
  type UpdateQueryNode, type WithNode,
} from 'kysely'
import { HostContextError, MismatchError, NoContextError, UnknownTableError, UnsupportedStatementError, quote } from '../errors.js'
import type { TenantTableKind, TenantTables } from './tenant-tables.js'
import { DEFAULT_TENANT_COLUMN } from './tenant-column.js'
import { hasListComma, rawFragmentProblem } from './raw-fragment.js'

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

// PostgreSQL cuts identifiers to 63 bytes: a longer name whose first 63 are the
// tenant column names it.
const MAX_IDENTIFIER = 63

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

function needsAlias (label: string): Error {
  return new UnsupportedStatementError(`The tenant table ${label} stands in a statement with a RIGHT or FULL join (or raw text at its end), where each tenant table becomes a confined derived table; a schema-qualified table needs an alias there: ${label} as …`)
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
 * transformer.confine(db.selectFrom('student').where('id', '=', 1).selectAll().toOperationNode(), { kind: 'instance', id: 2 })
 * // select * from "student" where ("id" = $1) and "student"."iid" = $2   -- [1, 2]
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
  // Whether this statement got a predicate or a filled value, and the first
  // problem of a raw fragment's text in it.
  #touched = false
  #rawProblem: string | undefined

  /** `tables` may be a function, read once per query, so that the tables can be discovered again. */
  constructor (tables: TenantTables | (() => TenantTables), tenantColumn = DEFAULT_TENANT_COLUMN) {
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
    this.#touched = false
    this.#rawProblem = undefined
    const out = this.transformNode(node, queryId)
    // Only a statement the filter added to can lose what it added.
    if (this.#rawProblem !== undefined && this.#touched) {
      throw new UnsupportedStatementError(`A raw SQL fragment (sql\`…\`) of this statement contains ${this.#rawProblem}, which could carry the instance predicate the filter appends out of the statement: write raw fragments as whole expressions, without comments.`)
    }
    return out
  }


  // Most nodes of a query are leaves that can hold neither a table to confine
  // nor a query: they are immutable, so they are handed back as they are
  // instead of being copied. This halves the work of a typical statement.
  // The copies are not frozen, and Kysely's node stack (which no transformer
  // here reads) is not kept: freezing was a fifth of the filter's time. No
  // one mutates nodes, and what queries share (the cached predicates, the
  // nodes handed back) stays frozen as Kysely made it.
  override transformNode<T extends OperationNode | undefined> (node: T, queryId?: QueryId): T {
    if (node === undefined || LEAVES.has(node.kind)) return node
    return this.transformNodeImpl(node as OperationNode, queryId) as T
  }

  protected override transformNodeList<T extends ReadonlyArray<OperationNode> | undefined> (list: T, queryId?: QueryId): T {
    if (list === undefined) return list
    return list.map((node) => this.transformNode(node, queryId)) as unknown as T
  }

  // Marked nodes are handed back as they are, so that they can be recognised
  // (a marked ValueNode is a leaf, handed back by transformNode).
  protected override transformBinaryOperation (node: BinaryOperationNode, queryId?: QueryId): BinaryOperationNode {
    return own.has(node) ? node : super.transformBinaryOperation(node, queryId)
  }

  protected override transformCast (node: CastNode, queryId?: QueryId): CastNode {
    return own.has(node) ? node : super.transformCast(node, queryId)
  }

  // Raw text whose parameters are all values (the usual case) holds no query to
  // confine. Its text is read for what could carry the statement's end away,
  // which matters once the statement names a tenant table (see confine).
  protected override transformRaw (node: RawNode, queryId?: QueryId): RawNode {
    if (this.#rawProblem === undefined) this.#rawProblem = rawFragmentProblem(node.sqlFragments)
    for (const parameter of node.parameters) if (!LEAVES.has(parameter.kind)) return super.transformRaw(node, queryId)
    return node
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
      const ref = this.#tableRef(transformed.into, true) ?? (transformed.using && this.#tableRef(transformed.using.table))
      if (ref) throw new UnsupportedStatementError(`MERGE on the tenant table ${labelOf(ref)} cannot be confined to an instance: use INSERT … ON CONFLICT, UPDATE and DELETE, or unscoped() with an explicit ${this.#column}.`)
      return transformed
    })
  }

  // A CTE's body sees the CTEs before it (all of them with RECURSIVE), while
  // the main statement sees all; a real table of the same name stays a table
  // where the CTE is not visible.
  protected override transformWith (node: WithNode, queryId?: QueryId): WithNode {
    // A WITH is only ever read inside the statement that holds it, which #inScope opened a frame for.
    const frame = this.#ctes.at(-1)!
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

  /**
   * The tenant table `node` names (a table or an aliased table), or `undefined`.
   * The `target` of an INSERT, UPDATE, DELETE or MERGE is always a table:
   * PostgreSQL never reads a CTE's name there.
   */
  #tableRef (node: OperationNode | undefined, target = false): TableRef | undefined {
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
    if (!target && schema === undefined && this.#isCte(name)) return undefined
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

  /** True when the column `name` is the tenant column for PostgreSQL. */
  #isTenantColumn (name: string): boolean {
    return name === this.#column ||
      (this.#column.length === MAX_IDENTIFIER && name.length > MAX_IDENTIFIER && name.startsWith(this.#column))
  }

  /**
   * `<alias>.iid = $id`, or `<alias>.iid is null` for host rows; qualified by
   * the table itself when it has no alias or when `byTable` is set.
   */
  #predicate (ref: TableRef, byTable = false): OperationNode {
    this.#touched = true
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

  /**
   * `(condition) and p1 and p2 …`, without this transformer's earlier predicates.
   * The condition is parenthesised whatever its node: a raw operand anywhere in
   * it (`eb.not(sql\`a or b\`)`, `where('id', '=', sql\`1 or true\`)`) may hold
   * an OR that would take the predicates into one of its branches. Only a
   * ParensNode is left as it is: Kysely always prints it in parentheses.
   */
  #and (condition: OperationNode | undefined, predicates: readonly OperationNode[]): OperationNode | undefined {
    let out = condition === undefined ? undefined : strip(condition)
    if (out !== undefined && predicates.length > 0 && out.kind !== 'ParensNode') out = ParensNode.create(out)
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
    if (ref === undefined) {
      this.#refuseQualifiedDerived(item)
      return item
    }
    // A derived table's alias has no schema, so references written
    // `schema.table.column` (withSchema() writes them so) would no longer
    // resolve: such a table must be given an alias.
    if (ref.alias === undefined && ref.table.table.schema !== undefined) {
      throw needsAlias(labelOf(ref))
    }
    const inner: SelectQueryNode = {
      ...SelectQueryNode.createFrom([ref.table]),
      selections: [SelectionNode.createSelectAll()],
      where: WhereNode.create(this.#predicate(ref, true)),
    }
    return AliasNode.create(inner, IdentifierNode.create(ref.alias ?? ref.table.table.identifier.name))
  }

  /**
   * A subquery builder is transformed by its own plugins when it is embedded
   * (`db.withSchema('public').selectFrom(db.selectFrom('tag').fullJoin('role', …)…)`):
   * its tables were confined as `(select * from role …) as role` before the
   * outer `withSchema()` qualified them, and their references, with the
   * schema. `public.role.iid` no longer names the alias `role`, so the table
   * is refused here as it is when it comes qualified (42P01 otherwise).
   */
  #refuseQualifiedDerived (item: OperationNode): void {
    if (item.kind !== 'AliasNode') return
    const { node, alias } = item as AliasNode
    if (node.kind !== 'SelectQueryNode' || alias.kind !== 'IdentifierNode') return
    const froms = (node as SelectQueryNode).from?.froms
    if (froms?.length !== 1 || froms[0]!.kind !== 'TableNode') return
    const { identifier, schema } = (froms[0] as TableNode).table
    if (schema === undefined || identifier.name !== (alias as IdentifierNode).name) return
    if (this.#tables.kind(identifier.name, schema.name) === undefined) return
    throw needsAlias(quote(`${schema.name}.${identifier.name}`))
  }

  #derivedJoins (joins: readonly JoinNode[] | undefined): readonly JoinNode[] | undefined {
    return joins?.map((join) => {
      const table = this.#derived(join.table)
      return table === join.table ? join : { ...join, table }
    })
  }

  /**
   * `node` with each tenant table of its FROM list and joins a confined derived
   * table, and its WHERE without predicates of an earlier pass; with
   * `branches`, its set operations' selects too.
   */
  #derive (node: SelectQueryNode, branches: boolean): SelectQueryNode {
    return {
      ...node,
      from: node.from && FromNode.create(node.from.froms.map((item) => this.#derived(item))),
      joins: this.#derivedJoins(node.joins),
      where: this.#where(node.where, []),
      setOperations: branches
        ? node.setOperations?.map((operation) => operation.expression.kind === 'SelectQueryNode'
          ? { ...operation, expression: this.#derive(operation.expression as SelectQueryNode, true) }
          : operation)
        : node.setOperations,
    }
  }

  #confineSelect (node: SelectQueryNode): SelectQueryNode {
    // Raw text at the end (`modifyEnd`) follows the WHERE of this select, or of
    // its last set operation, and may continue that condition (`or true`).
    if (hasRawModifier(node.endModifiers)) return this.#derive(node, true)
    // A table on the preserved side of a RIGHT or FULL join cannot be confined
    // in WHERE (null-extended rows would vanish) nor in ON (its unmatched rows
    // would stay): every tenant table of such a query becomes a confined derived table.
    if (preservesUnmatched(node.joins)) return this.#derive(node, false)
    return this.#confineWhere(node, [], node.from?.froms ?? [])
  }

  #confineUpdate (node: UpdateQueryNode): UpdateQueryNode {
    // `updateTable(['a', 'b'])` is a list; PostgreSQL refuses it, but it is confined all the same.
    const targets = node.table?.kind === 'ListNode' ? (node.table as ListNode).items : [node.table]
    for (const item of targets) {
      const ref = this.#tableRef(item, true)
      if (ref) this.#checkUpdates(ref, node.updates)
    }
    // The target itself is confined in WHERE, which no join of the FROM list
    // reaches; the tables of the FROM list follow the rule of SELECT.
    if (preservesUnmatched(node.joins)) {
      node = { ...node, from: node.from && FromNode.create(node.from.froms.map((item) => this.#derived(item))), joins: this.#derivedJoins(node.joins) }
      return this.#confineWrite(node, targets, [])
    }
    return this.#confineWrite(node, targets, node.from?.froms ?? [])
  }

  #confineDelete (node: DeleteQueryNode): DeleteQueryNode {
    if (preservesUnmatched(node.joins)) {
      node = { ...node, using: node.using && UsingNode.create(node.using.tables.map((item) => this.#derived(item))), joins: this.#derivedJoins(node.joins) }
      return this.#confineWrite(node, node.from.froms, [])
    }
    return this.#confineWrite(node, node.from.froms, node.using?.tables ?? [])
  }

  // Raw text after the WHERE of an UPDATE or DELETE may continue its condition
  // (`or true`), and the target cannot become a derived table: refused.
  #confineWrite<N extends UpdateQueryNode | DeleteQueryNode> (node: N, targets: ReadonlyArray<OperationNode | undefined>, items: ReadonlyArray<OperationNode | undefined>): N {
    const out = this.#confineWhere(node, targets, items)
    if (out !== node && out.endModifiers !== undefined && out.endModifiers.length > 0) {
      throw new UnsupportedStatementError(`An ${node.kind === 'UpdateQueryNode' ? 'UPDATE' : 'DELETE'} of a tenant table cannot end with raw SQL (modifyEnd): it could change the condition that confines it. Use the builder's methods, or unscoped() with an explicit ${this.#column}.`)
    }
    return out
  }

  /**
   * WHERE gets a predicate for each tenant table among `targets` (the tables an
   * UPDATE or DELETE changes) and `items` (FROM items); joined tables get theirs in ON.
   */
  #confineWhere<N extends { readonly joins?: readonly JoinNode[], readonly where?: WhereNode }> (node: N, targets: ReadonlyArray<OperationNode | undefined>, items: ReadonlyArray<OperationNode | undefined>): N {
    const predicates: OperationNode[] = []
    for (const item of targets) {
      const ref = this.#tableRef(item, true)
      if (ref) predicates.push(this.#predicate(ref))
    }
    for (const item of items) {
      const ref = this.#tableRef(item)
      if (ref) predicates.push(this.#predicate(ref))
    }
    const joins = this.#confineJoins(node.joins)
    if (predicates.length === 0 && joins === node.joins) return node
    return { ...node, joins, where: this.#where(node.where, predicates) }
  }

  /**
   * An update may set the tenant column only to the value it already must
   * hold, however the column is named; a column that cannot be told apart
   * from the tenant column is refused.
   */
  #checkUpdates (ref: TableRef, updates: readonly ColumnUpdateNode[] | undefined): void {
    for (const update of updates ?? []) {
      const column = update.column
      // A value with a comma outside parentheses (`set({ name: sql\`'x', iid = 4\` })`)
      // ends its assignment and starts another, which no check here would see.
      if (update.value.kind !== 'ValueNode' && hasListComma(compiler.compileQuery(update.value as RootOperationNode, COMPILE_ID).sql)) {
        throw new UnsupportedStatementError(`An UPDATE of ${labelOf(ref)} sets a value whose SQL has a comma outside parentheses, which would start another assignment of the SET list: put the raw fragment in parentheses.`)
      }
      let names: readonly string[] | undefined
      if (column.kind === 'ColumnNode') {
        if (!this.#isTenantColumn((column as ColumnNode).column.name)) continue
      } else if ((names = targetNames(column)) === undefined) {
        throw new MismatchError(`An UPDATE of ${labelOf(ref)} sets a column given as ${column.kind} that cannot be told apart from ${this.#column}; name the column plainly.`)
      } else if (!names.some((name) => this.#isTenantColumn(name))) {
        continue
      }
      const value = this.#value(ref)
      if (!sameValue(update.value, value)) {
        throw new MismatchError(`An UPDATE of ${labelOf(ref)} sets ${this.#column} to another instance than the current one (${String(value)}); rows cannot move between instances outside unscoped().`)
      }
    }
  }

  #fill (value: number | null): OperationNode {
    this.#touched = true
    const node = ValueNode.create(value)
    own.add(node)
    return node
  }

  #confineInsert (node: InsertQueryNode): InsertQueryNode {
    const ref = this.#tableRef(node.into, true)
    if (ref === undefined) return node
    const value = this.#value(ref)
    // Raw text at the end (`on conflict … do update …`) would escape the check of ON CONFLICT.
    if (node.endModifiers !== undefined && node.endModifiers.length > 0) {
      throw new UnsupportedStatementError(`An INSERT into the tenant table ${labelOf(ref)} cannot end with raw SQL (modifyEnd): use onConflict() and returning(), or unscoped() with an explicit ${this.#column}.`)
    }
    let out: InsertQueryNode
    if (node.values === undefined) out = this.#insertDefaults(node, value)
    else if (node.values.kind === 'ValuesNode') out = this.#insertRows(ref, node, node.values as ValuesNode, value)
    else if (node.values.kind === 'SelectQueryNode') out = this.#insertSelect(ref, node, node.values as SelectQueryNode, value)
    else throw new UnsupportedStatementError(`An INSERT into the tenant table ${labelOf(ref)} takes its rows from raw SQL or another expression (expression(sql\`…\`)), which cannot be given ${this.#column}: use values() or a select, or unscoped() with an explicit ${this.#column}.`)
    if (out.onConflict?.updates !== undefined) out = { ...out, onConflict: this.#confineOnConflict(ref, out.onConflict) }
    return out
  }

  #insertMismatch (ref: TableRef, value: number | null): Error {
    return new MismatchError(`An INSERT into ${labelOf(ref)} names ${this.#column} other than the current instance's (${String(value)}); leave ${this.#column} out, it is filled in.`)
  }

  /** `default values`: the tenant column is the only one given. */
  #insertDefaults (node: InsertQueryNode, value: number | null): InsertQueryNode {
    return { ...node, defaultValues: false, columns: [ColumnNode.create(this.#column)], values: ValuesNode.create([ValueListNode.create([this.#fill(value)])]) }
  }

  /** `values (…), (…)`: each row gets the value, or must already hold it. */
  #insertRows (ref: TableRef, node: InsertQueryNode, values: ValuesNode, value: number | null): InsertQueryNode {
    // values() always sets the column list with its rows.
    const columns = node.columns!
    const index = columns.findIndex((column) => this.#isTenantColumn(column.column.name))
    const rows = values.values.map((row) => {
      const items: OperationNode[] = row.kind === 'PrimitiveValueListNode'
        ? row.values.map((item) => ValueNode.create(item))
        : [...row.values]
      if (index < 0) {
        items.push(this.#fill(value))
      } else {
        const item = items[index]
        if (item === undefined) throw this.#insertMismatch(ref, value)
        if (own.has(item) || item.kind === 'DefaultInsertValueNode') items[index] = this.#fill(value)
        else if (!sameValue(item, value)) throw this.#insertMismatch(ref, value)
      }
      return ValueListNode.create(items)
    })
    return { ...node, columns: index < 0 ? [...columns, ColumnNode.create(this.#column)] : columns, values: ValuesNode.create(rows) }
  }

  /** `insert … select`: the select becomes a derived table and the value its last column. */
  #insertSelect (ref: TableRef, node: InsertQueryNode, select: SelectQueryNode, value: number | null): InsertQueryNode {
    // Without a column list the select's columns fill the table's in order, and the one added for the instance would be one too many.
    if (node.columns === undefined) {
      throw new UnsupportedStatementError(`An INSERT … SELECT into the tenant table ${labelOf(ref)} needs its column list (columns([…])), to which ${this.#column} is added.`)
    }
    const columns = node.columns
    const index = columns.findIndex((column) => this.#isTenantColumn(column.column.name))
    let source = select
    if (index >= 0) {
      // Only this transformer's own wrapper may name the column: the value of
      // an arbitrary select cannot be checked before it runs.
      const wrapper = source.from?.froms[0]
      if (index !== columns.length - 1 || wrapper?.kind !== 'AliasNode' || (wrapper as AliasNode).alias.kind !== 'IdentifierNode' ||
        ((wrapper as AliasNode).alias as IdentifierNode).name !== SOURCE) {
        throw new MismatchError(`An INSERT … SELECT into ${labelOf(ref)} names ${this.#column}; leave it out, it is filled in with the current instance's.`)
      }
      source = (wrapper as AliasNode).node as SelectQueryNode
    }
    const fill = CastNode.create(this.#fill(value), DataTypeNode.create('bigint'))
    own.add(fill)
    const wrapper: SelectQueryNode = {
      ...SelectQueryNode.createFrom([AliasNode.create(source, IdentifierNode.create(SOURCE))]),
      selections: [SelectionNode.createSelectAllFromTable(TableNode.create(SOURCE)), SelectionNode.create(fill as never)],
    }
    return { ...node, columns: index < 0 ? [...columns, ColumnNode.create(this.#column)] : columns, values: wrapper }
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

/** True when a join keeps rows of a table that its ON condition does not match: RIGHT and FULL. */
function preservesUnmatched (joins: readonly JoinNode[] | undefined): boolean {
  if (joins === undefined) return false
  for (const join of joins) if (join.joinType === 'RightJoin' || join.joinType === 'FullJoin') return true
  return false
}

/** True when a select ends with raw text (`modifyEnd`), which follows WHERE directly. */
function hasRawModifier (modifiers: readonly SelectModifierNode[] | undefined): boolean {
  if (modifiers === undefined) return false
  for (const modifier of modifiers) if (modifier.rawModifier !== undefined) return true
  return false
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
    // Never reached by the filter's own output, which appends its predicates on the right
    // only; kept so that strip is right for any AND tree.
    return AndNode.create(l, r)
  }
  return condition
}

/** True when `node` is a plain value equal to `value`. */
function sameValue (node: OperationNode, value: number | null): boolean {
  if (node.kind !== 'ValueNode') return false
  const given = (node as ValueNode).value
  if (value === null) return given === null
  return (typeof given === 'number' || typeof given === 'bigint' || typeof given === 'string') && String(given) === String(value)
}

const compiler = new PostgresQueryCompiler()
const COMPILE_ID = createQueryId()
// PostgreSQL's whitespace, an identifier (quoted, or unquoted and folded to lower
// case), and what may follow a SET target's column: a field, a subscript, nothing.
const TARGET_START = /^[ \t\n\r\f\v]*(?:"((?:[^"]|"")+)"|([A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*))/
const TARGET_NEXT = /^[ \t\n\r\f\v]*(?:\.[ \t\n\r\f\v]*(?:"((?:[^"]|"")+)"|([A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)))/

/**
 * The names of a SET target that is not a plain `ColumnNode` (`set('t.iid', …)`,
 * `eb.ref(…)`, `sql.ref(…)`, raw text), read from the SQL PostgreSQL will see:
 * the column and every field after it, since `set t.iid` is column `t`, field
 * `iid`. `undefined` when the text does not start with a plain name followed by
 * a field, a subscript or nothing.
 */
function targetNames (column: OperationNode): readonly string[] | undefined {
  // `set('name', …)` is a reference: read it without compiling.
  if (column.kind === 'ReferenceNode' && (column as ReferenceNode).column.kind === 'ColumnNode') {
    const { column: name, table } = column as ReferenceNode
    const names = [(name as ColumnNode).column.name]
    if (table !== undefined) names.push(table.table.identifier.name)
    if (table?.table.schema !== undefined) names.push(table.table.schema.name)
    return names
  }
  const text = compiler.compileQuery(column as RootOperationNode, COMPILE_ID).sql
  const names: string[] = []
  let match = TARGET_START.exec(text)
  let rest = text
  while (match !== null) {
    names.push(match[1] === undefined ? match[2]!.replace(/[A-Z]+/g, (upper) => upper.toLowerCase()) : match[1].replaceAll('""', '"'))
    rest = rest.slice(match[0].length)
    match = TARGET_NEXT.exec(rest)
  }
  // After the names only subscripts may follow: anything else (`name = 'x', iid`)
  // is more of the SET list, which the names read here do not describe.
  if (names.length === 0 || !/^(?:[ \t\n\r\f\v]*\[[^\]]*\])*[ \t\n\r\f\v]*$/.test(rest)) return undefined
  return names
}
