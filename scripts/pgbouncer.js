// Starts a PgBouncer in front of the test PostgreSQL, in session or in
// transaction pooling, on a free loopback port. Debian's `pgbouncer` package is
// installed with apt when the binary is missing, as on a fresh CI machine, so
// the tests that need it never skip: they fail, saying why, when it cannot be had.
import { mkdtemp, writeFile, readFile, rm, chown, access, constants } from 'node:fs/promises'
import { spawn, execFileSync, spawnSync } from 'node:child_process'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { freePort } from './embedded-postgres.js'

const isRoot = process.getuid?.() === 0
const CANDIDATES = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer']

async function executable (file) {
  try { await access(file, constants.X_OK); return true } catch { return false }
}

async function findBinary () {
  if (process.env.PGBOUNCER && await executable(process.env.PGBOUNCER)) return process.env.PGBOUNCER
  for (const file of CANDIDATES) if (await executable(file)) return file
  const found = spawnSync('sh', ['-c', 'command -v pgbouncer'], { encoding: 'utf8' })
  const file = found.stdout?.trim()
  return file && await executable(file) ? file : undefined
}

function aptInstall () {
  // Another test file may be installing at the same moment: wait for dpkg's lock.
  return spawnSync('apt-get', ['install', '-y', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=300', 'pgbouncer'], {
    encoding: 'utf8',
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    timeout: 600_000,
  })
}

// Run by a second Node.js process whose stdin is a pipe from this one: the
// pipe closes when this process ends in any way, SIGKILL included, where no
// exit handler or teardown of a test runs (a mutant, a timeout, Ctrl-C).
const WATCHDOG = `
const [pid, dir] = process.argv.slice(1)
process.stdin.resume()
process.stdin.on('close', () => {
  const alive = () => { try { return process.kill(Number(pid), 0) } catch { return false } }
  if (alive()) process.kill(Number(pid), 'SIGTERM')
  let waited = 0
  const timer = setInterval(() => {
    waited += 100
    if (alive() && waited < 5000) return
    if (alive()) process.kill(Number(pid), 'SIGKILL')
    clearInterval(timer)
    require('node:fs').rmSync(dir, { recursive: true, force: true })
  }, 100)
})
`

/**
 * A process that stops PgBouncer (\`pid\`) and removes \`dir\` once this
 * process has ended, unless killed first (stop() does, before its own shutdown,
 * so a PID used again later is never signalled). It holds nothing open here.
 */
function watch (pid, dir) {
  const watchdog = spawn(process.execPath, ['-e', WATCHDOG, String(pid), dir], { stdio: ['pipe', 'ignore', 'ignore'] })
  watchdog.on('error', () => {})
  watchdog.unref()
  watchdog.stdin.on('error', () => {})
  watchdog.stdin.unref()
  return watchdog
}

/**
 * The path of the `pgbouncer` binary, installed with `apt-get install -y
 * pgbouncer` (after `apt-get update` if the first attempt fails) when it is
 * missing and this process is root. Throws, with apt's output, when it cannot.
 */
export async function ensurePgBouncer () {
  const found = await findBinary()
  if (found) return found
  if (!isRoot) throw new Error(`pgbouncer is not installed (looked for ${CANDIDATES.join(', ')} and on PATH) and this process is not root, so it cannot install it: run "apt-get install -y pgbouncer" as root, or set PGBOUNCER to its path.`)
  const attempts = []
  let result = aptInstall()
  attempts.push(result)
  if (result.status !== 0) {
    attempts.push(spawnSync('apt-get', ['update', '-o', 'DPkg::Lock::Timeout=300'], { encoding: 'utf8', timeout: 600_000 }))
    result = aptInstall()
    attempts.push(result)
  }
  const installed = await findBinary()
  if (installed) return installed
  const output = attempts.map((attempt) => `${attempt.stdout ?? ''}${attempt.stderr ?? ''}${attempt.error ? String(attempt.error) : ''}`).join('\n').split('\n').slice(-30).join('\n')
  throw new Error(`pgbouncer could not be installed with "apt-get install -y pgbouncer" (exit ${result.status}); apt said:\n${output}`)
}

function quoteIni (value) {
  if (!/^[A-Za-z0-9_.\-/]*$/.test(value)) throw new Error(`${JSON.stringify(value)} cannot be written into the PgBouncer configuration`)
  return value
}

function userlistLine (user, password) {
  return `"${user.replaceAll('"', '""')}" "${password.replaceAll('"', '""')}"`
}

async function waitForPort (port, child, log, deadline) {
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break
    const open = await new Promise((resolve) => {
      const socket = connect(port, '127.0.0.1')
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (open) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`PgBouncer did not listen on port ${port} (exit code ${child.exitCode}). Its log:\n${await log()}`)
}

/**
 * Starts PgBouncer in front of the server of `databaseUrl` (a superuser's
 * connection string, as `npm test` gives), every database through the
 * fallback entry `*`, with `poolMode` `'session'` or `'transaction'` and
 * `poolSize` server connections per database and user. Clients log in with
 * SCRAM as the URL's user or one of `users`, with their passwords (PgBouncer
 * sends them on to the server in whatever form it asks). `serverResetQuery` is
 * what a server connection runs before its next client (`''`: nothing). As root
 * it runs as the `postgres` user (PgBouncer refuses root). Resolves to `{ port,
 * url(database?, user?), stop }`; `url()` is `databaseUrl` pointed at PgBouncer.
 */
export async function startPgBouncer ({ databaseUrl, poolMode = 'transaction', poolSize = 5, users = [], serverResetQuery = 'DISCARD ALL' }) {
  if (!databaseUrl) throw new Error('startPgBouncer needs the connection string of the server it stands in front of')
  if (poolMode !== 'session' && poolMode !== 'transaction') throw new Error(`poolMode must be 'session' or 'transaction', not ${JSON.stringify(poolMode)}`)
  if (typeof serverResetQuery !== 'string' || !/^[A-Za-z ]*$/.test(serverResetQuery)) throw new Error(`serverResetQuery must be letters and spaces, not ${JSON.stringify(serverResetQuery)}`)
  const binary = await ensurePgBouncer()
  const server = new URL(databaseUrl)
  const logins = [{ user: decodeURIComponent(server.username), password: decodeURIComponent(server.password) }, ...users]
  const dir = await mkdtemp(path.join(tmpdir(), 'pgbouncer-'))
  const port = await freePort()
  const config = path.join(dir, 'pgbouncer.ini')
  const logFile = path.join(dir, 'pgbouncer.log')
  await writeFile(path.join(dir, 'userlist.txt'), logins.map(({ user, password }) => userlistLine(user, password)).join('\n') + '\n')
  await writeFile(config, [
    '[databases]',
    `* = host=${quoteIni(server.hostname)} port=${quoteIni(server.port || '5432')}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    `logfile = ${logFile}`,
    `pidfile = ${path.join(dir, 'pgbouncer.pid')}`,
    'auth_type = scram-sha-256',
    `auth_file = ${path.join(dir, 'userlist.txt')}`,
    `pool_mode = ${poolMode}`,
    `default_pool_size = ${Number(poolSize)}`,
    'min_pool_size = 0',
    'reserve_pool_size = 0',
    'max_client_conn = 500',
    'max_db_connections = 0',
    // Session pooling resets a server connection before its next client (PgBouncer's default, DISCARD ALL); empty, it does not.
    `server_reset_query = ${serverResetQuery}`,
    'ignore_startup_parameters = extra_float_digits,options',
    'server_login_retry = 1',
    'query_wait_timeout = 30',
    '',
  ].join('\n'))
  const args = [config]
  if (isRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim())
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim())
    for (const file of [dir, config, path.join(dir, 'userlist.txt')]) await chown(file, uid, gid)
    args.unshift('-u', 'postgres')
  }
  const output = []
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  const watchdog = watch(child.pid, dir)
  child.once('exit', () => { watchdog.kill() })
  child.stdout.on('data', (chunk) => { output.push(String(chunk)) })
  child.stderr.on('data', (chunk) => { output.push(String(chunk)) })
  child.on('error', (err) => { output.push(String(err)) })
  const log = async () => {
    const file = await readFile(logFile, 'utf8').catch(() => '')
    return (file || output.join('')).split('\n').slice(-30).join('\n')
  }
  try {
    await waitForPort(port, child, log, Date.now() + 15_000)
  } catch (err) {
    watchdog.kill()
    child.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
    throw err
  }
  let stopped = false
  return {
    port,
    poolMode,
    poolSize,
    serverResetQuery,
    dir,
    log,
    /** `databaseUrl` pointed at PgBouncer, with another database or login if given. */
    url (database, user) {
      const url = new URL(databaseUrl)
      url.hostname = '127.0.0.1'
      url.port = String(port)
      if (database !== undefined) url.pathname = '/' + database
      if (user !== undefined) {
        url.username = user.user
        url.password = user.password
      }
      return url.toString()
    },
    async stop () {
      if (stopped) return
      stopped = true
      watchdog.kill()
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve))
        // SIGINT: a "safe shutdown" that waits for clients; SIGTERM ends it at once.
        child.kill('SIGTERM')
        let timer
        await Promise.race([exited, new Promise((resolve) => { timer = setTimeout(resolve, 5000) })])
        clearTimeout(timer)
        if (child.exitCode === null) child.kill('SIGKILL')
      }
      await rm(dir, { recursive: true, force: true })
    },
  }
}
