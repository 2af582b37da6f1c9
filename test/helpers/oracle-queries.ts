// Random statements over the whole builder surface of Kysely's select,
// insert, update and delete builders, for the shared-mode oracle. Each
// statement is a pair: the builder code as text (for a report) and a function
// that builds it on a given Kysely, so that the very same statement can be
// built through the tenancy and, against hand-filtered views, through a plain
// Kysely. The generator keeps track of what is in scope, so that most
// statements are valid SQL and run.
import fc from 'fast-check'
import { sql, type Compilable } from 'kysely'
import { jsonArrayFrom, jsonObjectFrom } from 'kysely/helpers/postgres'

export type TableName = 'student' | 'course' | 'role' | 'tag' | 'country'

/** The tenant tables of test/helpers/tenant-schema.ts. */
export const TENANT_TABLES = { student: 'must', course: 'must', tag: 'must', role: 'may' } as const

/** How a statement is built: through the tenancy (`schema` public) or for the oracle (`schema` oracle_<id>, views). */
export interface BuildContext {
  /** A Kysely, or the query creator a CTE's callback receives. */
  readonly db: any
  /** The schema written where the builder code names one (`'public.student'`, `withSchema('public')`). */
  readonly schema: string
  /**
   * Set for the oracle: ON CONFLICT DO UPDATE on a view meets the conflicting
   * row even when the view hides it, so the oracle adds the instance's WHERE
   * there by hand (`null` for host rows).
   */
  readonly conflictIid?: number | null
}

export type StatementContext = { readonly kind: 'instance', readonly name: string, readonly id: number } | { readonly kind: 'host' }

export interface GeneratedStatement {
  readonly index: number
  readonly context: StatementContext
  readonly statement: 'select' | 'insert' | 'update' | 'delete' | 'merge'
  /** The builder code, as one would write it. */
  readonly code: string
  readonly build: (c: BuildContext) => Compilable
  /** The rows come in a total order (ORDER BY every output column). */
  readonly ordered: boolean
  /** Builder methods and shapes used, for the coverage check. */
  readonly features: readonly string[]
}

type ColumnType = 'int' | 'text'
interface Column { readonly name: string, readonly type: ColumnType }
interface Source { readonly name: string, readonly columns: readonly Column[], readonly table?: TableName }
interface Cte { readonly name: string, readonly pickable: boolean }
interface Scope {
  readonly ctes: readonly Cte[]
  /** Sources of the enclosing queries, for correlated subqueries. */
  readonly outer: readonly Source[]
  readonly depth: number
  /** Inside a CTE's callback, whose query creator has no plugin: its builders are rewritten only as part of the statement. */
  readonly inCte?: boolean
}
interface ExprScope extends Scope { readonly sources: readonly Source[] }

const int = (name: string): Column => ({ name, type: 'int' })
const txt = (name: string): Column => ({ name, type: 'text' })
const COLUMNS: Record<TableName, readonly Column[]> = {
  student: [int('id'), int('iid'), txt('name'), int('course_id')],
  course: [int('id'), int('iid'), txt('title')],
  role: [int('id'), int('iid'), txt('name')],
  tag: [int('id'), int('iid'), txt('label')],
  country: [txt('code'), txt('name')],
}
const TEXT_COLUMN: Record<TableName, string> = { student: 'name', course: 'title', role: 'name', tag: 'label', country: 'name' }
/** Every derived table, CTE and set-operation arm has these columns. */
const ROW2: readonly Column[] = [int('id'), txt('txt')]
const INSTANCES = [{ name: 'a', id: 1 }, { name: 'b', id: 2 }, { name: 'c', id: 3 }, { name: 'd', id: 4 }]

// Pieces: builder code as text, and the same code as a function. `slot` is
// the parameter of the innermost callback (eb, join, oc, qb).
type Make = (c: BuildContext, slot: any) => any
interface Piece { readonly code: string, readonly make: Make }
const piece = (code: string, make: Make): Piece => ({ code, make })
const str = (value: string): Piece => piece(`'${value}'`, () => value)
const num = (value: number): Piece => piece(String(value), () => value)
const NULL = piece('null', () => null)
const list = (items: readonly Piece[]): Piece => piece(`[${items.map((item) => item.code).join(', ')}]`, (c, s) => items.map((item) => item.make(c, s)))
const record = (entries: ReadonlyArray<readonly [string, Piece]>): Piece =>
  piece(`{ ${entries.map(([key, value]) => `${key}: ${value.code}`).join(', ')} }`, (c, s) => Object.fromEntries(entries.map(([key, value]) => [key, value.make(c, s)])))
const lambda = (param: string, body: Piece): Piece => piece(`(${param}) => ${body.code}`, (c) => (arg: unknown) => body.make(c, arg))
const slot = (name: string): Piece => piece(name, (_c, s) => s)
const EB = slot('eb')
const DB = piece('db', (c) => c.db)
const prop = (target: Piece, name: string): Piece => piece(`${target.code}.${name}`, (c, s) => target.make(c, s)[name])
/** A CTE body: its callback's query creator becomes the `db` of everything inside. */
const dbLambda = (body: Piece): Piece => piece(`(db) => ${body.code}`, (c) => (qc: unknown) => body.make({ ...c, db: qc }, undefined))
/** A table name with the schema of the build: `'public.student as t1'` for the tenancy, `oracle_2.student` for the oracle. */
const qualified = (rest: string): Piece => piece(`'public.${rest}'`, (c) => `${c.schema}.${rest}`)

function call (target: Piece, method: string, ...args: Piece[]): Piece {
  return piece(`${target.code}.${method}(${args.map((arg) => arg.code).join(', ')})`, (c, s) => target.make(c, s)[method](...args.map((arg) => arg.make(c, s))))
}

/** `eb(…)`, `cte(…)`: calls the value itself. */
function apply (target: Piece, ...args: Piece[]): Piece {
  return piece(`${target.code}(${args.map((arg) => arg.code).join(', ')})`, (c, s) => target.make(c, s)(...args.map((arg) => arg.make(c, s))))
}

type RawPart = string | { readonly ref: string } | { readonly value: number | string }
/** `sql\`…\`` with `sql.ref()` and parameters. */
function raw (...parts: RawPart[]): Piece {
  const strings: string[] = ['']
  const values: Array<{ ref: string } | { value: number | string }> = []
  let code = 'sql`'
  for (const part of parts) {
    if (typeof part === 'string') {
      strings[strings.length - 1] += part
      code += part
    } else {
      values.push(part)
      strings.push('')
      code += 'ref' in part ? `\${sql.ref('${part.ref}')}` : `\${${typeof part.value === 'string' ? `'${part.value}'` : part.value}}`
    }
  }
  code += '`'
  return piece(code, () => {
    const template = Object.assign([...strings], { raw: [...strings] }) as unknown as TemplateStringsArray
    return sql(template, ...values.map((value) => 'ref' in value ? sql.ref(value.ref) : value.value))
  })
}

/**
 * A small PRNG (mulberry32) per statement, seeded by fast-check: drawing
 * through fast-check itself costs about 2 µs a number, which for the
 * thousands of draws of 10,000 statements is most of the time budget.
 */
function random (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6D2B79F5) >>> 0
    let x = state
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

class StatementGenerator {
  readonly #next: () => number
  readonly features = new Set<string>()
  readonly #host: boolean
  readonly #id: number | null
  #aliases = 0
  // Nested queries so far, and how many this statement may have: most
  // statements stay small, so that 10,000 of them compile and parse in seconds.
  #nested = 0
  readonly #budget: number

  constructor (next: () => number, host: boolean, id: number | null) {
    this.#next = next
    this.#host = host
    this.#id = id
    this.#budget = this.#weighted([[20, 0], [30, 1], [25, 2], [15, 3], [10, 5]] as const)
  }

  /** True while another optional subquery fits the statement's budget. */
  #room (): boolean { return this.#nested < this.#budget }

  #int (min: number, max: number): number { return min + Math.floor(this.#next() * (max - min + 1)) }
  #chance (p: number): boolean { return this.#int(0, 999) < p * 1000 }
  #pick<T> (items: readonly T[]): T { return items[this.#int(0, items.length - 1)]! }
  #weighted<T> (entries: ReadonlyArray<readonly [number, T]>): T {
    const total = entries.reduce((sum, [weight]) => sum + weight, 0)
    let draw = this.#int(0, total - 1)
    for (const [weight, value] of entries) {
      if (draw < weight) return value
      draw -= weight
    }
    return entries.at(-1)![1]
  }

  #feature (...names: string[]): void { for (const name of names) this.features.add(name) }
  #call (target: Piece, method: string, ...args: Piece[]): Piece {
    this.features.add(method)
    return call(target, method, ...args)
  }

  #alias (prefix = 't'): string { return `${prefix}${this.#aliases++}` }

  // ---- tables and FROM items ------------------------------------------------

  #tableName (tenantOnly = false): TableName {
    // country has no integer column: rare, or most comparisons would not type-check.
    if (this.#host) return this.#weighted<TableName>([[60, 'role'], [tenantOnly ? 0 : 12, 'country'], [10, 'student'], [9, 'tag'], [9, 'course']])
    return this.#weighted<TableName>([[28, 'student'], [22, 'course'], [18, 'tag'], [18, 'role'], [tenantOnly ? 0 : 4, 'country']])
  }

  /** A table as a FROM item: aliased, bare, or with the schema. */
  #table (scope: Scope, taken: Set<string>, options: { tenantOnly?: boolean, aliased?: boolean, table?: TableName } = {}): { arg: Piece, source: Source } {
    const table = options.table ?? this.#tableName(options.tenantOnly)
    const shadowed = scope.ctes.some((cte) => cte.name === table)
    const free = !taken.has(table)
    // Where a CTE of the same name is visible, only the schema names the table.
    const form = options.aliased === true
      ? this.#weighted([[shadowed ? 0 : 85, 'alias'], [15, 'qualified alias']] as const)
      : this.#weighted([[shadowed ? 0 : 70, 'alias'], [12, 'qualified alias'], [!shadowed && free ? 10 : 0, 'bare'], [free ? 8 : 0, 'qualified bare']] as const)
    this.#feature(`table:${form}`)
    if (shadowed) this.#feature('cte:shadowed table named with its schema')
    const alias = form === 'alias' || form === 'qualified alias' ? this.#alias() : table
    taken.add(alias)
    const arg = form === 'alias' ? str(`${table} as ${alias}`) : form === 'qualified alias' ? qualified(`${table} as ${alias}`) : form === 'bare' ? str(table) : qualified(table)
    return { arg, source: { name: alias, columns: COLUMNS[table], table } }
  }

  /** Any FROM item: a table, a CTE, or a derived table. */
  #fromItem (scope: Scope, taken: Set<string>): { arg: Piece, source: Source } {
    const ctes = scope.ctes.filter((cte) => cte.pickable && !taken.has(cte.name))
    const kind = this.#weighted([[66, 'table'], [ctes.length > 0 ? 18 : 0, 'cte'], [this.#room() ? 14 : 0, 'derived'], [this.#room() ? 3 : 0, 'function']] as const)
    if (kind === 'function') {
      // A set-returning function whose argument is a query: generate_series(1, (select max(…) from …)).
      const alias = this.#alias('g')
      taken.add(alias)
      this.#feature('from:function with a subquery argument')
      const sub = this.#select({ ...scope, depth: scope.depth + 1 }, 'scalar', EB)
      const arg = lambda('eb', call(apply(prop(EB, 'fn'), str('generate_series'), list([this.#call(EB, 'lit', num(1)), sub.piece])), 'as', str(alias)))
      return { arg, source: { name: alias, columns: [int(alias)] } }
    }
    if (kind === 'cte') {
      const cte = this.#pick(ctes)
      this.#feature('from:cte')
      if (this.#chance(0.5)) {
        taken.add(cte.name)
        return { arg: str(cte.name), source: { name: cte.name, columns: ROW2 } }
      }
      const alias = this.#alias()
      taken.add(alias)
      return { arg: str(`${cte.name} as ${alias}`), source: { name: alias, columns: ROW2 } }
    }
    if (kind === 'derived') {
      const alias = this.#alias('d')
      taken.add(alias)
      this.#feature('from:derived table')
      const sub = this.#select({ ...scope, depth: scope.depth + 1 }, 'row2', this.#chance(0.5) ? EB : DB)
      const arg = sub.start === EB ? lambda('eb', call(sub.piece, 'as', str(alias))) : call(sub.piece, 'as', str(alias))
      return { arg, source: { name: alias, columns: ROW2 } }
    }
    return this.#table(scope, taken)
  }

  // ---- column references and expressions ------------------------------------

  /** A column of the sources (now and then of an enclosing query's), of `type` where there is one. */
  #column (es: ExprScope, type?: ColumnType, outer = true): { ref: string, type: ColumnType } {
    const of = (pool: readonly Source[], wanted: ColumnType | undefined): Array<{ source: Source, column: Column }> =>
      pool.flatMap((source) => source.columns.filter((column) => wanted === undefined || column.type === wanted).map((column) => ({ source, column })))
    const useOuter = outer && es.outer.length > 0 && this.#chance(0.15)
    let candidates = useOuter ? of(es.outer, type) : []
    if (candidates.length === 0) candidates = of(es.sources, type)
    if (candidates.length === 0 && outer) candidates = of(es.outer, type)
    if (candidates.length === 0) candidates = of(es.sources, undefined)
    const { source, column } = this.#pick(candidates)
    return { ref: `${source.name}.${column.name}`, type: column.type }
  }

  #intRef (es: ExprScope, outer = true): string {
    return this.#column(es, 'int', outer).ref
  }

  #textValue (): string { return this.#pick(['student 1 of 2', 'course 2 of 1', 'tag 1 of 3', 'role 1 of 2', 'France', 'host role 1']) }

  /** A literal to compare `type` with. */
  #literal (type: ColumnType): Piece {
    return type === 'int' ? num(this.#int(0, 5)) : str(this.#textValue())
  }

  #child (es: ExprScope): Scope {
    return { ctes: es.ctes, outer: [...es.sources, ...es.outer], depth: es.depth + 1, inCte: es.inCte }
  }

  /** A subquery; `inEb` says whether an `eb` is in scope (else it is a db builder or a callback). */
  #subquery (es: ExprScope, shape: Shape, inEb: boolean): Piece {
    const start = this.#chance(0.5) ? EB : DB
    const sub = this.#select(this.#child(es), shape, start)
    if (start === EB && !inEb) return lambda('eb', sub.piece)
    return sub.piece
  }

  /** A raw boolean that contains OR: the operand that once split the appended predicate. */
  #rawOr (es: ExprScope): Piece {
    const a = this.#intRef(es)
    const b = this.#column(es)
    this.#feature('raw:or')
    return this.#weighted([
      [3, () => raw({ ref: a }, ' = ', { value: this.#int(1, 3) }, ' or true')],
      [3, () => raw({ ref: a }, ' < ', { value: this.#int(1, 3) }, ' or ', { ref: b.ref }, ' is null')],
      [2, () => raw('false or ', { ref: a }, ' > ', { value: this.#int(1, 3) })],
      [1, () => raw('true or false')],
    ] as const)()
  }

  /** A boolean expression; `eb` is the slot. */
  #bool (es: ExprScope, depth = 0): Piece {
    const deep = depth >= 2 || es.depth >= 3
    const nest = !deep && this.#room()
    const kind = this.#weighted([
      [22, 'cmp'], [6, 'null'], [5, 'in list'], [6, 'raw operand'], [5, 'not raw'], [5, 'raw'],
      [deep ? 0 : 9, 'or'], [deep ? 0 : 4, 'and'], [deep ? 0 : 4, 'not'], [nest ? 6 : 0, 'exists'], [nest ? 6 : 0, 'in subquery'],
      [nest ? 3 : 0, 'scalar subquery'], [3, 'between'], [5, 'ref ref'], [1, 'lit'], [2, 'parens'],
      [nest ? 2 : 0, 'tuple in subquery'], [nest ? 3 : 0, 'raw with a subquery'], [nest ? 1 : 0, 'any'],
    ] as const)
    this.#feature(`eb:${kind}`)
    switch (kind) {
      case 'cmp': {
        const column = this.#column(es)
        const op = column.type === 'int' ? this.#pick(['=', '<>', '<', '>', '<=', '>=']) : this.#pick(['=', '<>', 'like'])
        const value = column.type === 'text' && op === 'like' ? str(this.#pick(['student%', '%1', 'course 1%', '%of 2'])) : this.#literal(column.type)
        return apply(EB, str(column.ref), str(op), value)
      }
      case 'null': return apply(EB, str(this.#column(es).ref), str(this.#pick(['is', 'is not'])), NULL)
      case 'in list': return apply(EB, str(this.#intRef(es)), str(this.#pick(['in', 'not in'])), list([num(this.#int(1, 2)), num(this.#int(3, 4))]))
      case 'raw operand': {
        // `x = 1 or true`: the operand carries an OR of its own.
        this.#feature('raw:or')
        return apply(EB, str(this.#intRef(es)), str(this.#pick(['=', '>', '<>'])), this.#pick([raw('1 or true'), raw('2 or false'), raw('3 or ', { ref: this.#column(es).ref }, ' is null')]))
      }
      case 'not raw': return this.#call(EB, 'not', this.#rawOr(es))
      case 'raw': return this.#rawOr(es)
      case 'tuple in subquery': {
        // (a, b) in (select x, y …): the subquery has two int columns.
        const sub = this.#select(this.#child(es), 'row2', EB)
        return apply(EB, this.#call(EB, 'refTuple', str(this.#intRef(es)), str(this.#column(es, 'text').ref)), str('in'), sub.piece)
      }
      case 'raw with a subquery': {
        // A builder inside raw SQL: its query is a node of the raw one.
        const shape = this.#pick(['int1', 'exists'] as const)
        const sub = this.#select(this.#child(es), shape, EB)
        if (shape === 'exists') return piece(`sql\`exists (\${${sub.piece.code}}) or false\``, (c, s) => sql`exists (${sub.piece.make(c, s)}) or false`)
        const ref = this.#intRef(es)
        return piece(`sql\`\${sql.ref('${ref}')} in (\${${sub.piece.code}})\``, (c, s) => sql`${sql.ref(ref)} in (${sub.piece.make(c, s)})`)
      }
      case 'any': return apply(EB, str(this.#intRef(es)), str('='), this.#call(prop(EB, 'fn'), 'any', this.#select(this.#child(es), 'int1', EB).piece))
      case 'or': return this.#call(EB, 'or', list(Array.from({ length: this.#int(2, 3) }, () => this.#bool(es, depth + 1))))
      case 'and': return this.#call(EB, 'and', list(Array.from({ length: this.#int(2, 3) }, () => this.#bool(es, depth + 1))))
      case 'not': return this.#call(EB, 'not', this.#bool(es, depth + 1))
      case 'exists': {
        const exists = this.#call(EB, 'exists', this.#subquery(es, 'exists', true))
        return this.#chance(0.3) ? this.#call(EB, 'not', exists) : exists
      }
      case 'in subquery': return apply(EB, str(this.#intRef(es)), str(this.#pick(['in', 'not in', 'in'])), this.#subquery(es, 'int1', true))
      case 'scalar subquery': return apply(EB, str(this.#intRef(es)), str(this.#pick(['=', '<=', '>'])), this.#subquery(es, 'scalar', true))
      case 'between': return this.#call(EB, 'between', str(this.#intRef(es)), num(this.#int(0, 2)), num(this.#int(2, 4)))
      case 'ref ref': {
        const a = this.#column(es)
        const b = this.#column(es, a.type)
        return apply(EB, str(a.ref), str(this.#pick(['=', '<>', '<='])), this.#call(EB, 'ref', str(b.ref)))
      }
      case 'lit': {
        const value = this.#chance(0.7)
        return this.#call(EB, 'lit', piece(String(value), () => value))
      }
      case 'parens': return this.#call(EB, 'parens', this.#bool(es, depth + 1))
    }
  }

  /** One `.where(…)` (or `.having`, `.on`) call on `q`, in one of its forms. */
  #where (q: Piece, es: ExprScope, method = 'where'): Piece {
    const form = this.#weighted([[32, 'callback'], [26, 'three'], [method === 'where' ? 10 : 0, 'ref'], [6, 'raw'], [5, 'three raw'], [this.#room() ? 5 : 0, 'three subquery'], [method === 'where' ? 3 : 0, '$call'], [method === 'where' ? 2 : 0, '$if']] as const)
    this.#feature(`${method}:${form}`)
    switch (form) {
      case 'callback': return this.#call(q, method, lambda('eb', this.#bool(es)))
      case 'three': {
        const column = this.#column(es)
        return this.#call(q, method, str(column.ref), str(column.type === 'int' ? this.#pick(['=', '<', '>=', '<>']) : this.#pick(['=', 'like', '<>'])), column.type === 'text' ? str(this.#pick(['student 1 of 2', '%1%', 'tag 2 of 2'])) : num(this.#int(0, 4)))
      }
      case 'ref': {
        const a = this.#column(es)
        return this.#call(q, `${method}Ref`, str(a.ref), str(this.#pick(['=', '<>', '>='])), str(this.#column(es, a.type).ref))
      }
      case 'raw': return this.#call(q, method, this.#rawOr(es))
      case 'three raw': {
        this.#feature('raw:or')
        return this.#call(q, method, str(this.#intRef(es)), str('='), this.#pick([raw('1 or true'), raw('4 or ', { ref: this.#intRef(es) }, ' < 3')]))
      }
      case 'three subquery': return this.#call(q, method, str(this.#intRef(es)), str(this.#pick(['in', 'not in'])), this.#subquery(es, 'int1', false))
      case '$call': return this.#call(q, '$call', lambda('qb', this.#where(slot('qb'), es, method)))
      case '$if': return this.#call(q, '$if', piece('true', () => true), lambda('qb', this.#where(slot('qb'), es, method)))
    }
  }

  /** A value expression for a select list or RETURNING, aliased `alias`. */
  #selection (es: ExprScope, alias: string, subqueries: boolean, window = true): Piece {
    const kind = this.#weighted([
      [40, 'ref'], [8, 'raw'], [6, 'raw or'], [subqueries && this.#room() ? 10 : 0, 'scalar subquery'], [subqueries && this.#room() ? 5 : 0, 'exists'],
      [5, 'case'], [5, 'coalesce'], [3, 'cast'], [2, 'neg'], [window ? 3 : 0, 'window'], [subqueries && this.#room() ? 2 : 0, 'case exists'],
      [subqueries && this.#room() ? 4 : 0, 'json helper'],
    ] as const)
    this.#feature(`selection:${kind}`)
    switch (kind) {
      case 'ref': return str(`${this.#column(es).ref} as ${alias}`)
      case 'raw': return call(raw({ ref: this.#intRef(es) }, ' + 1'), 'as', str(alias))
      case 'raw or': return call(this.#rawOr(es), 'as', str(alias))
      case 'scalar subquery': return call(this.#subquery(es, 'scalar', true), 'as', str(alias))
      case 'exists': return call(this.#call(EB, 'exists', this.#subquery(es, 'exists', true)), 'as', str(alias))
      case 'case': {
        let c = this.#call(EB, 'case')
        c = this.#call(c, 'when', str(this.#intRef(es)), str('='), num(this.#int(1, 3)))
        c = this.#call(c, 'then', str('one'))
        c = this.#call(c, 'else', str('other'))
        return call(this.#call(c, 'end'), 'as', str(alias))
      }
      case 'coalesce': return call(this.#call(prop(EB, 'fn'), 'coalesce', str(this.#intRef(es)), this.#call(EB, 'lit', num(0))), 'as', str(alias))
      case 'cast': return call(this.#call(EB, 'cast', str(this.#intRef(es)), str('text')), 'as', str(alias))
      case 'neg': return call(this.#call(EB, 'neg', this.#call(EB, 'ref', str(this.#intRef(es)))), 'as', str(alias))
      case 'window': {
        const over = lambda('ob', this.#call(slot('ob'), 'partitionBy', str(this.#column(es, undefined, false).ref)))
        return call(this.#call(this.#call(prop(EB, 'fn'), 'countAll'), 'over', over), 'as', str(alias))
      }
      case 'json helper': {
        // Kysely's JSON helpers wrap the query in raw SQL: `(select coalesce(json_agg(agg), '[]') from (…) as agg)`.
        if (this.#chance(0.5)) {
          const sub = this.#select(this.#child(es), 'scalar', EB)
          return call(piece(`jsonObjectFrom(${sub.piece.code})`, (c, s) => jsonObjectFrom(sub.piece.make(c, s))), 'as', str(alias))
        }
        // Ordered, so that json_agg builds the same array on both sides.
        const sub = this.#call(this.#select(this.#child(es), 'int1', EB).piece, 'orderBy', raw('1'))
        return call(piece(`jsonArrayFrom(${sub.code})`, (c, s) => jsonArrayFrom(sub.make(c, s))), 'as', str(alias))
      }
      case 'case exists': {
        let c = this.#call(EB, 'case')
        c = this.#call(c, 'when', this.#call(EB, 'exists', this.#subquery(es, 'exists', true)))
        c = this.#call(this.#call(this.#call(c, 'then', num(1)), 'else', num(0)), 'end')
        return call(c, 'as', str(alias))
      }
    }
  }

  #aggregate (es: ExprScope, alias: string): Piece {
    const fn = prop(EB, 'fn')
    const kind = this.#pick(['countAll', 'count', 'max', 'min', 'sum'] as const)
    this.#feature(`fn:${kind}`)
    const expr = kind === 'countAll' ? this.#call(fn, 'countAll') : this.#call(fn, kind, str(this.#intRef(es, false)))
    return call(expr, 'as', str(alias))
  }

  // ---- joins ----------------------------------------------------------------

  static readonly #SELECT_JOINS = ['innerJoin', 'leftJoin', 'rightJoin', 'fullJoin', 'crossJoin', 'innerJoinLateral', 'leftJoinLateral', 'crossJoinLateral'] as const
  static readonly #WRITE_JOINS = ['innerJoin', 'leftJoin', 'rightJoin', 'fullJoin'] as const

  /**
   * Adds one join to `q`; `sources` (all the statement sees) and `joinable`
   * (what an ON may name: the join tree of the last FROM item, never another
   * comma item nor the target of UPDATE / DELETE) get the joined item. `tie`
   * joins a tenant table on `id` to the previous one.
   */
  #join (q: Piece, statement: string, scope: Scope, sources: Source[], joinable: Source[], taken: Set<string>, tie: boolean): { q: Piece, kind: string } {
    const kinds = statement === 'select' ? StatementGenerator.#SELECT_JOINS : StatementGenerator.#WRITE_JOINS
    const kind = this.#weighted(kinds.map((k) => [k.endsWith('Lateral') ? (this.#room() ? 5 : 0) : k === 'crossJoin' ? 8 : 14, k] as const))
    this.#feature(kind, `${statement}:${kind}`)
    if (kind.endsWith('Lateral')) {
      // The subquery sees the join tree before it.
      const alias = this.#alias('l')
      taken.add(alias)
      const sub = this.#select({ ...scope, outer: [...joinable, ...scope.outer], depth: scope.depth + 1 }, 'row2', EB)
      const target = lambda('eb', call(sub.piece, 'as', str(alias)))
      const source = { name: alias, columns: ROW2 }
      sources.push(source)
      joinable.push(source)
      if (kind === 'crossJoinLateral') return { q: this.#call(q, kind, target), kind }
      const on = this.#chance(0.6) ? lambda('join', this.#call(slot('join'), 'onTrue')) : lambda('join', this.#call(slot('join'), 'onRef', str(`${alias}.id`), str('='), str(this.#intRef({ ...scope, sources: joinable }, false))))
      return { q: this.#call(q, kind, target, on), kind }
    }
    const previous = [...joinable]
    const item = tie ? this.#table(scope, taken, { tenantOnly: true }) : this.#fromItem(scope, taken)
    sources.push(item.source)
    joinable.push(item.source)
    if (kind === 'crossJoin') return { q: this.#call(q, kind, item.arg), kind }
    const here: ExprScope = { ...scope, sources: [item.source] }
    const before: ExprScope = { ...scope, sources: previous }
    const mine = tie ? `${item.source.name}.id` : this.#intRef(here, false)
    const theirs = tie ? `${previous.at(-1)!.name}.id` : this.#intRef(before, false)
    // FULL JOIN needs a merge- or hash-joinable condition: equalities only.
    const form = this.#weighted([[45, 'three'], [30, 'callback'], [tie ? 0 : 8, 'onTrue'], [kind === 'fullJoin' ? 0 : 17, 'on expression']] as const)
    this.#feature(`join:${form}`)
    if (form === 'three') return { q: this.#call(q, kind, item.arg, str(mine), str(theirs)), kind }
    if (form === 'onTrue') return { q: this.#call(q, kind, item.arg, lambda('join', this.#call(slot('join'), 'onTrue'))), kind }
    let on = this.#call(slot('join'), 'onRef', str(mine), str('='), str(theirs))
    const both: ExprScope = { ...scope, sources: [...previous, item.source] }
    if (form === 'on expression' || (kind !== 'fullJoin' && this.#chance(0.4))) {
      on = this.#weighted([
        [4, () => this.#call(on, 'on', lambda('eb', this.#bool(both)))],
        [2, () => this.#call(on, 'on', str(this.#intRef(here, false)), str('='), this.#pick([raw('1 or true'), raw('2 or ', { ref: theirs }, ' > 1')]))],
        [2, () => this.#call(on, 'on', this.#rawOr(both))],
        [2, () => this.#call(on, 'on', str(this.#column(both, undefined, false).ref), str('is not'), NULL)],
      ] as const)()
    }
    return { q: this.#call(q, kind, item.arg, lambda('join', on)), kind }
  }

  // ---- WITH -------------------------------------------------------------------

  /** `db.with(…)` / `db.withRecursive(…)` on `start`; returns the new start and the CTEs the statement sees. */
  #with (start: Piece, scope: Scope, dml: boolean): { start: Piece, ctes: Cte[] } {
    const recursive = this.#chance(0.2)
    const count = this.#int(1, 2)
    const names: string[] = []
    for (let i = 0; i < count; i++) {
      const tenantName = this.#pick(['student', 'tag', 'course'] as const)
      names.push(this.#chance(0.2) && !names.includes(tenantName) ? tenantName : `w${i}`)
    }
    if (names.some((name) => name in COLUMNS)) this.#feature('cte:named like a tenant table')
    let out = start
    names.forEach((name, i) => {
      const pickable = scope.ctes.filter((cte) => !names.includes(cte.name))
      // Earlier CTEs are visible to a body; with RECURSIVE all are (and shadow
      // the tables of the same name), but only the earlier ones are read.
      const visible: Cte[] = [...pickable, ...names.slice(0, i).map((n) => ({ name: n, pickable: true })), ...(recursive ? names.slice(i).map((n) => ({ name: n, pickable: false })) : [])]
      const bodyScope: Scope = { ctes: visible, outer: [], depth: scope.depth + 1, inCte: true }
      let body: Piece
      let label = name
      const kind = this.#weighted([[dml ? 30 : 0, 'dml'], [recursive ? 45 : 0, 'recursive'], [55, 'select']] as const)
      if (kind === 'dml') {
        this.#feature('cte:data-modifying')
        body = this.#weighted([
          [4, () => this.#update(bodyScope, DB, true).piece],
          [3, () => this.#delete(bodyScope, DB, true).piece],
          [3, () => this.#insert(bodyScope, DB, true).piece],
        ] as const)()
      } else if (kind === 'recursive') {
        this.#feature('cte:recursive self-reference')
        label = `${name}(id, txt)`
        const base = this.#select(bodyScope, 'row2', DB, { arm: true })
        const alias = this.#alias('r')
        let term = this.#call(DB, 'selectFrom', str(`${name} as ${alias}`))
        let text = `${alias}.txt as txt`
        if (this.#chance(0.5)) {
          const table = this.#table(bodyScope, new Set([alias]), { tenantOnly: true, aliased: true })
          term = this.#call(term, 'innerJoin', table.arg, str(`${table.source.name}.id`), str(`${alias}.id`))
          text = `${table.source.name}.${TEXT_COLUMN[table.source.table!]} as txt`
        }
        term = this.#call(term, 'select', lambda('eb', list([call(apply(EB, str(`${alias}.id`), str('+'), num(1)), 'as', str('id')), str(text)])))
        term = this.#call(term, 'where', str(`${alias}.id`), str('<'), num(4))
        body = this.#call(base.piece, 'unionAll', term)
      } else {
        body = this.#select(bodyScope, 'row2', DB).piece
      }
      const method = recursive ? 'withRecursive' : 'with'
      if (!recursive && this.#chance(0.1)) {
        this.#feature('cte:materialized')
        const materialized = this.#pick(['materialized', 'notMaterialized'])
        out = this.#call(out, method, lambda('cte', this.#call(apply(slot('cte'), str(label)), materialized)), dbLambda(body))
      } else {
        out = this.#call(out, method, str(label), dbLambda(body))
      }
    })
    return { start: out, ctes: [...scope.ctes.filter((cte) => !names.includes(cte.name)), ...names.map((name) => ({ name, pickable: true }))] }
  }

  // ---- SELECT -----------------------------------------------------------------

  /**
   * A select query. `start` is `db` (or a `db.with(…)` chain) or `eb`.
   * Shapes: `top` any columns; `row2` (id int, txt text); `int1` one int
   * column; `scalar` one row, one int column; `exists` anything.
   */
  #select (outerScope: Scope, shape: Shape, start: Piece, options: { arm?: boolean, newIds?: boolean } = {}): { piece: Piece, start: Piece, columns: number, ordered: boolean } {
    const arm = options.arm === true
    let scope = outerScope
    if (scope.depth > 0 || arm) this.#nested++
    if (start === DB && (scope.depth > 0 || arm) && scope.inCte !== true) {
      // A builder made from the tenancy's db is rewritten on its own first,
      // where the CTEs of the statement around it are unknown: one named like
      // no table is refused (TENANCY_UNKNOWN_TABLE), now and then; one named
      // like a tenant table is confined as that table and then fails on the
      // CTE's missing iid, so it is left out.
      const keep = this.#chance(0.1)
      scope = { ...scope, ctes: scope.ctes.map((cte) => ({ ...cte, pickable: keep && !(cte.name in COLUMNS) && cte.pickable })) }
    }
    let q = start
    let ctes = scope.ctes
    if (start === DB && !arm && scope.depth > 0 && this.#room() && this.#chance(0.06)) {
      const withed = this.#with(DB, scope, false)
      q = withed.start
      ctes = withed.ctes
    }
    const inner: Scope = { ctes, outer: scope.outer, depth: scope.depth }
    const setOp = !arm && (shape === 'top' || shape === 'row2') && this.#room() && this.#chance(0.1)
    const effective: Shape = setOp ? 'row2' : shape
    if (effective === 'top' && this.#chance(0.03)) {
      this.#feature('selectNoFrom')
      const es: ExprScope = { ...inner, sources: [] }
      const items = [call(this.#subquery(es, 'scalar', true), 'as', str('c0')), call(this.#call(EB, 'exists', this.#subquery(es, 'exists', true)), 'as', str('c1'))]
      return { piece: this.#call(q, 'selectNoFrom', lambda('eb', list(items))), start, columns: 2, ordered: false }
    }
    const taken = new Set<string>()
    const sources: Source[] = []
    const first = this.#fromItem(inner, taken)
    sources.push(first.source)
    if (this.#chance(0.12)) {
      const second = this.#fromItem(inner, taken)
      sources.push(second.source)
      this.#feature('selectFrom:list')
      q = this.#call(q, 'selectFrom', list([first.arg, second.arg]))
    } else {
      q = this.#call(q, 'selectFrom', first.arg)
    }
    let outerJoin = false
    const joinable = [sources.at(-1)!]
    const joins = scope.depth === 0 ? this.#weighted([[45, 0], [33, 1], [15, 2], [7, 3]] as const) : this.#weighted([[65, 0], [28, 1], [7, 2]] as const)
    for (let i = 0; i < joins; i++) {
      const joined = this.#join(q, 'select', inner, sources, joinable, taken, false)
      q = joined.q
      if (!['innerJoin', 'crossJoin', 'innerJoinLateral', 'crossJoinLateral'].includes(joined.kind)) outerJoin = true
    }
    const es: ExprScope = { ...inner, sources }
    const wheres = scope.depth === 0 ? this.#weighted([[28, 0], [45, 1], [21, 2], [6, 3]] as const) : this.#weighted([[45, 0], [45, 1], [10, 2]] as const)
    for (let i = 0; i < wheres; i++) q = this.#where(q, es)

    // The select list.
    let columns = 0
    let grouped = false
    let distinctOn: string | undefined
    const local: ExprScope = { ...es, outer: [] }
    if (effective === 'row2' || effective === 'int1') {
      const id = options.newIds === true
        ? call(apply(EB, str(this.#intRef(es)), str('+'), num(100)), 'as', str('id'))
        : this.#chance(0.8) ? str(`${this.#intRef(es)} as id`) : call(this.#call(prop(EB, 'fn'), 'coalesce', str(this.#intRef(es)), this.#call(EB, 'lit', num(0))), 'as', str('id'))
      const items = effective === 'row2' ? [id, str(`${this.#column(es, 'text').ref} as txt`)] : [id]
      if (effective === 'row2' && options.newIds !== true && this.#chance(0.1)) {
        // GROUP BY what is selected.
        grouped = true
        const a = this.#intRef(local, false)
        const b = this.#column(local, 'text', false).ref
        q = this.#call(q, 'groupBy', list([str(a), str(b)]))
        q = this.#call(q, 'select', list([str(`${a} as id`), str(`${b} as txt`)]))
        if (this.#chance(0.5)) q = this.#having(q, local)
      } else {
        q = this.#call(q, 'select', items.every((item) => !item.code.includes('eb')) && this.#chance(0.5) ? list(items) : lambda('eb', list(items)))
      }
      columns = items.length
    } else if (effective === 'scalar') {
      q = this.#call(q, 'select', lambda('eb', list([call(this.#call(prop(EB, 'fn'), this.#pick(['max', 'min', 'count']), str(this.#intRef(local, false))), 'as', str('m'))])))
      columns = 1
    } else if (effective === 'exists') {
      q = this.#weighted([
        [3, () => this.#call(q, 'select', call(raw('1'), 'as', str('one')))],
        [2, () => this.#call(q, 'select', str(`${this.#column(es).ref} as x`))],
        [1, () => this.#call(q, 'selectAll')],
      ] as const)()
      columns = 1
    } else {
      const mode = this.#weighted([[55, 'plain'], [12, 'all'], [10, 'aggregate'], [15, 'group']] as const)
      this.#feature(`select:${mode}`)
      if (mode === 'plain') {
        const n = this.#int(1, 4)
        const items = Array.from({ length: n }, (_, i) => this.#selection(es, `c${i}`, true))
        columns = n
        if (this.#chance(0.3) && items.every((item) => !item.code.includes('eb') && !item.code.includes('sql'))) q = this.#call(q, 'select', n === 1 ? items[0]! : list(items))
        else if (n > 1 && this.#chance(0.3)) {
          q = this.#call(q, 'select', lambda('eb', list(items.slice(0, 1))))
          q = this.#call(q, 'select', lambda('eb', list(items.slice(1))))
        } else q = this.#call(q, 'select', lambda('eb', list(items)))
        if (this.#chance(0.06)) {
          distinctOn = this.#column(local, undefined, false).ref
          q = this.#call(q, 'distinctOn', this.#chance(0.5) ? str(distinctOn) : list([str(distinctOn)]))
        } else if (this.#chance(0.08)) q = this.#call(q, 'distinct')
      } else if (mode === 'all') {
        const which = this.#weighted([[3, 'all'], [2, 'one'], [1, 'list']] as const)
        if (which === 'all') {
          q = this.#call(q, 'selectAll')
          columns = sources.reduce((sum, source) => sum + source.columns.length, 0)
        } else if (which === 'one') {
          const source = this.#pick(sources)
          q = this.#call(q, 'selectAll', str(source.name))
          columns = source.columns.length
        } else {
          q = this.#call(q, 'selectAll', list(sources.map((source) => str(source.name))))
          columns = sources.reduce((sum, source) => sum + source.columns.length, 0)
        }
        if (this.#chance(0.08)) q = this.#call(q, 'distinct')
      } else if (mode === 'aggregate') {
        const n = this.#int(1, 3)
        q = this.#call(q, 'select', lambda('eb', list(Array.from({ length: n }, (_, i) => this.#aggregate(es, `c${i}`)))))
        columns = n
        grouped = true
      } else {
        grouped = true
        const keys = Array.from({ length: this.#int(1, 2) }, () => this.#column(local, undefined, false).ref)
        q = this.#call(q, 'groupBy', keys.length === 1 && this.#chance(0.5) ? str(keys[0]!) : list(keys.map(str)))
        const n = this.#int(0, 2)
        q = this.#call(q, 'select', lambda('eb', list([...keys.map((key, i) => str(`${key} as g${i}`)), ...Array.from({ length: n }, (_, i) => this.#aggregate(es, `c${i}`))])))
        columns = keys.length + n
        if (this.#chance(0.45)) q = this.#having(q, local)
      }
    }

    if (setOp) {
      const op = this.#pick(['union', 'unionAll', 'intersect', 'intersectAll', 'except', 'exceptAll'])
      const other = this.#select(inner, 'row2', this.#chance(0.5) ? EB : DB, { arm: true, newIds: options.newIds })
      q = this.#call(q, op, other.start === EB ? lambda('eb', other.piece) : other.piece)
      this.#feature(`setop:${op}`)
    }

    let ordered = false
    if (!arm && (effective === 'top' || effective === 'row2' || effective === 'int1')) {
      const limit = this.#chance(0.15)
      if (distinctOn !== undefined) q = this.#call(q, 'orderBy', str(distinctOn))
      if (limit || distinctOn !== undefined || this.#chance(0.1)) {
        // Every output column, so that LIMIT and DISTINCT ON pick the same rows on both sides.
        for (let i = 1; i <= columns; i++) {
          const direction = this.#weighted([[3, 'none'], [1, 'desc'], [1, 'asc'], [1, 'modifiers']] as const)
          this.#feature(`orderBy:${direction}`)
          if (direction === 'none') q = this.#call(q, 'orderBy', raw(String(i)))
          else if (direction === 'modifiers') q = this.#call(q, 'orderBy', raw(String(i)), lambda('ob', call(call(slot('ob'), this.#pick(['asc', 'desc'])), this.#pick(['nullsFirst', 'nullsLast']))))
          else q = this.#call(q, 'orderBy', raw(String(i)), str(direction))
        }
        ordered = true
      } else if (!grouped && !setOp && this.#chance(0.15)) {
        q = this.#room() && this.#chance(0.3)
          ? this.#call(q, 'orderBy', lambda('eb', this.#select(this.#child(es), 'scalar', EB).piece))
          : this.#call(q, 'orderBy', str(this.#column(local, undefined, false).ref))
      }
      if (limit) {
        const form = this.#weighted([[4, 'limit'], [2, 'offset'], [2, 'limit offset'], [1, 'fetch']] as const)
        if (form === 'fetch') q = this.#call(this.#call(q, 'offset', num(this.#int(0, 2))), 'fetch', num(this.#int(1, 3)))
        else {
          if (form !== 'offset') {
            // LIMIT (select …) too: a query there is as much a query as anywhere.
            q = this.#room() && this.#chance(0.15)
              ? this.#call(q, 'limit', lambda('eb', this.#select({ ...this.#child(es), outer: [] }, 'scalar', EB).piece))
              : this.#call(q, 'limit', num(this.#int(1, 4)))
          }
          if (form !== 'limit') q = this.#call(q, 'offset', num(this.#int(1, 3)))
        }
      }
    }

    // Locks: not with outer joins, grouping, DISTINCT or set operations; OF the first table.
    if (!arm && scope.depth === 0 && !outerJoin && !grouped && !setOp && distinctOn === undefined && !q.code.includes('.distinct(') && !q.code.includes('.over(') && first.source.table !== undefined && this.#chance(0.12)) {
      const strength = this.#pick(['forUpdate', 'forShare', 'forNoKeyUpdate', 'forKeyShare'])
      if (this.#chance(0.15) && sources.every((source) => source.table !== undefined)) {
        q = this.#call(q, 'modifyEnd', raw('for update'))
      } else {
        // Without OF every FROM item is locked, which a grouped derived table cannot be.
        const of = this.#chance(0.7) || !sources.every((source) => source.table !== undefined)
        q = this.#call(q, strength, ...(of ? [str(first.source.name)] : []))
        if (this.#chance(0.4)) q = this.#call(q, this.#pick(['skipLocked', 'noWait']))
      }
    }
    return { piece: q, start, columns, ordered }
  }

  #having (q: Piece, es: ExprScope): Piece {
    const fn = prop(EB, 'fn')
    const form = this.#weighted([[3, 'count'], [2, 'or raw'], [1, 'ref'], [this.#room() ? 1 : 0, 'subquery']] as const)
    this.#feature(`having:${form}`)
    if (form === 'count') return this.#call(q, 'having', lambda('eb', apply(EB, this.#call(fn, 'countAll'), str('>'), num(this.#int(0, 1)))))
    if (form === 'or raw') {
      this.#feature('raw:or')
      return this.#call(q, 'having', raw('count(*) > ', { value: this.#int(1, 3) }, ' or true'))
    }
    if (form === 'ref') {
      const key = this.#column(es, undefined, false).ref
      return this.#call(q, 'havingRef', str(key), str('='), str(key))
    }
    return this.#call(q, 'having', lambda('eb', apply(EB, this.#call(fn, 'max', str(this.#intRef(es, false))), str('in'), this.#subquery(es, 'int1', true))))
  }

  // ---- writes ------------------------------------------------------------------

  /** The other instance ids (and host), for writes that must be refused. */
  #foreignIid (): Piece {
    const others = [1, 2, 3, 4].filter((id) => id !== this.#id)
    return this.#id === null || this.#chance(0.8) ? num(this.#pick(others)) : NULL
  }

  /** A value for the tenant column in SET / VALUES: mostly the current one, else another, or one that cannot be checked. */
  #iidValue (): Piece {
    const current = this.#id === null ? NULL : num(this.#id)
    return this.#weighted([
      [4, () => { this.#feature('iid:current'); return current }],
      [4, () => { this.#feature('iid:other'); return this.#foreignIid() }],
      [2, () => { this.#feature('iid:raw'); return raw(String(this.#id ?? 'null')) }],
    ] as const)()
  }

  /** A value for column `column` of a write; `eb` in scope when `inEb`. */
  #writeValue (column: Column, es: ExprScope, tied: readonly Source[], inEb: boolean): Piece {
    const target = es.sources[0]!
    const tiedColumns = tied.flatMap((source) => source.columns.filter((c) => c.type === column.type && c.name !== 'iid').map((c) => `${source.name}.${c.name}`))
    const kind = this.#weighted([
      [30, 'literal'], [12, 'raw'], [this.#room() ? 10 : 0, 'subquery'], [tiedColumns.length > 0 ? 14 : 0, 'from column'], [8, 'own column'], [column.type === 'int' ? 4 : 0, 'null'],
    ] as const)
    this.#feature(`value:${kind}`)
    switch (kind) {
      case 'literal': return column.type === 'int' ? num(this.#int(1, 3)) : str(this.#pick(['changed', 'x', 'role 9']))
      case 'raw':
        return column.type === 'int'
          ? raw({ ref: `${target.name}.${column.name}` }, ' + 1')
          : raw({ ref: `${target.name}.${column.name}` }, " || '!'")
      case 'subquery': {
        const sub = this.#select(this.#child(es), 'scalar', DB)
        return sub.piece
      }
      case 'from column': {
        const ref = this.#call(EB, 'ref', str(this.#pick(tiedColumns)))
        return inEb ? ref : lambda('eb', ref)
      }
      case 'own column': {
        const ref = this.#call(EB, 'ref', str(`${target.name}.${column.name}`))
        return inEb ? ref : lambda('eb', ref)
      }
      case 'null': return NULL
    }
  }

  /** One `.set(…)` call in one of its forms. */
  #set (q: Piece, es: ExprScope, tied: readonly Source[], used: Set<string>): Piece {
    const target = es.sources[0]!
    const table = target.table!
    const writable = COLUMNS[table].filter((column) => column.name !== 'id' && column.name !== 'iid' && column.name !== 'code' && !used.has(column.name))
    const iid = table !== 'country' && !used.has('iid') && (writable.length === 0 || this.#chance(0.08))
    if (!iid && writable.length === 0) return q
    const column = iid ? int('iid') : this.#pick(writable)
    used.add(column.name)
    // Raw text that goes on into another assignment of the SET list, setting iid to another instance.
    const more = table !== 'country' && !iid ? 2 : 0
    const form = this.#weighted([[30, 'object'], [10, 'object callback'], [25, 'two-arg'], [15, 'callback key'], [6, 'raw key'], [4, 'sql.ref key'],
      [more, 'raw key, more of the list'], [more, 'raw value, more of the list']] as const)
    this.#feature(`set:${form}`)
    if (iid) this.#feature(`set iid:${form}`)
    const value = (inEb: boolean): Piece => iid ? this.#iidValue() : this.#writeValue(column, es, tied, inEb)
    switch (form) {
      case 'object': return this.#call(q, 'set', record([[column.name, value(false)]]))
      case 'object callback': {
        const object = record([[column.name, value(true)]])
        return this.#call(q, 'set', lambda('eb', piece(`(${object.code})`, object.make)))
      }
      case 'two-arg': return this.#call(q, 'set', str(column.name), value(false))
      case 'callback key': return this.#call(q, 'set', lambda('eb', this.#call(EB, 'ref', str(column.name))), value(false))
      case 'raw key': {
        // PostgreSQL folds unquoted names to lower case and skips comments: all of these name the column.
        const spelling = this.#pick([column.name, column.name.toUpperCase(), `"${column.name}"`, `/* c */ ${column.name}`])
        return this.#call(q, 'set', raw(spelling), value(false))
      }
      case 'sql.ref key': return this.#call(q, 'set', piece(`sql.ref('${column.name}')`, () => sql.ref(column.name)), value(false))
      case 'raw key, more of the list': {
        const other = this.#pick([1, 2, 3, 4].filter((id) => id !== this.#id))
        return this.#call(q, 'set', raw(`${column.name} = ${column.name}, iid`), num(other))
      }
      case 'raw value, more of the list': {
        const other = this.#pick([1, 2, 3, 4].filter((id) => id !== this.#id))
        return this.#call(q, 'set', record([[column.name, raw(`${column.name}, iid = ${other}`)]]))
      }
    }
  }

  /** RETURNING: target columns, tied sources' columns, subqueries, or all. */
  #returning (q: Piece, es: ExprScope, tied: readonly Source[], cte: boolean, allAllowed: boolean): Piece {
    const target = es.sources[0]!
    if (cte) {
      // A data-modifying CTE returns the (id, txt) of every CTE.
      const items = target.table === 'country'
        ? [call(apply(prop(EB, 'fn'), str('length'), list([str(`${target.name}.code`)])), 'as', str('id')), str(`${target.name}.name as txt`)]
        : [str(`${target.name}.id as id`), str(`${target.name}.${TEXT_COLUMN[target.table!]} as txt`)]
      return this.#call(q, 'returning', target.table === 'country' ? lambda('eb', list(items)) : list(items))
    }
    if (allAllowed && this.#chance(0.2)) return this.#call(q, 'returningAll')
    const visible: ExprScope = { ...es, sources: [target, ...tied], outer: [] }
    const n = this.#int(1, 3)
    // No window functions in RETURNING.
    const items = Array.from({ length: n }, (_, i) => this.#selection(visible, `r${i}`, true, false))
    if (items.every((item) => !item.code.includes('eb') && !item.code.includes('sql')) && this.#chance(0.5)) return this.#call(q, 'returning', list(items))
    return this.#call(q, 'returning', lambda('eb', list(items)))
  }

  /** The target of a write: a table, named in any of the ways a table can be. */
  #writeTarget (scope: Scope, taken: Set<string>, insert: boolean): { arg: Piece, source: Source } {
    const table = this.#tableName()
    if (!insert) return this.#table(scope, taken, { table })
    // INSERT takes no alias.
    const shadowed = scope.ctes.some((cte) => cte.name === table)
    const form = shadowed || this.#chance(0.25) ? 'qualified bare' : 'bare'
    this.#feature(`insert:${form}`)
    taken.add(table)
    return { arg: form === 'bare' ? str(table) : qualified(table), source: { name: table, columns: COLUMNS[table], table } }
  }

  /** FROM (UPDATE) / USING (DELETE) items and joins; `tied` sources are joined on `id` to the target, one row each. */
  #writeFrom (q: Piece, method: 'from' | 'using', statement: string, scope: Scope, sources: Source[], taken: Set<string>): { q: Piece, tied: Source[] } {
    const tie = this.#chance(0.5)
    if (tie) this.#feature(`${statement}:tied ${method}`)
    const target = sources[0]!
    const count = this.#chance(0.2) ? 2 : 1
    const items = Array.from({ length: count }, () => tie ? this.#table(scope, taken, { tenantOnly: true }) : this.#fromItem(scope, taken))
    for (const item of items) sources.push(item.source)
    q = this.#call(q, method, count === 1 ? items[0]!.arg : list(items.map((item) => item.arg)))
    if (count > 1) this.#feature(`${method}:list`)
    const joins = this.#weighted([[50, 0], [35, 1], [15, 2]] as const)
    const joinable = [items.at(-1)!.source]
    for (let i = 0; i < joins; i++) q = this.#join(q, statement, scope, sources, joinable, taken, tie).q
    if (tie && target.table !== 'country') {
      for (const item of items) q = this.#call(q, 'whereRef', str(`${item.source.name}.id`), str('='), str(`${target.name}.id`))
    } else if (tie) {
      return { q, tied: [] }
    }
    return { q, tied: tie ? sources.slice(1) : [] }
  }

  #update (scope: Scope, start: Piece, cte: boolean): { piece: Piece } {
    const taken = new Set<string>()
    const target = this.#writeTarget(scope, taken, false)
    const sources: Source[] = [target.source]
    let q = this.#call(start, 'updateTable', target.arg)
    let tied: Source[] = []
    const sets = this.#weighted([[70, 1], [25, 2], [5, 3]] as const)
    const es = (): ExprScope => ({ ...scope, sources })
    // SET first in the code, as usual; FROM may come after it.
    const pending: Array<(p: Piece) => Piece> = []
    const used = new Set<string>()
    // SET reads the target and the tied sources only: one row each, so the value is the same on both sides.
    for (let i = 0; i < sets; i++) pending.push((p) => this.#set(p, { ...scope, sources: [target.source, ...tied] }, tied, used))
    if (this.#chance(0.45)) {
      const from = this.#writeFrom(q, 'from', 'update', scope, sources, taken)
      q = from.q
      tied = from.tied
    }
    for (const add of pending) q = add(q)
    const wheres = this.#weighted([[15, 0], [55, 1], [25, 2], [5, 3]] as const)
    for (let i = 0; i < wheres; i++) q = this.#where(q, es())
    if (cte || this.#chance(0.5)) q = this.#returning(q, es(), tied, cte, sources.length === 1 || tied.length === sources.length - 1)
    return { piece: q }
  }

  #delete (scope: Scope, start: Piece, cte: boolean): { piece: Piece } {
    const taken = new Set<string>()
    const target = this.#writeTarget(scope, taken, false)
    const sources: Source[] = [target.source]
    let q = this.#call(start, 'deleteFrom', target.arg)
    let tied: Source[] = []
    if (this.#chance(0.45)) {
      const using = this.#writeFrom(q, 'using', 'delete', scope, sources, taken)
      q = using.q
      tied = using.tied
    }
    const es: ExprScope = { ...scope, sources }
    const wheres = this.#weighted([[10, 0], [55, 1], [28, 2], [7, 3]] as const)
    for (let i = 0; i < wheres; i++) q = this.#where(q, es)
    if (cte || this.#chance(0.5)) q = this.#returning(q, es, tied, cte, sources.length === 1 || tied.length === sources.length - 1)
    return { piece: q }
  }

  #insertRow (table: TableName, es: ExprScope, inEb: boolean, collide: boolean): Piece {
    const entries: Array<readonly [string, Piece]> = []
    // Keys that exist (in this instance or, for tag, in another) only where ON CONFLICT meets them.
    const ids: Record<TableName, number[]> = collide
      ? { student: [1, 2, 5, 20], course: [1, 3, 20], role: [1, 7, 20], tag: [1, 2, 4, 5, 7, 20], country: [] }
      : { student: [5, 20, 21, 22], course: [4, 20, 21, 22], role: [1, 7, 20], tag: [20, 21, 22, 23], country: [] }
    if (table === 'country') entries.push(['code', str(this.#pick(collide ? ['fr', 'it', 'es'] : ['it', 'es', 'nl']))])
    else entries.push(['id', num(this.#pick(ids[table]))])
    const text = TEXT_COLUMN[table]
    const value = this.#weighted([
      [6, () => str(this.#pick(['new', 'inserted']))],
      [2, () => raw(`'raw ' || ${this.#int(1, 9)}`)],
      [this.#room() ? 2 : 0, () => { this.#feature('values:subquery'); return this.#select({ ...es, outer: [], depth: es.depth + 1 }, 'scalar', DB).piece }],
      [inEb ? 1 : 0, () => this.#call(EB, 'val', str('from eb'))],
    ] as const)()
    entries.push([text, value])
    if (table === 'student' && this.#chance(0.4)) entries.push(['course_id', this.#chance(0.7) ? num(this.#int(1, 3)) : NULL])
    if (table !== 'country' && this.#chance(0.08)) {
      this.#feature('values:iid')
      entries.push(['iid', this.#iidValue()])
    }
    return record(entries)
  }

  #insert (scope: Scope, start: Piece, cte: boolean): { piece: Piece } {
    const taken = new Set<string>()
    const target = this.#writeTarget(scope, taken, true)
    const table = target.source.table!
    const es: ExprScope = { ...scope, sources: [] }
    let q = this.#call(start, 'insertInto', target.arg)
    const mode = this.#weighted([[55, 'values'], [8, 'values callback'], [28, 'expression'], [3, 'defaultValues']] as const)
    const conflict = mode !== 'defaultValues' && this.#chance(table === 'role' ? 0.15 : 0.4)
    this.#feature(`insert:${mode}`)
    if (mode === 'values' || mode === 'values callback') {
      const inEb = mode === 'values callback'
      const rows = this.#weighted([[70, 1], [20, 2], [10, 3]] as const)
      const items = Array.from({ length: rows }, () => this.#insertRow(table, es, inEb, conflict))
      const value = rows === 1 && this.#chance(0.6) ? items[0]! : list(items)
      q = this.#call(q, 'values', inEb ? lambda('eb', value.code.startsWith('{') ? piece(`(${value.code})`, value.make) : value) : value)
    } else if (mode === 'expression') {
      const columns = table === 'country' ? ['code', 'name'] : ['id', TEXT_COLUMN[table]]
      q = this.#call(q, 'columns', list(columns.map(str)))
      // New keys: the source's ids moved out of the existing range.
      const sub = this.#select({ ...scope, depth: scope.depth + 1 }, 'row2', this.#chance(0.5) ? EB : DB, { newIds: true })
      q = this.#call(q, 'expression', sub.start === EB ? lambda('eb', sub.piece) : sub.piece)
    } else {
      q = this.#call(q, 'defaultValues')
    }
    if (conflict) q = this.#onConflict(q, table, scope)
    if (cte || this.#chance(0.45)) {
      if (cte) q = this.#returning(q, { ...es, sources: [target.source] }, [], true, false)
      else q = this.#returning(q, { ...scope, sources: [target.source] }, [], false, true)
    }
    return { piece: q }
  }

  #onConflict (q: Piece, table: TableName, scope: Scope): Piece {
    const oc = slot('oc')
    // A view has no constraints of its own: the oracle names the key's columns.
    const constraint = (): Piece => {
      this.#feature('constraint')
      const columns = table === 'tag' ? ['id'] : table === 'country' ? ['code'] : ['iid', 'id']
      return piece(`oc.constraint('${table}_pkey')`, (c, s) => c.conflictIid !== undefined ? s.columns(columns) : s.constraint(`${table}_pkey`))
    }
    let target: Piece
    if (table === 'role') {
      target = oc
    } else if (table === 'tag' || table === 'country') {
      const key = table === 'tag' ? 'id' : 'code'
      target = this.#weighted([[4, () => this.#call(oc, 'column', str(key))], [1, () => this.#call(oc, 'columns', list([str(key)]))], [1, constraint]] as const)()
    } else {
      target = this.#weighted([[4, () => this.#call(oc, 'columns', list([str('iid'), str('id')]))], [1, constraint]] as const)()
    }
    if (table !== 'role' && !target.code.includes('constraint') && this.#chance(0.1)) target = this.#call(target, 'where', str(table === 'country' ? 'code' : 'id'), str('is not'), NULL)
    if (table === 'role' || this.#chance(0.25)) return this.#call(q, 'onConflict', lambda('oc', this.#call(target, 'doNothing')))
    const text = TEXT_COLUMN[table]
    const source: Source = { name: table, columns: COLUMNS[table], table }
    const es: ExprScope = { ctes: scope.ctes, outer: [], depth: scope.depth + 1, inCte: scope.inCte, sources: [source] }
    const entries: Array<readonly [string, Piece]> = []
    let usesEb = false
    const value = this.#weighted([
      [4, () => { usesEb = true; return this.#call(EB, 'ref', str(`excluded.${text}`)) }],
      [3, () => str('upserted')],
      [3, () => raw({ ref: `${table}.${text}` }, " || '+'")],
      [this.#room() ? 1 : 0, () => this.#select(this.#child(es), 'scalar', DB).piece],
    ] as const)()
    entries.push([text, value])
    if (this.#chance(0.1)) {
      this.#feature('doUpdateSet:iid')
      entries.push(['iid', this.#iidValue()])
    }
    const object = record(entries)
    let update = this.#call(target, 'doUpdateSet', !usesEb && this.#chance(0.5) ? object : lambda('eb', piece(`(${object.code})`, object.make)))
    if (this.#chance(0.35)) {
      this.#feature('doUpdateSet:where')
      // The oracle ANDs its own predicate to the user's condition, which it
      // must keep whole: PostgreSQL reads `a or b and c` as `a or (b and c)`.
      const whole = (condition: Piece, raw: boolean): Piece => piece(condition.code, (c, s) => {
        const built = condition.make(c, s)
        if (c.conflictIid === undefined) return built
        return raw ? sql`(${built})` : s.parens(built)
      })
      update = this.#weighted([
        [2, () => this.#call(update, 'where', str(`${table}.${text}`), str('<>'), str('never'))],
        [2, () => this.#call(update, 'where', lambda('eb', whole(this.#bool(es, 1), false)))],
        [1, () => this.#call(update, 'whereRef', str(`excluded.${text}`), str('<>'), str(`${table}.${text}`))],
        [1, () => { this.#feature('raw:or'); return this.#call(update, 'where', whole(raw({ ref: `${table}.id` }, ' > 0 or true'), true)) }],
      ] as const)()
    }
    // The oracle's view cannot hide the conflicting row from DO UPDATE: the hand filter goes here.
    const oracled = piece(update.code, (c, s) => {
      const built = update.make(c, s)
      if (c.conflictIid === undefined || table === 'country') return built
      return c.conflictIid === null ? built.where(`${table}.iid`, 'is', null) : built.where(`${table}.iid`, '=', c.conflictIid)
    })
    return this.#call(q, 'onConflict', lambda('oc', oracled))
  }

  #merge (start: Piece): { piece: Piece } {
    const taken = new Set<string>()
    const scope: Scope = { ctes: [], outer: [], depth: 0 }
    const target = this.#table(scope, taken, { aliased: true })
    const source = this.#table(scope, taken, { aliased: true })
    const key = (s: Source): string => `${s.name}.${s.table === 'country' ? 'code' : 'id'}`
    let q = this.#call(start, 'mergeInto', target.arg)
    q = this.#call(q, 'using', source.arg, str(key(source.source)), str(key(target.source)))
    if (this.#chance(0.5)) q = this.#call(this.#call(q, 'whenMatched'), 'thenDelete')
    else q = this.#call(this.#call(q, 'whenMatched'), 'thenUpdateSet', record([[TEXT_COLUMN[target.source.table!], str('merged')]]))
    return { piece: q }
  }

  /** One top-level statement. */
  statement (): { piece: Piece, statement: GeneratedStatement['statement'], ordered: boolean } {
    const statement = this.#weighted([[42, 'select'], [20, 'update'], [15, 'delete'], [21, 'insert'], [2, 'merge']] as const)
    let start = DB
    if (this.#chance(0.04)) {
      this.#feature('withSchema')
      start = piece("db.withSchema('public')", (c) => c.db.withSchema(c.schema))
    }
    let scope: Scope = { ctes: [], outer: [], depth: 0 }
    if (statement !== 'merge' && this.#chance(0.15)) {
      const withed = this.#with(start, scope, true)
      start = withed.start
      scope = { ...scope, ctes: withed.ctes }
    }
    switch (statement) {
      case 'select': {
        const built = this.#select(scope, 'top', start)
        return { piece: built.piece, statement, ordered: built.ordered }
      }
      case 'update': return { piece: this.#update(scope, start, false).piece, statement, ordered: false }
      case 'delete': return { piece: this.#delete(scope, start, false).piece, statement, ordered: false }
      case 'insert': return { piece: this.#insert(scope, start, false).piece, statement, ordered: false }
      case 'merge': return { piece: this.#merge(start).piece, statement, ordered: false }
    }
  }
}

type Shape = 'top' | 'row2' | 'int1' | 'scalar' | 'exists'

/**
 * `count` statements from `seed` (fast-check's generator: the same seed gives
 * the same statements). About one in eight runs in host context.
 */
export function generateStatements (seed: number, count: number): GeneratedStatement[] {
  const draws = fc.sample(fc.record({ seed: fc.integer(), host: fc.integer({ min: 0, max: 99 }), instance: fc.constantFrom(...INSTANCES) }), { seed, numRuns: count })
  return draws.map((draw, index) => {
    const host = draw.host < 12
    const instance = draw.instance
    const generator = new StatementGenerator(random(draw.seed), host, host ? null : instance.id)
    const { piece: built, statement, ordered } = generator.statement()
    return {
      index,
      context: host ? { kind: 'host' } : { kind: 'instance', ...instance },
      statement,
      code: built.code,
      build: (c: BuildContext) => built.make(c, undefined) as Compilable,
      ordered,
      features: [...generator.features],
    }
  })
}
