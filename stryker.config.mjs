// StrykerJS settings for `npm run mutate` (scripts/mutate.js), which runs one
// group at a time: its `mutate` files and the command that runs the group's
// test files. Run outside CI: a group takes from minutes to an hour.
//
// The command runner decides on the exit code alone, so coverage analysis
// cannot apply; one runner at a time, since every test run starts servers and
// databases on a machine shared with other work.

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'command',
  coverageAnalysis: 'off',
  concurrency: 1,
  // Test files talk to PostgreSQL and start Fastify servers: their times vary
  // a lot with the machine's load, and a slow run is not an infinite loop.
  timeoutFactor: 3,
  timeoutMS: 30_000,
  dryRunTimeoutMinutes: 30,
  // Node strips the types itself (see scripts/mutate.js): no build step, and
  // no type check that would reject a mutant before it runs.
  disableTypeChecks: true,
  // Copied into every sandbox otherwise; .data holds running PostgreSQL servers.
  ignorePatterns: ['/.data', '/dist', '/.tap', '/coverage', '/reports', '/bench/results'],
  reporters: ['clear-text', 'progress-append-only', 'json', 'html'],
  clearTextReporter: { allowColor: false, logTests: false, reportScoreTable: true },
  cleanTempDir: true,
  tempDirName: '.stryker-tmp',
}
