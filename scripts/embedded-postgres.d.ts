export interface EmbeddedServer {
  /** A superuser connection string to its `postgres` database. */
  url: string
  port: number
  dir: string
  log: string[]
  stop (): Promise<void>
}
export function freePort (): Promise<number>
export function startEmbeddedPostgres (options: { dir: string, fresh?: boolean, port?: number }): Promise<EmbeddedServer>
