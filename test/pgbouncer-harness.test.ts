// The PgBouncer a test starts must not outlive the test's process, even when
// that process is killed where no teardown runs (a timeout, a mutant, Ctrl-C):
// a leftover keeps its port and its directory, and piles up over repeated runs.
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { access } from 'node:fs/promises'
import { connect } from 'node:net'
import { fileURLToPath } from 'node:url'
import { serverUrl } from './helpers/database.js'

const script = fileURLToPath(new URL('../scripts/pgbouncer.js', import.meta.url))

async function listening (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => { resolve(false) })
  })
}

async function gone (file: string): Promise<boolean> {
  return await access(file).then(() => false, () => true)
}

/** Polls `check` until it holds or 20 s pass; the answer, not the time, is what the test asserts. */
async function eventually (check: () => Promise<boolean>): Promise<boolean> {
  for (let tries = 0; tries < 200; tries++) {
    if (await check()) return true
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return false
}

t.test('a PgBouncer whose starting process is killed with SIGKILL stops, and its directory is removed', async (t) => {
  const starter = `
    const { startPgBouncer } = await import(${JSON.stringify(script)})
    const bouncer = await startPgBouncer({ databaseUrl: ${JSON.stringify(serverUrl())} })
    console.log(JSON.stringify({ port: bouncer.port, dir: bouncer.dir }))
    setInterval(() => {}, 1000)
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', starter], { stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = await once(child.stdout, 'data') as [Buffer]
  const { port, dir } = JSON.parse(String(line)) as { port: number, dir: string }
  t.ok(await listening(port), 'it listens while its process runs')
  t.notOk(await gone(dir), 'with its directory')
  child.kill('SIGKILL')
  await once(child, 'exit')
  t.ok(await eventually(async () => !await listening(port)), 'after the kill it stops listening')
  t.ok(await eventually(async () => await gone(dir)), 'and its directory is removed')
})
