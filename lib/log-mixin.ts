import { currentContext, type TenancyContext } from './context.js'

/** Options of {@link instanceLogMixin}. */
export interface InstanceLogMixinOptions {
  /** Read this tenancy's frame only. Defaults to the innermost frame of any tenancy. */
  tenancy?: { context (): TenancyContext | undefined }
}

/** The fields a log line gets: `instance` (a name), `host: true` in host context, `unscoped: true` inside `unscoped()`. */
export type InstanceLogFields = { instance?: string, host?: true, unscoped?: true }

interface BoundLogger { bindings?: () => Record<string, unknown> }

/**
 * A pino `mixin`: every line logged inside an instance's context carries
 * `instance` (its name), whoever logs it: a request, a job run by
 * `tenancy.jobs()`, a script inside `runAsInstance`. Host context adds
 * `host: true`, `unscoped()` adds `unscoped: true`; no context adds nothing.
 * A line of a child logger already bound to the same instance (the plugin's
 * `request.log`) gets nothing more, so the key is written once; bound to
 * another one (a `runAsInstance` inside a request), it gets the current
 * instance as well, last, which is the value a JSON parser keeps.
 *
 * ```ts
 * const app = Fastify({ logger: { mixin: instanceLogMixin() } })
 * await tenancy.runAsInstance('acme', async () => app.log.info('nightly export done'))
 * // {"level":30,…,"instance":"acme","msg":"nightly export done"}
 * ```
 */
export function instanceLogMixin (options: InstanceLogMixinOptions = {}): (mergeObject: object, level: number, logger?: BoundLogger) => InstanceLogFields {
  const tenancy = options.tenancy
  // A child logger's bindings never change: read them once per logger, not once per line.
  const bound = new WeakMap<object, unknown>()
  const boundInstance = (logger: BoundLogger | undefined): unknown => {
    if (logger === undefined || typeof logger.bindings !== 'function') return undefined
    if (!bound.has(logger)) bound.set(logger, logger.bindings().instance)
    return bound.get(logger)
  }
  // A new object every time: pino's default merge strategy assigns the line's own fields onto it.
  return (_mergeObject, _level, logger) => {
    const context = tenancy !== undefined ? tenancy.context() : currentContext()
    if (context === undefined) return {}
    if (context.kind === 'host') return { host: true }
    const fields: InstanceLogFields = {}
    const name = context.instance?.name
    if (name !== undefined && boundInstance(logger) !== name) fields.instance = name
    if (context.kind === 'unscoped') fields.unscoped = true
    return fields
  }
}
