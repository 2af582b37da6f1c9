// The PostgreSQL a benchmark runs on: DATABASE_URL, or an embedded server
// started for the run (data in .data/, removed afterwards).
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { rm } from 'node:fs/promises'
import pg from 'pg'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

export interface BenchServer {
  readonly url: string
  /** Stops the embedded server and removes its data; nothing for DATABASE_URL. */
  stop (): Promise<void>
}

/** DATABASE_URL, or an embedded PostgreSQL whose data folder is named after `name`. */
export async function benchServer (name: string): Promise<BenchServer> {
  const url = process.env.DATABASE_URL
  if (url) return { url, stop: async () => {} }
  const { startEmbeddedPostgres } = await import(pathToFileURL(path.join(root, 'scripts', 'embedded-postgres.js')).href) as {
    startEmbeddedPostgres (o: { dir: string }): Promise<{ url: string, stop (): Promise<void>, dir: string }>
  }
  const server = await startEmbeddedPostgres({ dir: path.join(root, '.data', `${name}-${process.pid}`) })
  return {
    url: server.url,
    stop: async () => {
      await server.stop()
      await rm(server.dir, { recursive: true, force: true })
    },
  }
}

/** `url` with its database replaced by `database`. */
export function withDatabase (url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = '/' + database
  return parsed.toString()
}

/** Runs `text` on a connection of its own. */
export async function run (url: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try { await client.query(text) } finally { await client.end() }
}
