import type { Command } from 'commander'
import { withTenancy } from './load-config.js'
import { EXIT, Output, type GlobalOptions } from './output.js'

/** `fastify-tenancy doctor`: every check of lib/doctor.ts, pending migrations included; exit 1 when something is wrong. */
export function doctorCommand (program: Command): void {
  program.command('doctor').description('check the set-up: row-level security, indexes, unique constraints, schemas, roles, reachability, pending migrations, connections')
    .option('--no-migrations', 'do not read the migration tables')
    .action(async (flags: { migrations: boolean }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const out = new Output(globals)
      await withTenancy(globals, async ({ tenancy }) => {
        const { doctor } = await import('../lib/doctor.js')
        const findings = await doctor(tenancy, { migrations: flags.migrations })
        process.exitCode = findings.length === 0 ? EXIT.ok : EXIT.failed
        if (out.json) {
          out.document({ ok: findings.length === 0, findings })
          return
        }
        if (findings.length === 0) {
          out.line(out.green('No problems found.'))
          return
        }
        for (const finding of findings) {
          out.line(`${out.red(finding.code)}  ${finding.target}`)
          out.line(`  ${finding.message}`)
          out.line(`  ${out.dim('fix:')} ${finding.fix}`)
        }
        out.line(`${findings.length} problem${findings.length === 1 ? '' : 's'} found.`)
      })
    })
}
