// An independent judge of the shared-mode rewrite: it reads a compiled
// statement with PostgreSQL's own parser and decides, from SQL semantics
// alone, whether every tenant table is confined to one instance. It shares no
// code and no rule of thumb with lib/filter: it knows nothing of Kysely nodes,
// only of the parse tree the server itself would plan.

/** What a statement must be confined to: one instance's id, or host rows (`iid is null`, `may` tables only). */
export type OracleTarget = { readonly kind: 'instance', readonly id: number } | { readonly kind: 'host' }

/** One way a statement fails to confine a tenant table. */
export interface Finding {
  /**
   * `leak`: a tenant table whose rows are not all confined (another instance's rows can be read or changed);
   * `misplaced`: confined, but where it also removes rows the instance should see (null-extended rows of an outer join);
   * `moves`: SET can give the tenant column another value;
   * `insert`: an INSERT whose tenant column is not the current id;
   * `shape`: not one statement the checker can read.
   */
  readonly kind: 'leak' | 'misplaced' | 'moves' | 'insert' | 'shape'
  /** The rule broken, in a few stable words (the same for every statement that breaks it). */
  readonly rule: string
  /** Where in the statement, e.g. `SELECT > WHERE subquery > SELECT`. */
  readonly where: string
  readonly message: string
}

export interface CheckOptions {
  readonly parameters: readonly unknown[]
  readonly target: OracleTarget
  /** Tenant tables by name (any schema): `must` or `may`. */
  readonly tables: Readonly<Record<string, 'must' | 'may'>>
  /** Defaults to `'iid'`. */
  readonly column?: string
}

type Node = Record<string, any>
type Scope = readonly string[]

interface JoinStep { readonly join: Node, readonly side: 'left' | 'right' }

/** A tenant table in a FROM tree, with the joins above it (outermost first). */
interface Range {
  readonly rv: Node
  readonly kind: 'must' | 'may'
  readonly path: readonly JoinStep[]
  readonly clause: string
}

const JOIN_NAMES: Record<string, string> = { JOIN_INNER: 'INNER JOIN', JOIN_LEFT: 'LEFT JOIN', JOIN_RIGHT: 'RIGHT JOIN', JOIN_FULL: 'FULL JOIN' }

/** The top-level AND-conjuncts of a boolean expression (an OR or NOT is one opaque conjunct). */
function conjuncts (expr: Node | undefined): Node[] {
  if (expr === undefined || expr === null) return []
  if (expr.BoolExpr?.boolop === 'AND_EXPR') return (expr.BoolExpr.args as Node[]).flatMap(conjuncts)
  return [expr]
}

function unwrapCast (node: Node | undefined): Node | undefined {
  let out = node
  while (out?.TypeCast !== undefined) out = out.TypeCast.arg
  return out
}

function visibleName (rv: Node): string {
  return rv.alias?.aliasname ?? rv.relname
}

/** A compact rendering of an expression node for messages. */
function show (node: unknown): string {
  const text = JSON.stringify(node, (key, value) => key === 'location' ? undefined : value) ?? 'nothing'
  return text.length > 160 ? text.slice(0, 157) + '…' : text
}

/** True for a join step whose ON clause removes rows of the side the table is on. */
function onConfines (step: JoinStep): boolean {
  const type = step.join.jointype
  return type === 'JOIN_INNER' || (type === 'JOIN_LEFT' && step.side === 'right') || (type === 'JOIN_RIGHT' && step.side === 'left')
}

/**
 * True when a filter on the table placed above `path[from]` means the same as
 * filtering the table itself: it may be pushed down through inner joins and
 * into the preserved side of outer joins only.
 */
function pushable (path: readonly JoinStep[], from: number): boolean {
  for (let i = from; i < path.length; i++) {
    const { join, side } = path[i]!
    const type = join.jointype
    if (type === 'JOIN_INNER') continue
    if (type === 'JOIN_LEFT' && side === 'left') continue
    if (type === 'JOIN_RIGHT' && side === 'right') continue
    return false
  }
  return true
}

/** True when `value` (a node of any kind) contains a node that satisfies `test` anywhere below it. */
function contains (value: unknown, test: (node: Node) => boolean): boolean {
  if (Array.isArray(value)) return value.some((item) => contains(item, test))
  if (value === null || typeof value !== 'object') return false
  if (test(value as Node)) return true
  return Object.values(value).some((item) => contains(item, test))
}

class Checker {
  readonly findings: Finding[] = []
  readonly #options: CheckOptions
  readonly #column: string

  constructor (options: CheckOptions) {
    this.#options = options
    this.#column = options.column ?? 'iid'
  }

  #report (kind: Finding['kind'], rule: string, where: string, message: string): void {
    this.findings.push({ kind, rule, where, message })
  }

  /** The tenant kind of a range, or undefined for other tables and for CTE references (a CTE shadows only the unqualified name). */
  #kind (rv: Node, scope: Scope): 'must' | 'may' | undefined {
    const kind = this.#options.tables[rv.relname]
    if (kind === undefined) return undefined
    if (rv.schemaname === undefined && scope.includes(rv.relname)) return undefined
    return kind
  }

  /** Generic descent: every statement below is checked on its own; a tenant RangeVar met outside a FROM tree is a leak. */
  walk (value: unknown, scope: Scope, where: string): void {
    if (Array.isArray(value)) {
      for (const item of value) this.walk(item, scope, where)
      return
    }
    if (value === null || typeof value !== 'object') return
    for (const [key, item] of Object.entries(value)) {
      if (key === 'SelectStmt') this.#select(item, scope, `${where} > SELECT`)
      else if (key === 'UpdateStmt') this.#update(item, scope, `${where} > UPDATE`)
      else if (key === 'DeleteStmt') this.#delete(item, scope, `${where} > DELETE`)
      else if (key === 'InsertStmt') this.#insert(item, scope, `${where} > INSERT`)
      else if (key === 'MergeStmt') this.#merge(item, scope, `${where} > MERGE`)
      else if (key === 'RangeVar') {
        if (this.#kind(item, scope) !== undefined) this.#report('leak', 'a tenant table where the checker sees no confinement', where, `${item.relname} stands where the checker sees no confinement (${show(item)})`)
      } else this.walk(item, scope, where)
    }
  }

  /** Walks every key of `node` except `skip`. */
  #rest (node: Node, skip: readonly string[], scope: Scope, where: string): void {
    for (const [key, item] of Object.entries(node)) if (!skip.includes(key)) this.walk(item, scope, where)
  }

  /** Checks each CTE body with the names it sees and returns the scope of the statement. */
  #with (withClause: Node | undefined, scope: Scope, where: string): Scope {
    if (withClause === undefined) return scope
    const ctes = (withClause.ctes as Node[]).map((cte) => cte.CommonTableExpr)
    const names = ctes.map((cte) => cte.ctename as string)
    ctes.forEach((cte, i) => {
      const visible = withClause.recursive === true ? names : names.slice(0, i)
      this.walk(cte.ctequery, [...scope, ...visible], `${where} > CTE ${names[i]}`)
    })
    return [...scope, ...names]
  }

  /** Collects the tenant tables of one FROM item; subqueries below are checked on their own. */
  #fromItem (item: Node, path: readonly JoinStep[], ranges: Range[], scope: Scope, where: string, clause: string): void {
    if (item.RangeVar !== undefined) {
      const kind = this.#kind(item.RangeVar, scope)
      if (kind !== undefined) ranges.push({ rv: item.RangeVar, kind, path, clause })
    } else if (item.JoinExpr !== undefined) {
      const join = item.JoinExpr
      this.#fromItem(join.larg, [...path, { join, side: 'left' }], ranges, scope, where, clause)
      this.#fromItem(join.rarg, [...path, { join, side: 'right' }], ranges, scope, where, clause)
      this.walk(join.quals, scope, `${where} ON`)
    } else if (item.RangeSubselect !== undefined) {
      this.walk(item.RangeSubselect.subquery, scope, `${where} > derived table ${item.RangeSubselect.alias?.aliasname ?? ''}`.trimEnd())
    } else {
      this.walk(item, scope, where)
    }
  }

  /** True when `ref` is a column reference to the tenant column of `range`. */
  #isColumnOf (ref: Node | undefined, rv: Node): boolean {
    const fields = ref?.ColumnRef?.fields as Node[] | undefined
    if (fields === undefined) return false
    const names = fields.map((field) => field.String?.sval as string | undefined)
    if (names.at(-1) !== this.#column) return false
    if (names.length === 2) return names[0] === visibleName(rv)
    if (names.length === 3) return rv.alias === undefined && names[0] === (rv.schemaname ?? 'public') && names[1] === rv.relname
    return false
  }

  /** True when `value` is the tenant column's value for the target (a parameter or a literal). */
  #isExpected (value: Node | undefined, kind: 'must' | 'may'): boolean {
    const node = unwrapCast(value)
    if (node === undefined) return false
    const { target, parameters } = this.#options
    if (target.kind === 'host') {
      if (kind === 'must') return false
      if (node.ParamRef !== undefined) return parameters[node.ParamRef.number - 1] === null
      return node.A_Const?.isnull === true
    }
    if (node.ParamRef !== undefined) {
      const given = parameters[node.ParamRef.number - 1]
      return (typeof given === 'number' || typeof given === 'bigint' || typeof given === 'string') && String(given) === String(target.id)
    }
    if (node.A_Const?.ival !== undefined) return (node.A_Const.ival.ival ?? 0) === target.id
    return false
  }

  /** True when `conjunct` is `<range>.iid = <current id>` (either way round), or `<range>.iid is null` for host rows. */
  #confines (conjunct: Node, rv: Node, kind: 'must' | 'may'): boolean {
    if (this.#options.target.kind === 'host') {
      const test = conjunct.NullTest
      return kind === 'may' && test?.nulltesttype === 'IS_NULL' && this.#isColumnOf(unwrapCast(test.arg), rv)
    }
    const expr = conjunct.A_Expr
    if (expr?.kind !== 'AEXPR_OP' || expr.name?.length !== 1 || expr.name[0].String?.sval !== '=') return false
    const left = unwrapCast(expr.lexpr)
    const right = unwrapCast(expr.rexpr)
    return (this.#isColumnOf(left, rv) && this.#isExpected(right, kind)) || (this.#isColumnOf(right, rv) && this.#isExpected(left, kind))
  }

  /** The predicate that confines `range`, for messages. */
  #expected (range: { rv: Node, kind: 'must' | 'may' }): string {
    const name = visibleName(range.rv)
    if (this.#options.target.kind === 'host') return range.kind === 'must' ? `none: a must table may not be read in host context` : `"${name}".${this.#column} is null`
    return `"${name}".${this.#column} = ${this.#options.target.id}`
  }

  /** The value the tenant column must hold, for messages. */
  #value (kind: 'must' | 'may'): string {
    if (this.#options.target.kind === 'host') return kind === 'must' ? 'nothing (a must table takes no host rows)' : 'null'
    return String(this.#options.target.id)
  }

  /**
   * Each range must be confined by a top-level conjunct of WHERE, or of the ON
   * of a join above it that removes its rows (inner, or the nullable side of
   * an outer join). It is `misplaced` unless the conjunct also means exactly
   * "filter this table", i.e. could be pushed down to it.
   */
  #confine (ranges: readonly Range[], whereClause: Node | undefined, where: string): void {
    const top = conjuncts(whereClause)
    for (const range of ranges) {
      const { rv, kind, path } = range
      // A join with an alias hides the names inside it from everything above it.
      let hidden = -1
      path.forEach((step, i) => { if (step.join.alias !== undefined) hidden = i })
      let safe = false
      let exact = false
      const near: string[] = []
      const mentions = (node: unknown): boolean => contains(node, (n) => this.#confines(n, rv, kind))
      if (hidden < 0) {
        if (top.some((conjunct) => this.#confines(conjunct, rv, kind))) {
          safe = true
          if (pushable(path, 0)) exact = true
        } else if (mentions(whereClause)) {
          near.push('in WHERE, but not as a top-level AND-conjunct (under OR, NOT or inside an expression)')
        }
      }
      path.forEach((step, i) => {
        if (hidden > i) return
        const label = `${JOIN_NAMES[step.join.jointype] ?? step.join.jointype}`
        if (conjuncts(step.join.quals).some((conjunct) => this.#confines(conjunct, rv, kind))) {
          if (onConfines(step)) {
            safe = true
            if (pushable(path, i + 1)) exact = true
          } else {
            near.push(`in the ON of a ${label} with the table on its preserved side (the ON removes none of its rows)`)
          }
        } else if (mentions(step.join.quals)) {
          near.push(`in the ON of a ${label}, but not as a top-level AND-conjunct`)
        }
      })
      const label = `"${visibleName(rv)}" (${rv.schemaname !== undefined ? rv.schemaname + '.' : ''}${rv.relname}) in ${range.clause}`
      if (!safe && this.#options.target.kind === 'host' && kind === 'must') {
        this.#report('leak', 'a must table in host context', where, `${label} is a must table in host context: it has no host rows to confine it to`)
      } else if (!safe) {
        const rule = near.some((text) => text.includes('preserved side'))
          ? 'the predicate only in the ON of an outer join that preserves the table'
          : near.length > 0 ? 'the predicate not a top-level AND-conjunct' : 'no predicate'
        this.#report('leak', `${rule} (${range.clause})`, where, `${label} is not confined: no top-level conjunct ${this.#expected(range)} in WHERE or in the ON of an inner join or of the outer join it is the nullable side of${near.length > 0 ? '; found only ' + near.join('; ') : ''}`)
      } else if (!exact) {
        const joins = path.map((step) => `${JOIN_NAMES[step.join.jointype]} (${step.side} side)`).join(' > ')
        this.#report('misplaced', 'the predicate above an outer join, removing null-extended rows', where, `${label} is confined by ${this.#expected(range)} only above an outer join that preserves the other side (${joins}): the null-extended rows are removed; it belongs in a derived table or in the ON of that join`)
      }
    }
  }

  /** SET (of UPDATE or ON CONFLICT DO UPDATE) may give the tenant column only the value it must hold. */
  #sets (targetList: Node[] | undefined, rv: Node, kind: 'must' | 'may', where: string): void {
    for (const item of targetList ?? []) {
      const target = item.ResTarget
      if (target === undefined) continue
      const names = [target.name, ...(target.indirection as Node[] | undefined ?? []).map((part) => part.String?.sval)]
      if (!names.includes(this.#column)) continue
      if (target.val?.MultiAssignRef !== undefined) {
        this.#report('moves', 'SET (…, iid) = (…)', where, `SET (…) = (…) of "${visibleName(rv)}" names ${this.#column}: its value cannot be read`)
      } else if (!this.#isExpected(target.val, kind)) {
        this.#report('moves', `SET iid to another value (${where.replace(/^.*> /, '')})`, where, `SET ${names.join('.')} of "${visibleName(rv)}" (${rv.relname}) = ${show(target.val)}: not ${this.#value(kind)} (parameters ${JSON.stringify(this.#options.parameters)})`)
      }
    }
  }

  #select (stmt: Node, scope: Scope, where: string): void {
    const inner = this.#with(stmt.withClause, scope, where)
    if (stmt.op !== undefined && stmt.op !== 'SETOP_NONE') {
      this.#select(stmt.larg, inner, `${where} (${stmt.op} left)`)
      this.#select(stmt.rarg, inner, `${where} (${stmt.op} right)`)
      this.#rest(stmt, ['withClause', 'larg', 'rarg', 'lockingClause'], inner, where)
      return
    }
    const ranges: Range[] = []
    for (const item of stmt.fromClause ?? []) this.#fromItem(item, [], ranges, inner, where, 'FROM')
    // FOR UPDATE OF names ranges already in FROM: no rows of its own.
    this.#rest(stmt, ['withClause', 'fromClause', 'lockingClause', 'intoClause'], inner, where)
    this.#confine(ranges, stmt.whereClause, where)
  }

  #update (stmt: Node, scope: Scope, where: string): void {
    const inner = this.#with(stmt.withClause, scope, where)
    const ranges: Range[] = []
    // The target of a write is always a table: PostgreSQL refuses a CTE there.
    const kind = this.#kind(stmt.relation, [])
    if (kind !== undefined) {
      ranges.push({ rv: stmt.relation, kind, path: [], clause: 'UPDATE target' })
      this.#sets(stmt.targetList, stmt.relation, kind, `${where} SET`)
    }
    for (const item of stmt.fromClause ?? []) this.#fromItem(item, [], ranges, inner, where, 'FROM')
    this.#rest(stmt, ['withClause', 'relation', 'fromClause'], inner, where)
    this.#confine(ranges, stmt.whereClause, where)
  }

  #delete (stmt: Node, scope: Scope, where: string): void {
    const inner = this.#with(stmt.withClause, scope, where)
    const ranges: Range[] = []
    const kind = this.#kind(stmt.relation, [])
    if (kind !== undefined) ranges.push({ rv: stmt.relation, kind, path: [], clause: 'DELETE target' })
    for (const item of stmt.usingClause ?? []) this.#fromItem(item, [], ranges, inner, where, 'USING')
    this.#rest(stmt, ['withClause', 'relation', 'usingClause'], inner, where)
    this.#confine(ranges, stmt.whereClause, where)
  }

  #insert (stmt: Node, scope: Scope, where: string): void {
    const inner = this.#with(stmt.withClause, scope, where)
    const rv = stmt.relation
    const kind = this.#kind(rv, [])
    if (kind !== undefined) {
      const columns = (stmt.cols as Node[] | undefined ?? []).map((column) => column.ResTarget.name as string)
      const index = columns.indexOf(this.#column)
      if (stmt.selectStmt === undefined) {
        this.#report('insert', 'DEFAULT VALUES', where, `INSERT INTO ${rv.relname} DEFAULT VALUES: ${this.#column} gets the column default, not ${this.#value(kind)}`)
      } else if (index < 0) {
        this.#report('insert', 'no iid column', where, `INSERT INTO ${rv.relname} (${columns.join(', ')}) does not name ${this.#column}: it gets the column default`)
      } else {
        this.#source(stmt.selectStmt.SelectStmt, index, columns.length, rv, kind, where)
      }
      const conflict = stmt.onConflictClause
      if (conflict?.action === 'ONCONFLICT_UPDATE') {
        this.#sets(conflict.targetList, rv, kind, `${where} ON CONFLICT DO UPDATE SET`)
        if (!conjuncts(conflict.whereClause).some((conjunct) => this.#confines(conjunct, rv, kind))) {
          this.#report('leak', 'ON CONFLICT DO UPDATE without the predicate in its WHERE', `${where} ON CONFLICT DO UPDATE`, `DO UPDATE has no top-level conjunct ${this.#expected({ rv, kind })} in its WHERE: the conflicting row may be another instance's (WHERE ${show(conflict.whereClause)})`)
        }
      }
    }
    this.#rest(stmt, ['withClause', 'relation'], inner, where)
  }

  /** The rows an INSERT writes: the tenant column (at `index` of `count` columns) must be the current id in each. */
  #source (select: Node, index: number, count: number, rv: Node, kind: 'must' | 'may', where: string): void {
    if (select.op !== undefined && select.op !== 'SETOP_NONE') {
      this.#source(select.larg, index, count, rv, kind, where)
      this.#source(select.rarg, index, count, rv, kind, where)
      return
    }
    const expected = this.#value(kind)
    if (select.valuesLists !== undefined) {
      (select.valuesLists as Node[]).forEach((list, row) => {
        const item = list.List.items[index]
        if (!this.#isExpected(item, kind)) this.#report('insert', 'VALUES with another iid', where, `VALUES row ${row + 1} of ${rv.relname}: ${this.#column} is ${show(item)}, not ${expected} (parameters ${JSON.stringify(this.#options.parameters)})`)
      })
      return
    }
    const targets = (select.targetList as Node[] | undefined ?? []).map((item) => item.ResTarget?.val as Node | undefined)
    const star = targets.some((value) => contains(value?.ColumnRef?.fields, (node) => node.A_Star !== undefined))
    // With a star, positions are known only from the end.
    const value = star ? (index === count - 1 ? targets.at(-1) : undefined) : targets[index]
    if (!this.#isExpected(value, kind)) this.#report('insert', 'INSERT … SELECT with another iid', where, `INSERT INTO ${rv.relname} … SELECT: the ${this.#column} column is ${show(value)}, not ${expected}`)
  }

  #merge (stmt: Node, scope: Scope, where: string): void {
    const inner = this.#with(stmt.withClause, scope, where)
    if (this.#kind(stmt.relation, []) !== undefined || contains(stmt.sourceRelation, (node) => node.relname !== undefined && this.#kind(node, inner) !== undefined)) {
      this.#report('leak', 'MERGE on a tenant table', where, 'MERGE on a tenant table: each WHEN branch would need its own confinement, which the checker does not try to read')
    }
    this.#rest(stmt, ['withClause', 'relation', 'sourceRelation'], inner, where)
  }
}

/** Checks one parse tree (the result of libpg-query's `parseSync`); returns what is wrong, or nothing. */
export function checkParseTree (tree: { stmts?: Array<{ stmt: Node }> }, options: CheckOptions): Finding[] {
  const statements = tree.stmts ?? []
  if (statements.length !== 1) return [{ kind: 'shape', rule: 'not one statement', where: 'statement', message: `${statements.length} statements, not one` }]
  const checker = new Checker(options)
  checker.walk(statements[0]!.stmt, [], 'statement')
  return checker.findings
}

export type OracleCheck = (text: string, options: CheckOptions) => Finding[]

/** A text PostgreSQL's parser rejects (the server would reject it too). */
export class UnparsableSqlError extends Error {}

/** Loads PostgreSQL's parser and returns a checker of SQL text; throws {@link UnparsableSqlError} for a text the parser rejects. */
export async function loadOracleChecker (): Promise<OracleCheck> {
  const { loadModule, parseSync } = await import('libpg-query')
  await loadModule()
  return (text, options) => {
    let tree: unknown
    try {
      tree = parseSync(text)
    } catch (err) {
      throw new UnparsableSqlError(err instanceof Error ? err.message : String(err))
    }
    return checkParseTree(tree as never, options)
  }
}
