// The command line as users run it: built once per change of the sources
// (every cli test file shares the build, under a lock), run as a child process.
import { execFile, spawn } from 'node:child_process'
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

const run = promisify(execFile)
const root = path.resolve(import.meta.dirname, '..', '..')
/** Not dist/: test/types.test.ts rebuilds that while other files run. */
const out = path.join(root, '.data', 'cli-build')
const stamp = path.join(out, '.built')
const lock = `${out}.lock`

async function newest (dir: string): Promise<number> {
  let latest = 0
  for (const entry of await readdir(path.join(root, dir), { withFileTypes: true })) {
    const file = path.join(dir, entry.name)
    if (entry.isDirectory()) latest = Math.max(latest, await newest(file))
    else if (entry.name.endsWith('.ts')) latest = Math.max(latest, (await stat(path.join(root, file))).mtimeMs)
  }
  return latest
}

async function upToDate (): Promise<boolean> {
  try {
    const built = (await stat(stamp)).mtimeMs
    const sources = Math.max(...await Promise.all(['lib', 'cli', 'plugin', 'types'].map(newest)), (await stat(path.join(root, 'tsconfig.json'))).mtimeMs)
    return built >= sources
  } catch {
    return false
  }
}

let building: Promise<void> | undefined

/** Builds the package into .data/cli-build unless it is up to date; one build at a time across test files. */
export async function buildCli (): Promise<void> {
  building ??= (async () => {
    await mkdir(path.dirname(out), { recursive: true })
    for (let waited = 0; ; waited += 200) {
      try {
        await mkdir(lock)
        break
      } catch {
        // A build that died leaves its lock: after two minutes it is stale.
        if (waited > 120_000) await rm(lock, { recursive: true, force: true })
        await sleep(200)
      }
    }
    try {
      if (await upToDate()) return
      // The bin and what it imports only, with the package's compiler options.
      const project = path.join(root, '.data', 'cli-build.tsconfig.json')
      await writeFile(project, JSON.stringify({
        extends: '../tsconfig.json',
        compilerOptions: { outDir: 'cli-build', rootDir: '..', declaration: false, sourceMap: false },
        include: ['../cli', '../lib/index.ts'],
      }))
      await run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', project], { cwd: root })
      await writeFile(stamp, new Date().toISOString())
    } finally {
      await rm(lock, { recursive: true, force: true })
    }
  })()
  await building
}

/** The built bin and the built framework-free entry, for config files to import. */
export const cliBin = path.join(out, 'cli', 'index.js')
export const libEntry = path.join(out, 'lib', 'index.js')

export interface CliRun {
  code: number | null
  stdout: string
  stderr: string
}

/** Runs the built bin with `args` in `cwd`; never throws for an exit code. */
export async function cli (args: readonly string[], options: { cwd: string, env?: NodeJS.ProcessEnv, input?: string } ): Promise<CliRun> {
  await buildCli()
  return await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliBin, ...args], { cwd: options.cwd, env: { ...process.env, NO_COLOR: '1', ...options.env }, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    child.on('error', reject)
    child.on('close', (code) => { resolve({ code, stdout, stderr }) })
    child.stdin.end(options.input ?? '')
  })
}

/** Runs the bin and parses its stdout as the one JSON document it must be. */
export async function cliJson<T = any> (args: readonly string[], options: { cwd: string, env?: NodeJS.ProcessEnv }): Promise<CliRun & { json: T }> {
  const result = await cli(args, options)
  let json: T
  try {
    json = JSON.parse(result.stdout) as T
  } catch {
    throw new Error(`not one JSON document (exit ${result.code}): ${result.stdout}\n${result.stderr}`)
  }
  return { ...result, json }
}
