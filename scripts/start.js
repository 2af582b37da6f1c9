// `npm start`: runs the demo (examples/server.ts, built to dist/) on the
// PostgreSQL at DATABASE_URL, or on an embedded one whose data stays in
// .data/demo between runs. Ctrl-C stops both.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { startEmbeddedPostgres } from './embedded-postgres.js'

const root = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '..')
const env = { ...process.env }
let server
if (!env.DATABASE_URL) {
  server = await startEmbeddedPostgres({ dir: path.join(root, '.data', 'demo'), fresh: false })
  env.DATABASE_URL = server.url
  console.log(`Embedded PostgreSQL on port ${server.port}, data in .data/demo`)
}
const child = spawn(process.execPath, [path.join(root, 'dist', 'examples', 'server.js')], { stdio: 'inherit', env })
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => { child.kill(signal) })
const [code] = await once(child, 'exit')
await server?.stop()
process.exit(code ?? 0)
