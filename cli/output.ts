import { format } from 'node:util'

/** Exit codes of the command line. */
export const EXIT = Object.freeze({ ok: 0, failed: 1, usage: 2, interrupted: 130 })

/**
 * An error the command line reports in one line, without a stack trace
 * (unless `--verbose`), and exits with `exitCode`.
 */
export class CliError extends Error {
  readonly exitCode: number
  constructor (message: string, exitCode: number = EXIT.failed, options?: { cause?: unknown }) {
    super(message, options)
    this.exitCode = exitCode
  }
}

/** The global options every command sees. */
export interface GlobalOptions {
  config?: string
  json?: boolean
  verbose?: boolean
}

/**
 * Where a command writes: one JSON document on stdout with `--json` or when
 * stdout is not a terminal (no colours, no bars), text for a person otherwise.
 */
export class Output {
  readonly json: boolean
  readonly interactive: boolean
  readonly #colour: boolean

  constructor (options: GlobalOptions, stdout: NodeJS.WriteStream = process.stdout) {
    this.interactive = stdout.isTTY === true
    this.json = options.json === true || !this.interactive
    this.#colour = !this.json && this.interactive && process.env.NO_COLOR === undefined
  }

  /** Writes the command's one JSON document. */
  document (value: unknown): void {
    process.stdout.write(JSON.stringify(value, null, 2) + '\n')
  }

  /** Writes a line of text (nothing in JSON mode). */
  line (...args: unknown[]): void {
    if (!this.json) process.stdout.write(format(...args) + '\n')
  }

  /** Red, on a colour terminal. */
  red (text: string): string {
    return this.#colour ? `\u001b[31m${text}\u001b[39m` : text
  }

  /** Green, on a colour terminal. */
  green (text: string): string {
    return this.#colour ? `\u001b[32m${text}\u001b[39m` : text
  }

  /** Dim, on a colour terminal. */
  dim (text: string): string {
    return this.#colour ? `\u001b[2m${text}\u001b[22m` : text
  }

  /** Writes rows as a table with a header line; cells are cut to 60 characters. */
  table (columns: readonly string[], rows: ReadonlyArray<readonly string[]>): void {
    if (this.json) return
    const cut = (cell: string): string => {
      const flat = cell.replace(/\s+/g, ' ')
      return flat.length > 60 ? flat.slice(0, 59) + '…' : flat
    }
    const cells = rows.map((row) => row.map(cut))
    const plain = (text: string): string => text.replace(/\u001b\[\d+m/g, '')
    const widths = columns.map((column, i) => Math.max(column.length, ...cells.map((row) => plain(row[i] ?? '').length)))
    const render = (row: readonly string[]): string => row.map((cell, i) => cell + ' '.repeat(widths[i]! - plain(cell).length)).join('  ').trimEnd()
    process.stdout.write(render(columns.map((column) => column.toUpperCase())) + '\n')
    for (const row of cells) process.stdout.write(render(row) + '\n')
  }
}

/** An error's one-line description: its code (a tenancy error's) and message. */
export function describeError (err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code
    const cause = (err as { cause?: unknown }).cause
    const own = typeof code === 'string' && code.startsWith('TENANCY_') ? `${code}: ${err.message}` : err.message
    // A 503 says the database is down; its cause says why.
    return cause instanceof Error && code === 'TENANCY_DATASOURCE_UNAVAILABLE' ? `${own} (${cause.message})` : own
  }
  return String(err)
}

/** A comma-separated list option: `--only a,b`. */
export function list (value: string, previous: string[] = []): string[] {
  return [...previous, ...value.split(',').map((item) => item.trim()).filter((item) => item !== '')]
}

/** A positive integer option: `--concurrency 4`. */
export function positiveInteger (value: string): number {
  const number = Number(value)
  if (!Number.isSafeInteger(number) || number <= 0) throw new CliError(`--concurrency must be a positive integer, not ${JSON.stringify(value)}.`, EXIT.usage)
  return number
}

/** Names or ids: a list item made of digits only is an id when no instance has it as its name. */
export function namesOrIds (items: readonly string[] | undefined, byName: (name: string) => unknown): Array<string | number> | undefined {
  if (items === undefined) return undefined
  return items.map((item) => /^\d+$/.test(item) && byName(item) === undefined ? Number(item) : item)
}
