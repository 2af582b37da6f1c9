// The public types, checked as a user's compiler sees them: built to dist/
// and imported by package name. Each folder under test/types is compiled on
// its own, since declaration merging applies to a whole program.
import t from 'tap'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import path from 'node:path'

const run = promisify(execFile)
const root = path.resolve(import.meta.dirname, '..')
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')

// pg-boss 12.34 to 12.38 ship declarations that name a type their types.d.ts
// does not export (ResolvedConstructorOptions). That is pg-boss's defect, not
// ours, and only this one diagnostic of pg-boss's own files is set aside: our
// declarations stay checked with skipLibCheck off, as a strict user's are.
const knownForeign = /^node_modules\/pg-boss\/dist\/[\w/]+\.d\.ts\(\d+,\d+\): error TS2724: .*'ResolvedConstructorOptions'/

async function compile (project: string): Promise<string> {
  try {
    await run(process.execPath, [tsc, '-p', project], { cwd: root })
    return ''
  } catch (err) {
    const out = String((err as { stdout?: string }).stdout ?? err)
    return out.split('\n').filter((line) => line !== '' && !knownForeign.test(line)).join('\n')
  }
}

t.test('the package builds', async (t) => {
  t.equal(await compile('tsconfig.json'), '')
})

t.test('declared instance names are checked', async (t) => {
  t.equal(await compile('test/types/named'), '')
})

t.test('without declared names any string is accepted', async (t) => {
  t.equal(await compile('test/types/open'), '')
})

t.test('every export path type-checks by package name', async (t) => {
  t.equal(await compile('test/types/exports'), '')
})

t.test('at run time every export path gives what its types say', async (t) => {
  t.equal(await compile('tsconfig.json'), '', 'built')
  const root = await import('fastify-tenancy' as string)
  const lib = await import('fastify-tenancy/lib' as string)
  t.equal(typeof root.default, 'function', 'the plugin is the default export')
  t.equal(root.tenancy, root.default, 'and the named export tenancy')
  t.equal(root.createTenancy, lib.createTenancy, 'both paths share one createTenancy')
  t.notOk('tenancy' in lib, 'fastify-tenancy/lib has no plugin, as its types say')
  t.notOk('default' in lib, 'and no default export')
  for (const internal of ['setLastCreated', 'forgetTenancy', 'withSettings', 'runInContext', 'enterContext', 'contextOf', 'withoutContext', 'RoutedClient', 'isConnectionError', 'InstanceFilterTransformer']) {
    t.notOk(internal in root, `${internal} is not public`)
  }
})
