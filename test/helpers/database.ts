import pg from 'pg'
import { randomBytes } from 'node:crypto'

// Every createTenancy() of a test runs the doctor (doctor: 'warn' by default),
// whose findings on the suite's throwaway databases would flood the output.
// Node's own printer of warnings, the listener there before any test's, skips
// them; the 'warning' events still reach every other listener, so a test about
// the doctor sees each of them.
for (const print of process.listeners('warning')) {
  process.off('warning', print)
  process.on('warning', (warning) => { if (warning.name !== 'TenancyDoctorWarning') print(warning) })
}

/** The server the suite runs against: `scripts/test.js` sets it. */
export function serverUrl (): string {
  const url = process.env.DATABASE_URL
  if (!url) throw new Error('DATABASE_URL is not set: run the tests with `npm test`, which starts an embedded PostgreSQL.')
  return url
}

/** `url` with its database replaced. */
export function withDatabase (url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = '/' + database
  return parsed.toString()
}

interface Teardown { teardown (fn: () => unknown): void }

/**
 * Creates an empty database for one test file (so files can run in parallel)
 * and drops it when `t` ends. Returns its connection string.
 */
export async function createDatabase (t: Teardown, label = 'test'): Promise<string> {
  const name = `${label.toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, 40)}_${randomBytes(4).toString('hex')}`
  await adminQuery(`create database "${name}"`)
  t.teardown(async () => { await adminQuery(`drop database if exists "${name}" with (force)`) })
  return withDatabase(serverUrl(), name)
}

/** Runs one statement on the server's maintenance database. */
export async function adminQuery (text: string, url = serverUrl()): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await client.query(text)
  } finally {
    await client.end()
  }
}

/** Runs statements on `url` with a short-lived client: setup and checks that bypass the library. */
export async function query<R extends pg.QueryResultRow = any> (url: string, text: string, values: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}
