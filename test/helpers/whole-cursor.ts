// Kysely's stream() needs a cursor class (pg-cursor's interface); this one is
// a plain pg.Query that hands over the whole result at the first read, so the
// tests exercise the routed client's cursor path without another dependency.
import pg from 'pg'

/** A cursor for Kysely's stream(): the whole result in the first read. */
export class WholeCursor<R> extends pg.Query {
  readonly #rows: Promise<R[]>
  #read = false
  constructor (text: string, values: unknown[]) {
    super(text, values)
    this.#rows = new Promise((resolve, reject) => {
      this.once('end', (result: { rows: R[] }) => { resolve(result.rows) })
      this.once('error', reject)
    })
    this.#rows.catch(() => {})
  }

  async read (): Promise<R[]> {
    if (this.#read) return []
    this.#read = true
    return await this.#rows
  }

  async close (): Promise<void> {
    await this.#rows.catch(() => {})
  }
}
