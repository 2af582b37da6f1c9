export interface PgBouncerLogin {
  user: string
  password: string
}
export interface PgBouncer {
  port: number
  poolMode: 'session' | 'transaction'
  poolSize: number
  /** What a server connection runs before its next client; `''` is nothing. */
  serverResetQuery: string
  dir: string
  /** The last lines of PgBouncer's log. */
  log (): Promise<string>
  /** The server's connection string pointed at PgBouncer, with another database or login if given. */
  url (database?: string, user?: PgBouncerLogin): string
  stop (): Promise<void>
}
export function ensurePgBouncer (): Promise<string>
export function startPgBouncer (options: {
  databaseUrl: string
  poolMode?: 'session' | 'transaction'
  poolSize?: number
  users?: PgBouncerLogin[]
  /** Defaults to `'DISCARD ALL'`, PgBouncer's own default. */
  serverResetQuery?: string
}): Promise<PgBouncer>
