import path from 'node:path'
import { pathToFileURL } from 'node:url'
import type { Command } from 'commander'
import type { Kysely } from 'kysely'
import type { Instance } from '../lib/instances/instance.js'
import type { Tenancy } from '../lib/tenancy.js'
import { findInstance } from './instances-command.js'
import { withTenancy } from './load-config.js'
import { CliError, EXIT, Output, describeError, list, positiveInteger, type GlobalOptions } from './output.js'
import { Progress, interruptible } from './progress.js'

/** What the default export of a `run` module is called with, once per instance, inside its context. */
export interface RunContext {
  readonly instance: Instance
  /** The tenancy's Kysely: confined to the instance. */
  readonly db: Kysely<any>
  readonly tenancy: Tenancy
}

type RunStatus = 'success' | 'error' | 'skipped' | 'not-reached'

interface RunResult {
  instance: string
  id: number
  status: RunStatus
  result?: unknown
  error?: string
  millis?: number
}

async function loadScript (file: string): Promise<(context: RunContext) => unknown> {
  let module: { default?: unknown }
  try {
    module = await import(pathToFileURL(file).href) as { default?: unknown }
  } catch (err) {
    throw new CliError(`The module ${file} could not be loaded: ${describeError(err)}`, EXIT.usage, { cause: err })
  }
  if (typeof module.default !== 'function') throw new CliError(`The module ${file} must have a function as its default export.`, EXIT.usage)
  return module.default as (context: RunContext) => unknown
}

/** A value for the JSON document: what JSON cannot hold becomes its description. */
function serialisable (value: unknown): unknown {
  if (value === undefined) return undefined
  try {
    return JSON.parse(JSON.stringify(value, (_key, item: unknown) => typeof item === 'bigint' ? item.toString() : item))
  } catch {
    return String(value)
  }
}

/**
 * `fastify-tenancy run <module>`: the module's default export once per
 * instance, each call inside `runAsInstance`, at most `--concurrency` at once.
 * Disabled instances and those not ready are skipped unless `--only` names them.
 */
export function runCommand (program: Command): void {
  program.command('run').description("call a module's default export once per instance, in its context").argument('<module>', 'a .js, .mjs or .ts file')
    .option('--only <names>', 'only these instances (names or ids, comma-separated)', list)
    .option('--concurrency <n>', 'instances at once (default: 1)', positiveInteger)
    .action(async (module: string, flags: { only?: string[], concurrency?: number }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const out = new Output(globals)
      const file = path.resolve(module)
      const script = await loadScript(file)
      await withTenancy(globals, async ({ tenancy }) => {
        const named = flags.only !== undefined
        const chosen = named ? flags.only!.map((name) => findInstance(tenancy, name)) : [...tenancy.instances.list()]
        const results: RunResult[] = chosen.map((instance) => ({ instance: instance.name, id: instance.id, status: 'not-reached' }))
        const progress = new Progress(!out.json, 'instances')
        progress.begin(chosen.length)
        const controller = new AbortController()
        const stopListening = interruptible(controller, () => {
          process.stderr.write('\nInterrupted: no new instance starts; running ones finish (Ctrl-C again to quit at once).\n')
        })
        const db = tenancy.kysely()
        let next = 0
        const worker = async (): Promise<void> => {
          while (next < chosen.length && !controller.signal.aborted) {
            const index = next++
            const instance = chosen[index]!
            const result = results[index]!
            if (!named && (instance.disabled || (instance.state ?? 'ready') !== 'ready')) {
              result.status = 'skipped'
              result.error = instance.disabled ? 'disabled' : `not ready (${instance.state})`
              progress.end(instance.name, false)
              continue
            }
            progress.start(instance.name, chosen.length)
            const started = Date.now()
            try {
              const value = await tenancy.runAsInstance(instance.id, async () => await script({ instance, db, tenancy }))
              result.status = 'success'
              const json = serialisable(value)
              if (json !== undefined) result.result = json
            } catch (err) {
              result.status = 'error'
              result.error = describeError(err)
            }
            result.millis = Date.now() - started
            progress.end(instance.name, result.status === 'error')
          }
        }
        try {
          await Promise.all(Array.from({ length: Math.min(flags.concurrency ?? 1, Math.max(1, chosen.length)) }, worker))
        } finally {
          progress.stop()
          stopListening()
        }
        const interrupted = controller.signal.aborted
        const failed = results.filter((result) => result.status === 'error').length
        process.exitCode = interrupted ? EXIT.interrupted : failed > 0 ? EXIT.failed : EXIT.ok
        const notReached = results.filter((result) => result.status === 'not-reached').map((result) => result.instance)
        if (out.json) {
          out.document({ ok: failed === 0 && !interrupted, interrupted, results, notReached })
          return
        }
        out.table(['instance', 'id', 'status', 'ms', 'result'], results.map((result) => [
          result.instance === '' ? "''" : result.instance, String(result.id),
          result.status === 'success' ? out.green(result.status) : result.status === 'error' ? out.red(result.status) : result.status,
          result.millis === undefined ? '' : String(result.millis),
          result.error ?? (result.result === undefined ? '' : JSON.stringify(result.result)),
        ]))
        out.line(`${results.length} instances: ${results.filter((result) => result.status === 'success').length} succeeded, ${failed} failed, ${results.filter((result) => result.status === 'skipped').length} skipped, ${notReached.length} not reached.`)
        if (interrupted && notReached.length > 0) out.line(`Interrupted; not reached: ${notReached.join(', ')}.`)
      })
    })
}
