#!/usr/bin/env node
// The fastify-tenancy command line: commander parses, each command group has
// its own file, and every way out ends here with its exit code.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { Command, CommanderError } from 'commander'
import { TenancyError } from '../lib/errors.js'
import { doctorCommand } from './doctor-command.js'
import { instancesCommand } from './instances-command.js'
import { migrateCommand } from './migrate-command.js'
import { CliError, EXIT, describeError } from './output.js'
import { runCommand } from './run-command.js'

function version (): string {
  // Built, this file is dist/cli/index.js; run from the source, cli/index.ts: the package's root is above, at some depth.
  for (let dir = import.meta.dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json')
    if (!existsSync(file)) continue
    const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string, version?: string }
    if (pkg.name === 'fastify-tenancy') return pkg.version ?? 'unknown'
  }
  return 'unknown'
}

/** The program, with every command; `exitOverride` so that main() chooses the exit codes. */
function program (): Command {
  const root = new Command('fastify-tenancy')
    .description('Manage the instances of a fastify-tenancy set-up, migrate them, run scripts on them, check the set-up.')
    .version(version())
    .option('-c, --config <file>', 'the config module (default: tenancy.config.js, .ts or .mjs in the working directory)')
    .option('--json', 'one JSON document on stdout (the default when stdout is not a terminal)')
    .option('--verbose', 'stack traces with errors')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
  instancesCommand(root)
  migrateCommand(root)
  runCommand(root)
  doctorCommand(root)
  root.addHelpText('after', `
Exit codes: 0 everything succeeded, 1 something failed (the rest still ran),
2 usage or config error, 130 interrupted (Ctrl-C).`)
  return root
}

/** Runs the command line on `argv` (without node and the script) and returns the exit code. */
async function main (argv: readonly string[]): Promise<number> {
  const verbose = argv.includes('--verbose')
  try {
    await program().parseAsync(argv, { from: 'user' })
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander has printed its message (or the help) already.
      return ['commander.helpDisplayed', 'commander.help', 'commander.version'].includes(err.code) ? EXIT.ok : EXIT.usage
    }
    const code = err instanceof CliError ? err.exitCode
      : err instanceof TenancyError && err.code === 'TENANCY_INVALID_OPTIONS' ? EXIT.usage
        : EXIT.failed
    process.stderr.write(describeError(err) + '\n')
    if (verbose) {
      let current: unknown = err
      while (current instanceof Error) {
        process.stderr.write((current.stack ?? String(current)) + '\n')
        current = (current as { cause?: unknown }).cause
        if (current !== undefined) process.stderr.write('Caused by: ')
      }
    }
    return code
  }
}

// A user's config or module may leave a handle open (a timer, a client): the
// command has finished, so the process ends with its code.
process.exit(await main(process.argv.slice(2)))
