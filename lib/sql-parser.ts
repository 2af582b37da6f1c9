/** PostgreSQL's own parser, synchronous once loaded: a statement's text to its parse tree. */
export type ParseSql = (text: string) => unknown

/** PostgreSQL's own tokenizer, synchronous once loaded: a statement's text to its tokens. */
export type ScanSql = (text: string) => { tokens: ReadonlyArray<{ tokenName: string, text: string }> }

let parser: Promise<{ parse: ParseSql, scan: ScanSql }> | undefined

/**
 * Loads PostgreSQL's parser (`libpg-query`, the server's parser compiled to
 * WebAssembly: it needs no install script) once per process and returns its
 * synchronous parse function. The module loads asynchronously, so whatever
 * needs it at query time loads it at start-up.
 *
 * ```ts
 * const parse = await loadSqlParser()
 * parse('select 1; reset role') // { version: 180000, stmts: [{ stmt: { SelectStmt: … } }, { stmt: { VariableSetStmt: … } }] }
 * ```
 */
export async function loadSqlParser (): Promise<ParseSql> {
  return (await load()).parse
}

/**
 * PostgreSQL's tokenizer, from the same module as {@link loadSqlParser}'s
 * parser: the tokens of a text, comments and quoting read as the server reads them.
 *
 * ```ts
 * const scan = await loadSqlScanner()
 * scan("select 'a;b' -- c").tokens.map((token) => token.text) // ['select', "'a;b'", '-- c']
 * ```
 */
export async function loadSqlScanner (): Promise<ScanSql> {
  return (await load()).scan
}

async function load (): Promise<{ parse: ParseSql, scan: ScanSql }> {
  parser ??= (async () => {
    const module = await import('libpg-query')
    await module.loadModule()
    return { parse: module.parseSync as ParseSql, scan: module.scanSync as ScanSql }
  })()
  return await parser
}
