// `npm test`: runs the tap suite against DATABASE_URL, or against an embedded
// PostgreSQL that this script starts and stops. Afterwards it checks that every
// test file really ran tests, so a file that died before its first assertion
// cannot pass unnoticed, and prints one closing line: "N passed, N failed".
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir, readFile, rm } from 'node:fs/promises'
import path from 'node:path'
import { startEmbeddedPostgres } from './embedded-postgres.js'

const root = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '..')
process.chdir(root)
const args = process.argv.slice(2)
const env = { ...process.env }
let server
if (!env.DATABASE_URL) {
  const dir = path.join(root, '.data', `test-${process.pid}`)
  server = await startEmbeddedPostgres({ dir })
  env.DATABASE_URL = server.url
  console.log(`# embedded PostgreSQL on port ${server.port} (data in ${path.relative(root, dir)})`)
} else {
  console.log('# PostgreSQL from DATABASE_URL')
}
console.log(`# Node.js ${process.version}`)

async function stopServer () {
  if (!server) return
  const { dir } = server
  await server.stop().catch(() => {})
  await rm(dir, { recursive: true, force: true })
  server = undefined
}

const child = spawn(path.join(root, 'node_modules', '.bin', 'tap'), args, { stdio: 'inherit', env })
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => { child.kill(signal) })
}
const [code] = await once(child, 'exit')
await stopServer()

// Which files should have run: the ones named on the command line, or all.
const named = args.filter((arg) => arg.endsWith('.ts') || arg.endsWith('.js'))
const expected = named.length > 0 ? named.map((file) => path.relative(root, path.resolve(file))) : await listTests('test')
let passed = 0
let failed = 0
const problems = []
for (const file of expected) {
  let text
  try {
    text = await readFile(path.join(root, '.tap', 'test-results', `${file}.tap`), 'utf8')
  } catch {
    problems.push(`${file} left no results`)
    continue
  }
  const ok = text.match(/^\s*ok \d+/gm)?.length ?? 0
  const notOk = text.match(/^\s*not ok \d+/gm)?.length ?? 0
  passed += ok
  failed += notOk
  if (ok + notOk === 0) problems.push(`${file} ran no tests`)
}
for (const problem of problems) console.error(`# ${problem}`)
const minimum = Number(env.TENANCY_MIN_TESTS ?? (named.length > 0 ? 1 : 200))
if (passed < minimum) problems.push(`only ${passed} tests passed, fewer than the ${minimum} expected`)
console.log(`${passed} passed, ${failed + problems.length} failed`)
process.exit(code !== 0 ? (code ?? 1) : problems.length > 0 ? 1 : 0)

async function listTests (dir) {
  const files = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name)
    if (entry.isDirectory()) files.push(...await listTests(file))
    else if (entry.name.endsWith('.test.ts')) files.push(file)
  }
  return files.sort()
}
