import { createInterface } from 'node:readline/promises'
import type { Command } from 'commander'
import { UnknownInstanceError, quote } from '../lib/errors.js'
import type { Instance, InstanceMode } from '../lib/instances/instance.js'
import type { Tenancy } from '../lib/tenancy.js'
import type { CreateInstanceInput } from '../lib/lifecycle/instance-lifecycle.js'
import { withTenancy } from './load-config.js'
import { CliError, EXIT, Output, type GlobalOptions } from './output.js'

/** An instance as the command line shows it: its fields, and its state, which JSON.stringify would leave out. */
export function instanceView (instance: Instance): Record<string, unknown> {
  return {
    id: instance.id,
    name: instance.name,
    title: instance.title,
    mode: instance.mode,
    datasource: instance.datasource,
    schema: instance.schema,
    role: instance.role,
    disabled: instance.disabled,
    state: instance.state ?? 'ready',
    ...(instance.error === undefined ? {} : { error: instance.error }),
    config: instance.config,
  }
}

/** The instance named `nameOrId` (a name first; digits alone may be an id), disabled or not; unknown is `TENANCY_UNKNOWN_INSTANCE`. */
export function findInstance (tenancy: Tenancy, nameOrId: string): Instance {
  const instance = tenancy.instances.byName(nameOrId) ?? (/^\d+$/.test(nameOrId) ? tenancy.instances.byId(Number(nameOrId)) : undefined)
  if (instance === undefined) throw new UnknownInstanceError(quote(nameOrId))
  return instance
}

function parseConfig (text: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    throw new CliError(`--config-json must be a JSON object, not ${quote(text)}.`, EXIT.usage)
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new CliError(`--config-json must be a JSON object, not ${quote(text)}.`, EXIT.usage)
  return value as Record<string, unknown>
}

function showOne (out: Output, instance: Instance, extra: Record<string, unknown> = {}): void {
  const view = { ...instanceView(instance), ...extra }
  if (out.json) {
    out.document({ instance: instanceView(instance), ...extra })
    return
  }
  for (const [key, value] of Object.entries(view)) out.line(`${key.padEnd(13)}${typeof value === 'string' ? value : JSON.stringify(value)}`)
}

async function confirm (question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stdout })
  try {
    const answer = await rl.question(question)
    return /^y(es)?$/i.test(answer.trim())
  } finally {
    rl.close()
  }
}

/** `fastify-tenancy instances list|show|create|update|disable|enable|remove`. */
export function instancesCommand (program: Command): void {
  const instances = program.command('instances').description('list, show, create, change and remove instances')
  const globals = (command: Command): GlobalOptions => command.optsWithGlobals<GlobalOptions>()

  instances.command('list').description('every instance, with its mode and state')
    .action(async (_options: unknown, command: Command) => {
      const out = new Output(globals(command))
      await withTenancy(globals(command), async ({ tenancy }) => {
        const list = tenancy.instances.list()
        if (out.json) {
          out.document({ instances: list.map(instanceView) })
          return
        }
        out.table(['id', 'name', 'mode', 'state', 'disabled', 'title', 'where'], list.map((instance) => [
          String(instance.id), instance.name === '' ? "''" : instance.name, instance.mode, instance.state ?? 'ready',
          instance.disabled ? out.red('yes') : 'no', instance.title,
          instance.schema !== null ? `${instance.datasource}.${instance.schema}` : instance.datasource,
        ]))
        out.line(out.dim(`${list.length} instance${list.length === 1 ? '' : 's'}`))
      })
    })

  instances.command('show').description('one instance in full').argument('<name>', 'its name (or id)')
    .action(async (name: string, _options: unknown, command: Command) => {
      const out = new Output(globals(command))
      await withTenancy(globals(command), async ({ tenancy }) => { showOne(out, findInstance(tenancy, name)) })
    })

  instances.command('create').description('create and provision an instance (a databaseStore is needed)').argument('<name>', 'its name')
    .option('--mode <mode>', 'shared, schema or isolated (default: shared, or the template\'s with --from)')
    .option('--from <template>', 'a copy of this schema or isolated instance: its rows, sequences and migration state')
    .option('--title <title>', 'display title (default: the name)')
    .option('--config-json <json>', 'its config, a JSON object')
    .option('--password <password>', "the administrator's initial password (default: generated, printed once)")
    .option('--role [role]', 'schema mode: a role of its own (named like the schema, or the name given)')
    .option('--schema <schema>', 'schema mode: the schema (default: tenant_<name>)')
    .option('--datasource <datasource>', 'schema mode: the datasource holding the schema (default: default)')
    .option('--server <server>', 'isolated mode: one of servers (default: the first)')
    .option('--database <database>', 'isolated mode: the database (default: tenant_<name>)')
    .action(async (name: string, options: Record<string, string | boolean | undefined>, command: Command) => {
      const out = new Output(globals(command))
      const mode = (options.mode ?? (options.from === undefined ? 'shared' : undefined)) as string | undefined
      if (mode !== undefined && !['shared', 'schema', 'isolated'].includes(mode)) throw new CliError(`--mode must be shared, schema or isolated, not ${quote(mode)}.`, EXIT.usage)
      const input: CreateInstanceInput = { name, ...(mode === undefined ? {} : { mode: mode as InstanceMode }) }
      if (options.from !== undefined) input.from = options.from as string
      if (options.title !== undefined) input.title = options.title as string
      if (options.configJson !== undefined) input.config = parseConfig(options.configJson as string)
      if (options.password !== undefined) input.password = options.password as string
      if (options.role !== undefined) input.role = options.role
      for (const key of ['schema', 'datasource', 'server', 'database'] as const) if (options[key] !== undefined) input[key] = options[key] as string
      await withTenancy(globals(command), async ({ tenancy }) => {
        const created = await tenancy.createInstance(input)
        const secrets = { password: created.password, ...(created.rolePassword === undefined ? {} : { rolePassword: created.rolePassword }) }
        showOne(out, created.instance, secrets)
        out.line(out.dim('The passwords are shown only now.'))
      })
    })

  instances.command('update').description("change an instance's title or config").argument('<name>', 'its name (or id)')
    .option('--title <title>', 'display title')
    .option('--config-json <json>', 'its config, a JSON object (replaces the whole config)')
    .action(async (name: string, options: { title?: string, configJson?: string }, command: Command) => {
      const out = new Output(globals(command))
      if (options.title === undefined && options.configJson === undefined) throw new CliError('instances update needs --title or --config-json.', EXIT.usage)
      const patch = { ...(options.title === undefined ? {} : { title: options.title }), ...(options.configJson === undefined ? {} : { config: parseConfig(options.configJson) }) }
      await withTenancy(globals(command), async ({ tenancy }) => {
        showOne(out, await tenancy.updateInstance(findInstance(tenancy, name).id, patch))
      })
    })

  for (const [verb, disabled] of [['disable', true], ['enable', false]] as const) {
    instances.command(verb).description(disabled ? 'refuse its requests and jobs (403), data kept' : 'serve it again').argument('<name>', 'its name (or id)')
      .action(async (name: string, _options: unknown, command: Command) => {
        const out = new Output(globals(command))
        await withTenancy(globals(command), async ({ tenancy }) => {
          showOne(out, await tenancy.updateInstance(findInstance(tenancy, name).id, { disabled }))
        })
      })
  }

  instances.command('remove').description('disable and remove an instance; with --drop its data goes too').argument('<name>', 'its name (or id)')
    .option('--drop', 'also delete its rows, schema and role, or database')
    .option('--yes', 'do not ask before --drop (needed when not on a terminal)')
    .action(async (name: string, options: { drop?: boolean, yes?: boolean }, command: Command) => {
      const out = new Output(globals(command))
      const drop = options.drop === true
      await withTenancy(globals(command), async ({ tenancy }) => {
        const instance = findInstance(tenancy, name)
        if (drop && options.yes !== true) {
          if (!(process.stdin.isTTY === true && process.stdout.isTTY === true)) {
            throw new CliError(`remove --drop deletes the data of instance ${quote(instance.name)} for good: confirm with --yes.`, EXIT.usage)
          }
          if (!await confirm(`Delete instance ${quote(instance.name)} (id ${instance.id}, ${instance.mode}) and all its data? [y/N] `)) {
            throw new CliError('Nothing was removed.', EXIT.failed)
          }
        }
        await tenancy.removeInstance(instance.id, { drop })
        if (out.json) out.document({ removed: instanceView(instance), dropped: drop })
        else out.line(`Removed instance ${quote(instance.name)} (id ${instance.id})${drop ? ' and its data' : '; its data is kept (remove --drop deletes it)'}.`)
      })
    })
}
