import { existsSync } from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import type { Tenancy, TenancyOptions } from '../lib/tenancy.js'
import { CliError, EXIT, describeError, type GlobalOptions } from './output.js'

/** The files looked for in the working directory when `--config` is not given, in this order. */
export const DEFAULT_CONFIG_FILES = Object.freeze(['tenancy.config.js', 'tenancy.config.ts', 'tenancy.config.mjs'])

/** The config file: `--config`, or the first default file in `cwd`. */
export function configFile (options: GlobalOptions, cwd = process.cwd()): string {
  if (options.config !== undefined) {
    const file = path.resolve(cwd, options.config)
    if (!existsSync(file)) throw new CliError(`The config file ${file} does not exist.`, EXIT.usage)
    return file
  }
  for (const name of DEFAULT_CONFIG_FILES) {
    const file = path.join(cwd, name)
    if (existsSync(file)) return file
  }
  throw new CliError(`No config file: give --config <file>, or put one of ${DEFAULT_CONFIG_FILES.join(', ')} in ${cwd}.`, EXIT.usage)
}

/**
 * Imports the config module and returns the `createTenancy` options: its
 * default export, or what that export returns when it is a function (which
 * may be async). A `.ts` file loads without a build step where Node.js strips
 * types by itself (22.18 and later, 23.6 and later).
 */
export async function loadConfig (file: string): Promise<TenancyOptions> {
  let module: { default?: unknown }
  try {
    module = await import(pathToFileURL(file).href) as { default?: unknown }
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code === 'ERR_UNKNOWN_FILE_EXTENSION' && file.endsWith('.ts')) {
      throw new CliError(`The config file ${file} is TypeScript, which this Node.js ${process.version} cannot load by itself: use Node.js 22.18 or later, run with NODE_OPTIONS=--experimental-strip-types, or write it in JavaScript.`, EXIT.usage, { cause: err })
    }
    throw new CliError(`The config file ${file} could not be loaded: ${describeError(err)}`, EXIT.usage, { cause: err })
  }
  let options = module.default
  if (typeof options === 'function') {
    try {
      options = await (options as () => unknown)()
    } catch (err) {
      throw new CliError(`The config file ${file}'s default export threw: ${describeError(err)}`, EXIT.usage, { cause: err })
    }
  }
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new CliError(`The config file ${file} must have a default export: the createTenancy options, or a function returning them.`, EXIT.usage)
  }
  return options as TenancyOptions
}

/** The tenancy a command works on, and where it came from. */
export interface LoadedTenancy {
  readonly tenancy: Tenancy
  readonly options: TenancyOptions
  readonly file: string
}

/**
 * Loads the config and creates its tenancy. Invalid options are a usage error
 * naming the file (exit 2); a database that cannot be reached is a failure
 * (exit 1). The start-up doctor stays off unless the config asks for it: the
 * `doctor` command runs the full check.
 */
export async function openTenancy (globals: GlobalOptions): Promise<LoadedTenancy> {
  const file = configFile(globals)
  const options = await loadConfig(file)
  // Loaded here, not at the top: help and usage errors need none of it.
  const { createTenancy } = await import('../lib/tenancy.js')
  try {
    const tenancy = await createTenancy({ ...options, doctor: options.doctor ?? false })
    return { tenancy, options, file }
  } catch (err) {
    const code = (err as { code?: unknown }).code
    const exitCode = code === 'TENANCY_INVALID_OPTIONS' ? EXIT.usage : EXIT.failed
    throw new CliError(`The config file ${file} does not give a working tenancy: ${describeError(err)}`, exitCode, { cause: err })
  }
}

/** Runs `work` on the config's tenancy and closes it afterwards, whatever happens. */
export async function withTenancy<T> (globals: GlobalOptions, work: (loaded: LoadedTenancy) => Promise<T>): Promise<T> {
  const loaded = await openTenancy(globals)
  try {
    return await work(loaded)
  } finally {
    await loaded.tenancy.close()
  }
}
