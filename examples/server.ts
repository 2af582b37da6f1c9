// `npm start` runs this: the demo of examples/demo-app.ts on DATABASE_URL.
import { buildDemo } from './demo-app.js'

const url = process.env.DATABASE_URL
if (!url) throw new Error('Set DATABASE_URL, or run `npm start`, which starts an embedded PostgreSQL.')
const port = Number(process.env.PORT ?? 3000)
const { app, migrations } = await buildDemo(url, { level: process.env.LOG_LEVEL ?? 'info' })
for (const target of migrations.targets) {
  const ran = target.results.filter((result) => result.status === 'Success').map((result) => result.migrationName)
  app.log.info(`migrations: ${target.target} (${target.instances.map((name) => JSON.stringify(name)).join(', ')}): ${ran.length > 0 ? `ran ${ran.join(', ')}` : 'up to date'}`)
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.log.info(`${signal}: closing`)
    app.close().then(() => process.exit(0), () => process.exit(1))
  })
}

await app.listen({ port, host: '127.0.0.1' })
const origin = `http://127.0.0.1:${port}`
console.log(`
fastify-tenancy demo on ${origin}

  Each instance sees only its own students:
    curl ${origin}/students                                       # the default instance ''
    curl -H 'x-instance-name: shareTest' ${origin}/students       # by header
    curl '${origin}/students?x-instance-name=isolateTest'          # by query field (its own database)
    curl -H 'Host: shareTest.localhost' ${origin}/students         # by host name

  Add one:
    curl -X POST -H 'content-type: application/json' -H 'x-instance-name: shareTest' \\
         -d '{"name":"Alan"}' ${origin}/students

  Unknown instance (404) and a bad name (400):
    curl -i -H 'x-instance-name: nobody' ${origin}/students
    curl -i -H 'x-instance-name: ../etc' ${origin}/students

Ctrl-C stops it.
`)
