// `npm run mutate [-- group ...] [--dry-run] [--head | --at=COMMIT]`: mutation testing with StrykerJS
// of the files that decide isolation, one group at a time, each with the test
// files that guard it. Outside CI: a group takes from minutes to an hour.
//
// One PostgreSQL serves the whole run: DATABASE_URL, or an embedded server this
// script starts (data in .data/mutate-<pid>) and stops at the end, also on an
// error or Ctrl-C. `--head` (or `--at=COMMIT`) mutates a copy of the last
// commit (or of that one) instead of the working tree. Results: the console, and reports/mutation/<group>.{md,json,html} (<group>.dry-run.* for a dry run). Each mutant runs the group's test files one after another,
// each in its own `node` process, and is killed by the first that fails.
//
// The test files run under Node's own type stripping, not tap's TypeScript
// compiler: that saves seconds per file and so hours per run. Node does not map
// the `.js` of a relative import to its `.ts` file, so the test processes load
// this file first (`--import`), which adds only that mapping (and none of the
// rest below: imported, it is not the main module).
import { existsSync, readFileSync, rmSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const self = fileURLToPath(import.meta.url)
const isMain = process.argv[1] !== undefined && path.resolve(process.argv[1]) === self

/** Resolves `./x.js` to `./x.ts` when only the `.ts` file exists, as TypeScript's NodeNext resolution does. */
async function mapJsToTs () {
  const { registerHooks } = await import('node:module')
  registerHooks({
    resolve (specifier, context, nextResolve) {
      if ((specifier.startsWith('./') || specifier.startsWith('../')) && specifier.endsWith('.js') && context.parentURL?.startsWith('file:')) {
        const js = new URL(specifier, context.parentURL)
        const ts = new URL(specifier.slice(0, -'.js'.length) + '.ts', context.parentURL)
        if (!existsSync(js) && existsSync(ts)) return nextResolve(ts.href, context)
      }
      return nextResolve(specifier, context)
    },
  })
}

/**
 * The groups, in the order they run by default. `mutate` names the files, or
 * `{ file, only }` to mutate only the named functions and methods of a file
 * (their line ranges are found when the group starts, so they follow edits).
 * `tests` are test files or `test/prefix-*.test.ts` patterns, run in this order
 * (the quickest to fail first), or `{ file, env }` to run one file with more
 * environment variables; missing ones are skipped.
 */
const GROUPS = {
  context: {
    // Not `validate` (the resolver's option checks): a mutant there accepts a
    // bad option, it does not move a request to another instance.
    mutate: ['lib/context.ts', { file: 'lib/resolve/instance-resolver.ts', only: ['instanceNameFromHost', 'readCookie', 'byFoldedName', 'builtIn', 'createInstanceResolver'] }],
    // tokens: the only file that reads the claim resolver (resolve.claim).
    tests: ['test/instance-resolver.test.ts', 'test/tokens.test.ts', 'test/instance-resolver-*.test.ts', 'test/context.test.ts', 'test/context-*.test.ts', 'test/plugin-startup.test.ts', 'test/plugin-hostile.test.ts'],
  },
  routing: {
    // What decides whether a query may run on a held connection, what a
    // checkout's session gets, and whether a connection goes back to its pool.
    // Not the choice of datasource in RoutingPool.connect (test/routing-hybrid),
    // the option checks, error texts, counters, waiting for a pool slot or idle
    // sweeps: with them a run takes more than two hours on this machine.
    mutate: [
      { file: 'lib/routing/routed-client.ts', only: ['query', 'release', 'discardReason', 'mismatch', 'runSetUp', 'sendSetUp', 'gate', 'setUpFailed', 'sendWithSetUp'] },
      { file: 'lib/routing/set-up-query.ts' },
      { file: 'lib/routing/session-state.ts', only: ['CHANGES_SESSION', 'changesTo', 'applied', 'observe', 'changesSession', 'statementChangesSession', 'setConfigChangesSession'] },
      { file: 'lib/routing/pool-manager.ts', only: ['release', 'settledIdle'] },
    ],
    // pool-manager and pgbouncer-modes: the only files that kill three leaks
    // (a direct lease pooled with an open transaction; a session change, and
    // statements without their set-up, under transaction pooling), which the
    // routing pool's own guards hide from the others. pool-manager's 100 ms
    // timeouts may fail an initial run on a loaded machine (it is retried).
    // routing-failed-statement: the only file that sees a connection given back
    // before the server's ready-for-query after an error (settledIdle).
    // session-affinity: the only file that reads which waiter a connection
    // given back goes to (PoolManager.release's releaseWithAffinity).
    // session-set-up: the only file that sends statements together on one
    // checkout, or fails a statement in its set-up's round trip.
    tests: ['test/session-set-up.test.ts', 'test/routing-session.test.ts', 'test/session-settings.test.ts', 'test/session-stream.test.ts', 'test/routing-transactions.test.ts',
      'test/routing-failed-statement.test.ts', 'test/pool-manager.test.ts', 'test/pgbouncer-modes.test.ts', 'test/session-affinity.test.ts'],
  },
  'set-up': {
    // The set-up sent in the round trip of a checkout's first statement, with
    // the file that fails it in each place (a session statement, the
    // statement, statements sent together, a cursor behind it); a quick group
    // next to routing, which runs its eight files on every mutant.
    mutate: [
      'lib/routing/set-up-query.ts',
      { file: 'lib/routing/routed-client.ts', only: ['runSetUp', 'sendSetUp', 'track', 'gate', 'setUpFailed', 'sendWithSetUp', 'takeSetUp'] },
    ],
    tests: ['test/session-set-up.test.ts', 'test/session-stream.test.ts', 'test/routing-session.test.ts'],
  },
  filter: {
    // What decides what the predicate holds and where it goes: the predicate,
    // its parentheses and the removal of an earlier pass's predicates; joins and
    // the derived tables of RIGHT and FULL joins; which names are tables and
    // which are CTEs; the SET checks. Not the statement-level functions that
    // call these (#confineSelect, #confineWhere, …), INSERT's filling, MERGE,
    // the raw-fragment check or the plugin: with them a run takes more than two
    // hours on this machine (the transformer alone has over 700 mutants).
    mutate: [
      {
        file: 'lib/filter/instance-filter-transformer.ts',
        only: ['predicate', 'and', 'where', 'strip', 'confineJoins', 'derived', 'derivedJoins', 'preservesUnmatched',
          'checkUpdates', 'targetNames', 'transformWith', 'inScope', 'isCte', 'tableRef'],
      },
    ],
    // The oracle without its sample run on PostgreSQL (over five minutes here,
    // days for the group): 10,000 statements of a fixed seed read by
    // PostgreSQL's parser, 8 s. Not test/generated-queries.test.ts (five minutes).
    tests: [
      'test/instance-filter-reads.test.ts', 'test/instance-filter-writes.test.ts',
      { file: 'test/oracle.test.ts', env: { TAP_GREP: '^(?!a sample of)', TENANCY_SEED: '20261202' } },
      'test/instance-filter-holes.test.ts', 'test/instance-filter-*.test.ts',
    ],
  },
}

async function main () {
  const { readFile, readdir, rm, mkdir, writeFile, symlink, cp } = await import('node:fs/promises')
  const { execFileSync } = await import('node:child_process')
  const { startEmbeddedPostgres } = await import('./embedded-postgres.js')
  const { Stryker } = await import('@stryker-mutator/core')

  const root = path.resolve(path.dirname(self), '..')
  process.chdir(root)
  const args = process.argv.slice(2)
  const dryRunOnly = args.includes('--dry-run')
  const at = args.includes('--head') ? 'HEAD' : args.find((arg) => arg.startsWith('--at='))?.slice('--at='.length)
  const unknownFlags = args.filter((arg) => arg.startsWith('--') && arg !== '--dry-run' && arg !== '--head' && !/^--at=[\w./^~-]+$/.test(arg))
  const names = args.filter((arg) => !arg.startsWith('--'))
  const unknownGroups = names.filter((name) => !Object.hasOwn(GROUPS, name))
  if (unknownFlags.length > 0 || unknownGroups.length > 0) {
    console.error(`Usage: npm run mutate [-- group ...] [--dry-run] [--head | --at=COMMIT]; groups: ${Object.keys(GROUPS).join(', ')}`)
    console.error('--dry-run: instrument and run the tests once, no mutant; --head, --at: mutate a copy of the last or of another commit, not the working tree')
    process.exit(2)
  }
  const selected = names.length > 0 ? names : Object.keys(GROUPS)
  const reports = path.join(root, 'reports', 'mutation')
  // The server's data and the copy of the last commit; removed at the end.
  const scratch = path.join(root, '.data', `mutate-${process.pid}`)

  let server
  async function cleanUp () {
    const stopping = server
    server = undefined
    await stopping?.stop().catch(() => {})
    await rm(scratch, { recursive: true, force: true })
  }
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      console.error(`# ${signal}: stopping PostgreSQL`)
      cleanUp().finally(() => process.exit(130))
    })
  }
  // Stryker handles the same signals and may exit before cleanUp() is done.
  process.on('exit', () => {
    try {
      const pid = Number(readFileSync(path.join(scratch, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0])
      if (pid > 0) process.kill(pid, 'SIGQUIT')
    } catch {}
    rmSync(scratch, { recursive: true, force: true, maxRetries: 5 })
  })

  const summaries = []
  try {
    let source = 'the working tree'
    if (at !== undefined) {
      // Others may be editing the working tree: a commit is a stable snapshot,
      // and names what was measured.
      const commit = execFileSync('git', ['rev-parse', '--short', '--verify', `${at}^{commit}`]).toString().trim()
      const tree = path.join(scratch, 'tree')
      await mkdir(tree, { recursive: true })
      execFileSync('sh', ['-c', 'git archive "$1" | tar -x -C "$2"', 'sh', commit, tree], { stdio: 'inherit' })
      await symlink(path.join(root, 'node_modules'), path.join(tree, 'node_modules'), 'dir')
      source = `commit ${commit}`
      process.chdir(tree)
    }
    if (process.env.DATABASE_URL) {
      console.log('# PostgreSQL from DATABASE_URL')
    } else {
      server = await startEmbeddedPostgres({ dir: path.join(scratch, 'pg') })
      process.env.DATABASE_URL = server.url
      console.log(`# embedded PostgreSQL on port ${server.port} (data in ${path.relative(root, server.dir)})`)
    }
    console.log(`# Node.js ${process.version}, ${new Date().toISOString()}, mutating ${source}`)
    // A test file run by itself takes tap's default of 30 s; the suite's is 300 s.
    process.env.TAP_TIMEOUT ??= '300'
    // A mutant is killed by its first failing assertion: no need to run the rest.
    process.env.TAP_BAIL ??= '1'
    await mkdir(reports, { recursive: true })
    for (const name of selected) summaries.push(await runGroup(name, GROUPS[name], source))
  } finally {
    await cleanUp()
  }
  console.log('\n# Summary')
  for (const summary of summaries) console.log(summary.line)
  process.exit(summaries.every((summary) => summary.ok) ? 0 : 1)

  async function runGroup (name, group, source) {
    const tests = await resolveTests(group.tests)
    const sources = {}
    const mutate = []
    for (const entry of group.mutate) {
      const file = typeof entry === 'string' ? entry : entry.file
      sources[file] = await readFile(file, 'utf8')
      if (typeof entry === 'string') mutate.push(file)
      else for (const [from, to] of functionRanges(file, sources[file], entry.only)) mutate.push(`${file}:${from}-${to}`)
    }
    const node = `${shellQuote(process.execPath)} --import=./scripts/mutate.js`
    const command = tests.map(({ file, env }) => `${Object.entries(env).map(([key, value]) => `${key}=${shellQuote(value)} `).join('')}${node} ${file}`).join(' && ')
    console.log(`\n# group ${name}: mutating ${mutate.join(' ')}`)
    console.log(`# tests: ${command}`)
    const started = Date.now()
    let results
    // Some tests have timeouts of 100 ms; on a loaded machine the initial run,
    // which must pass, fails now and then. Two more tries before giving up.
    // A dry run must not overwrite the last real run's report.
    const stem = dryRunOnly ? `${name}.dry-run` : name
    for (let attempt = 1; results === undefined; attempt++) {
      try {
        results = await new Stryker({
          configFile: 'stryker.config.mjs',
          mutate,
          commandRunner: { command },
          jsonReporter: { fileName: `reports/mutation/${stem}.json` },
          htmlReporter: { fileName: `reports/mutation/${stem}.html` },
          dryRunOnly,
        }).runMutationTest()
      } catch (err) {
        if (attempt === 3) throw err
        console.error(`# group ${name}: Stryker stopped (${err instanceof Error ? err.message : err}); trying again`)
      }
    }
    const minutes = ((Date.now() - started) / 60_000).toFixed(1)
    const count = (status) => results.filter((result) => result.status === status).length
    const tally = {
      mutants: results.length,
      killed: count('Killed'),
      survived: count('Survived'),
      timeout: count('Timeout'),
      noCoverage: count('NoCoverage'),
      errors: count('CompileError') + count('RuntimeError'),
      ignored: count('Ignored'),
    }
    const detected = tally.killed + tally.timeout
    const valid = detected + tally.survived + tally.noCoverage
    const score = valid === 0 ? 'n/a' : `${(100 * detected / valid).toFixed(2)} %`
    const line = dryRunOnly
      ? `${name}: dry run only (the mutant count is in Stryker's log above), ${minutes} min`
      : `${name}: ${tally.mutants} mutants, ${tally.killed} killed, ${tally.survived} survived, ${tally.timeout} timed out, ${tally.noCoverage} without coverage, ${tally.errors} errors, ${tally.ignored} ignored; score ${score}; ${minutes} min`
    const survivors = results
      .filter((result) => result.status === 'Survived' || result.status === 'NoCoverage')
      .sort((a, b) => a.fileName.localeCompare(b.fileName) || a.location.start.line - b.location.start.line || a.location.start.column - b.location.start.column)
      .map((result) => {
        const file = path.relative(process.cwd(), result.fileName)
        const original = sources[file] === undefined ? '?' : excerpt(sources[file], result.location)
        return `${file}:${result.location.start.line}:${result.location.start.column} ${result.mutatorName}: ${oneLine(original)} → ${oneLine(result.replacement ?? '')}`
      })
    const report = [
      `# group ${name}`, '',
      `- date: ${new Date(started).toISOString()}`,
      `- Node.js ${process.version}`,
      `- source: ${source}`,
      `- mutated: ${mutate.join(' ')}`,
      `- tests: ${command}`,
      `- ${line}`, '',
      `## survivors (${survivors.length})`, '',
      ...survivors.map((survivor) => `- ${survivor}`), '',
    ].join('\n')
    if (process.cwd() !== root) {
      for (const ext of ['json', 'html']) await cp(`reports/mutation/${stem}.${ext}`, path.join(reports, `${stem}.${ext}`)).catch(() => {})
    }
    await writeFile(path.join(reports, `${stem}.md`), report)
    console.log(`\n${report}`)
    return { line, ok: dryRunOnly || tally.survived + tally.noCoverage === 0 }
  }

  async function resolveTests (patterns) {
    const files = []
    for (const entry of patterns) {
      if (typeof entry !== 'string') {
        if (existsSync(entry.file)) files.push(entry)
        continue
      }
      const pattern = entry
      const star = pattern.indexOf('*')
      if (star === -1) {
        // An older commit (--at) may not have it yet: say so rather than stop.
        if (existsSync(pattern)) files.push({ file: pattern, env: {} })
        else console.log(`# ${pattern} does not exist here: not run`)
        continue
      }
      const dir = path.dirname(pattern)
      const prefix = path.basename(pattern.slice(0, star))
      const suffix = pattern.slice(star + 1)
      for (const entry of (await readdir(dir)).sort()) {
        if (entry.startsWith(prefix) && entry.endsWith(suffix)) files.push({ file: path.join(dir, entry), env: {} })
      }
    }
    // A file named twice (by itself and by a pattern) runs once, where it comes first.
    return files.filter((test, index) => files.findIndex((other) => other.file === test.file) === index)
  }
}

/**
 * The 1-based line ranges of the functions, methods and constants named
 * `names` in `source`. A function or method runs from the line that declares it
 * to the first line after it that closes a block at the declaration's
 * indentation (the code is laid out by `standard`, so that line is its end); a
 * constant is its one line.
 */
function functionRanges (file, source, names) {
  const lines = source.split('\n')
  const ranges = []
  for (const name of names) {
    const escaped = name.replace(/[$]/g, '\\$')
    const constant = new RegExp(`^(export\\s+)?const\\s+${escaped}\\b`)
    const single = lines.findIndex((line) => constant.test(line))
    if (single !== -1) {
      // A constant that opens a list or object on its line ends where that closes.
      let last = single
      if (/[[{(]$/.test(lines[single].trimEnd())) last = lines.findIndex((line, index) => index > single && /^[\]})]/.test(line))
      ranges.push([single + 1, (last === -1 ? single : last) + 1])
      continue
    }
    const declaration = new RegExp(`^(\\s*)(export\\s+)?(async\\s+)?(function\\s*\\*?\\s*)?((?:protected|private|public)\\s+)?(override\\s+)?(static\\s+)?(async\\s+)?(get\\s+|set\\s+)?#?${escaped}\\s*(<[^(]*>)?\\s*\\(`)
    const start = lines.findIndex((line) => declaration.test(line))
    if (start === -1) {
      // The code moves on: say so loudly rather than stop a long run.
      console.error(`# WARNING ${file}: no function, method or constant named ${name}; not mutated`)
      continue
    }
    const indent = declaration.exec(lines[start])[1]
    let end = start
    if (!lines[start].trimEnd().endsWith('}')) {
      end = lines.findIndex((line, index) => index > start && line.startsWith(`${indent}}`))
      if (end === -1) throw new Error(`${file}: the end of ${name} was not found`)
    }
    ranges.push([start + 1, end + 1])
  }
  return ranges
}

/** The text of `source` at `location`, whose lines and columns count from 1 (as in Stryker's reports). */
function excerpt (source, { start, end }) {
  const lines = source.split('\n')
  const line = (n) => lines[n - 1] ?? ''
  if (start.line === end.line) return line(start.line).slice(start.column - 1, end.column - 1)
  return [line(start.line).slice(start.column - 1), ...lines.slice(start.line, end.line - 1), line(end.line).slice(0, end.column - 1)].join('\n')
}

function oneLine (text) {
  const flat = text.replace(/\s+/g, ' ').trim()
  return flat.length > 120 ? `${flat.slice(0, 117)}...` : flat
}

function shellQuote (text) {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`
}

// Last, so that every declaration above is initialised.
if (isMain) await main()
else await mapJsToTs()
