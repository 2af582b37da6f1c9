// `npm test`: runs the tap suite against DATABASE_URL, or against an embedded
// PostgreSQL that this script starts and stops. Afterwards it checks that every
// test file really ran tests, so a file that died before its first assertion
// cannot pass unnoticed, and prints the tests and the assertions apart, then
// one closing line over the tests: "N passed, N failed".
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
const totals = { tests: { pass: 0, fail: 0 }, assertions: { pass: 0, fail: 0 } }
const problems = []
for (const file of expected) {
  let text
  try {
    text = await readFile(path.join(root, '.tap', 'test-results', `${file}.tap`), 'utf8')
  } catch {
    problems.push(`${file} left no results`)
    continue
  }
  const counts = countTap(text)
  for (const kind of ['tests', 'assertions']) {
    totals[kind].pass += counts[kind].pass
    totals[kind].fail += counts[kind].fail
  }
  if (counts.tests.pass + counts.tests.fail === 0) problems.push(`${file} ran no tests`)
}
const minimum = Number(env.TENANCY_MIN_TESTS ?? (named.length > 0 ? 1 : 100))
if (totals.tests.pass < minimum) problems.push(`only ${totals.tests.pass} tests passed, fewer than the ${minimum} expected`)
for (const problem of problems) console.error(`# ${problem}`)
console.log(`# ${totals.tests.pass + totals.tests.fail} tests in ${expected.length} files, ${totals.assertions.pass + totals.assertions.fail} assertions (${totals.assertions.pass} passed, ${totals.assertions.fail} failed)`)
console.log(`${totals.tests.pass} passed, ${totals.tests.fail + problems.length} failed`)
process.exit(code !== 0 ? (code ?? 1) : problems.length > 0 ? 1 : 0)

/**
 * Tests and assertions of one TAP file, told apart: a test is a subtest (a
 * `# Subtest:` block, closed by its own result line) or an assertion made
 * outside any subtest; an assertion is every result line that closes no subtest.
 */
function countTap (text) {
  const counts = { tests: { pass: 0, fail: 0 }, assertions: { pass: 0, fail: 0 } }
  const open = []
  for (const line of text.split('\n')) {
    const subtest = /^(\s*)# Subtest: /.exec(line)
    if (subtest) {
      open.push(subtest[1].length)
      continue
    }
    const result = /^(\s*)(not )?ok \d+/.exec(line)
    if (!result) continue
    const outcome = result[2] === undefined ? 'pass' : 'fail'
    if (open.length > 0 && open.at(-1) === result[1].length) {
      open.pop()
      counts.tests[outcome]++
    } else {
      counts.assertions[outcome]++
      if (open.length === 0) counts.tests[outcome]++
    }
  }
  return counts
}

async function listTests (dir) {
  const files = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name)
    if (entry.isDirectory()) files.push(...await listTests(file))
    else if (entry.name.endsWith('.test.ts')) files.push(file)
  }
  return files.sort()
}
