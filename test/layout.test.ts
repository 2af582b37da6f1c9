// The layout the README describes, checked from the source: lib/ knows
// nothing of Fastify, plugin/ is the only code that does, and the modules'
// imports (type imports included) form no circle.
import t from 'tap'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'

const root = path.resolve(import.meta.dirname, '..')

async function sources (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(path.join(root, dir), { withFileTypes: true })) {
    const file = path.join(dir, entry.name)
    if (entry.isDirectory()) out.push(...await sources(file))
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(file)
  }
  return out
}

const IMPORT = /^\s*(?:import|export)\s+(?:type\s+)?(?:[^'"]*?\s+from\s+)?['"]([^'"]+)['"]/gm

/** Each module's imports: relative ones as repository paths, packages by name. */
async function graph (): Promise<Map<string, { local: string[], packages: string[] }>> {
  const modules = new Map<string, { local: string[], packages: string[] }>()
  for (const file of [...await sources('lib'), ...await sources('plugin'), ...await sources('types')]) {
    const text = await readFile(path.join(root, file), 'utf8')
    const local: string[] = []
    const packages: string[] = []
    for (const [, specifier] of text.matchAll(IMPORT)) {
      if (specifier!.startsWith('.')) local.push(path.join(path.dirname(file), specifier!).replace(/\.js$/, '.ts'))
      else packages.push(specifier!.startsWith('@') ? specifier!.split('/').slice(0, 2).join('/') : specifier!.split('/')[0]!)
    }
    modules.set(file, { local, packages })
  }
  return modules
}

const modules = await graph()

t.test('lib/ knows nothing of Fastify; plugin/ and types/ are the only code that does', async (t) => {
  const fastifyish = (name: string): boolean => name === 'fastify' || name.startsWith('@fastify/') || name === 'fastify-plugin'
  for (const [file, { local, packages }] of modules) {
    if (!file.startsWith('lib/')) continue
    t.same(packages.filter((name) => fastifyish(name) && name !== '@fastify/error'), [], `${file} imports no Fastify package (but @fastify/error)`)
    t.same(local.filter((target) => !target.startsWith('lib/')), [], `${file} imports only lib/`)
  }
  t.ok([...modules.keys()].some((file) => file.startsWith('plugin/') && modules.get(file)!.packages.includes('fastify-plugin')), 'the plugin is made with fastify-plugin')
})

t.test('no import circle among the modules', async (t) => {
  const cycles: string[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const stack: string[] = []
  const visit = (file: string): void => {
    if (state.get(file) === 'done') return
    if (state.get(file) === 'visiting') {
      cycles.push([...stack.slice(stack.indexOf(file)), file].join(' → '))
      return
    }
    state.set(file, 'visiting')
    stack.push(file)
    for (const target of modules.get(file)?.local ?? []) if (modules.has(target)) visit(target)
    stack.pop()
    state.set(file, 'done')
  }
  for (const file of modules.keys()) visit(file)
  t.same(cycles, [], 'every import chain ends')
  t.ok(modules.size > 20, `read ${modules.size} modules`)
})
