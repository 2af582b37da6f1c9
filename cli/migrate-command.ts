import type { Command } from 'commander'
import type { FleetMigrateOptions, MigrationReport, TargetMigrationResult } from '../lib/lifecycle/fleet-migrator.js'
import { withTenancy } from './load-config.js'
import { CliError, EXIT, Output, describeError, list, namesOrIds, positiveInteger, type GlobalOptions } from './output.js'
import { Progress, interruptible } from './progress.js'

interface MigrateFlags {
  only?: string[]
  concurrency?: number
  to?: string
  set?: string
  all?: boolean
}

function resultView (result: TargetMigrationResult): Record<string, unknown> {
  return {
    target: result.target,
    kind: result.kind,
    set: result.set,
    instances: result.instances,
    status: result.status,
    applied: result.results.filter((step) => step.status === 'Success').map((step) => ({ migration: step.migrationName, direction: step.direction })),
    ...(result.failedMigration === undefined ? {} : { failedMigration: result.failedMigration }),
    ...(result.error === undefined ? {} : { error: describeError(result.error) }),
  }
}

function instancesOf (names: readonly string[]): string {
  return names.map((name) => name === '' ? "''" : name).join(', ')
}

/** Prints a run's report and sets the exit code: 0 all succeeded, 1 a target failed, 130 interrupted. */
function report (out: Output, migrated: MigrationReport, interrupted: boolean): void {
  const code = interrupted ? EXIT.interrupted : migrated.ok ? EXIT.ok : EXIT.failed
  process.exitCode = code
  if (out.json) {
    out.document({ ok: migrated.ok, changed: migrated.changed, interrupted, targets: migrated.targets.map(resultView), notReached: migrated.notReached })
    return
  }
  out.table(['target', 'instances', 'status', 'applied', 'detail'], migrated.targets.map((target) => {
    const applied = target.results.filter((step) => step.status === 'Success').length
    const status = target.status === 'success' ? out.green(target.status) : out.red(target.status)
    const detail = target.failedMigration !== undefined ? `${target.failedMigration}: ${describeError(target.error)}` : target.error !== undefined ? describeError(target.error) : ''
    return [target.target, instancesOf(target.instances), status, String(applied), detail]
  }))
  const failed = migrated.targets.filter((target) => target.status !== 'success' && target.status !== 'not-reached').length
  out.line(`${migrated.targets.length} targets: ${migrated.targets.length - failed - migrated.notReached.length} succeeded, ${failed} failed, ${migrated.notReached.length} not reached.`)
  if (interrupted && migrated.notReached.length > 0) out.line(`Interrupted; not reached: ${migrated.notReached.join(', ')}.`)
}

async function run (globals: GlobalOptions, flags: MigrateFlags, direction: 'up' | 'down'): Promise<void> {
  const out = new Output(globals)
  await withTenancy(globals, async ({ tenancy }) => {
    const progress = new Progress(!out.json, 'targets')
    const controller = new AbortController()
    const stopListening = interruptible(controller, () => {
      process.stderr.write('\nInterrupted: no new target starts; running ones finish their current migration (Ctrl-C again to quit at once).\n')
    })
    const options: FleetMigrateOptions = {
      signal: controller.signal,
      onProgress: (event) => {
        if (event.type === 'target-start') progress.start(event.target.key, event.total)
        else if (event.type === 'target-end') progress.end(event.result.target, event.result.status !== 'success' && event.result.status !== 'not-reached')
      },
    }
    const only = namesOrIds(flags.only, (name) => tenancy.instances.byName(name))
    if (only !== undefined) options.only = only
    if (flags.concurrency !== undefined) options.concurrency = flags.concurrency
    if (direction === 'down') {
      if (flags.set !== undefined && flags.set !== 'instance' && flags.set !== 'host') throw new CliError(`--set must be instance or host, not ${JSON.stringify(flags.set)}.`, EXIT.usage)
      options.sets = (flags.set ?? 'instance') as 'instance' | 'host'
      options.to = flags.all === true ? (await import('kysely/migration')).NO_MIGRATIONS : flags.to ?? 'previous'
    } else if (flags.to !== undefined) {
      options.to = flags.to
    }
    let migrated: MigrationReport
    try {
      migrated = await tenancy.migrate(options)
    } finally {
      progress.stop()
      stopListening()
    }
    report(out, migrated, controller.signal.aborted)
  })
}

/** `fastify-tenancy migrate`, `migrate status`, `migrate down`. */
export function migrateCommand (program: Command): void {
  const globals = (command: Command): GlobalOptions => command.optsWithGlobals<GlobalOptions>()
  const migrate = program.command('migrate').description('migrate every target (host, shared tables, schemas, isolated databases) to the latest')
    .option('--only <names>', 'only the targets of these instances (names or ids, comma-separated)', list)
    .option('--concurrency <n>', 'targets at once (default: maxPools × half of pool.max)', positiveInteger)
    .option('--to <migration>', 'migrate each target up or down until this migration is its last (the instance set)')
    .action(async (flags: MigrateFlags, command: Command) => { await run(globals(command), flags, 'up') })

  migrate.command('status').description("each target's version and pending migrations")
    .option('--only <names>', 'only the targets of these instances (names or ids, comma-separated)', list)
    .action(async (_flags: MigrateFlags, command: Command) => {
      // --only may be parsed as migrate's own option: read both levels.
      const all = globals(command)
      const flags = all as MigrateFlags
      const out = new Output(all)
      await withTenancy(all, async ({ tenancy }) => {
        const only = namesOrIds(flags.only, (name) => tenancy.instances.byName(name))
        const states = await tenancy.migrationStatus(only === undefined ? {} : { only })
        const failed = states.some((state) => state.error !== undefined)
        process.exitCode = failed ? EXIT.failed : EXIT.ok
        if (out.json) {
          out.document({
            ok: !failed,
            targets: states.map((state) => ({
              target: state.target, kind: state.kind, set: state.set, instances: state.instances, version: state.version,
              executed: state.executed, pending: state.pending, ...(state.error === undefined ? {} : { error: describeError(state.error) }),
            })),
          })
          return
        }
        out.table(['target', 'instances', 'version', 'pending', 'detail'], states.map((state) => [
          state.target, instancesOf(state.instances), state.version ?? '-',
          state.pending.length === 0 ? out.green('0') : out.red(String(state.pending.length)),
          state.error !== undefined ? describeError(state.error) : state.pending.join(', '),
        ]))
      })
    })

  migrate.command('down').description("revert each target's last migration (or to --to, or all with --all)")
    .option('--only <names>', 'only the targets of these instances (names or ids, comma-separated)', list)
    .option('--concurrency <n>', 'targets at once', positiveInteger)
    .option('--to <migration>', 'revert until this migration is the last applied')
    .option('--all', 'revert every migration')
    .option('--set <set>', 'instance or host (default: instance)')
    .action(async (_flags: MigrateFlags, command: Command) => {
      // --only, --concurrency and --to may be parsed as migrate's own options: read both levels.
      const all = globals(command)
      await run(all, all as MigrateFlags, 'down')
    })
}
