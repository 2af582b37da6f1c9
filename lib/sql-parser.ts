/** PostgreSQL's own parser, synchronous once loaded: a statement's text to its parse tree. */
export type ParseSql = (text: string) => unknown

let parser: Promise<ParseSql> | undefined

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
  parser ??= (async () => {
    const module = await import('libpg-query')
    await module.loadModule()
    return module.parseSync as ParseSql
  })()
  return await parser
}
