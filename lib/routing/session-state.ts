import pg from 'pg'
import { InvalidOptionsError } from '../errors.js'
import type { TenancyContext } from '../context.js'

/**
 * Extra session settings for the connections the routing pool hands out,
 * computed from the context at each checkout. Keys are PostgreSQL setting
 * names (custom ones need a dot: `tenancy.iid`); values are strings. A key
 * returned once and missing later is set to `''`, so no value outlives the
 * checkout that wanted it. Return the same object shape every time and keep it
 * cheap: it runs for every query outside a transaction.
 *
 * ```ts
 * // what row-level security policies read with current_setting('tenancy.iid', true)
 * const settings: SessionSettings = (context) => ({ 'tenancy.iid': String(context?.instance?.id ?? '') })
 * ```
 */
export type SessionSettings = (context: TenancyContext | undefined) => Readonly<Record<string, string>>

/** What a connection's session should carry, or carries. */
export interface SessionTarget {
  /** The only schema on `search_path`, or `null` for the server's default path. */
  readonly schema: string | null
  /** The role after `SET ROLE`, or `null` for the login role. */
  readonly role: string | null
  /** Extra settings; see {@link SessionSettings}. */
  readonly settings: Readonly<Record<string, string>>
}

const NO_SETTINGS: Readonly<Record<string, string>> = Object.freeze({})
const SETTING_NAME = /^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?$/
// Statements that may change the session behind our back: after one, the
// remembered state is no longer trusted and everything is applied again.
const CHANGES_SESSION = /^\s*(?:set|reset|discard)\b|set_config\s*\(/i

/** The session a checkout in `context` needs. */
export function sessionTarget (context: TenancyContext | undefined, settings?: SessionSettings): SessionTarget {
  const instance = context?.instance
  return {
    schema: instance?.schema ?? null,
    role: instance?.role ?? null,
    settings: settings ? settings(context) : NO_SETTINGS,
  }
}

/**
 * What one pooled connection's session carries, as far as this library set it.
 * A new connection starts at the server defaults, so the shared-mode path
 * (no schema, no role, no settings) never costs a round trip; a checkout that
 * needs something else sends only the differences, in one round trip.
 *
 * ```ts
 * const state = new SessionState()
 * const sql = state.changesTo({ schema: 'tenant_acme', role: null, settings: {} })
 * // 'SET search_path TO "tenant_acme"'
 * if (sql) { await client.query(sql); state.applied(target) }
 * ```
 */
export class SessionState {
  #schema: string | null = null
  #role: string | null = null
  #settings: Readonly<Record<string, string>> = NO_SETTINGS
  /** False after a statement that may have changed the session: the next checkout applies everything. */
  #trusted = true

  /** The SQL (simple protocol, several statements) that turns this session into `target`, or `''` when it already is. */
  changesTo (target: SessionTarget): string {
    const trusted = this.#trusted
    if (trusted && target.schema === this.#schema && target.role === this.#role && target.settings === this.#settings) return ''
    const statements: string[] = []
    if (!trusted || target.role !== this.#role) {
      statements.push(target.role === null ? 'RESET ROLE' : `SET ROLE ${pg.escapeIdentifier(target.role)}`)
    }
    if (!trusted || target.schema !== this.#schema) {
      statements.push(target.schema === null ? 'RESET search_path' : `SET search_path TO ${pg.escapeIdentifier(target.schema)}`)
    }
    const calls: string[] = []
    for (const name of Object.keys(target.settings)) {
      const value = target.settings[name]
      if (typeof value !== 'string') throw new InvalidOptionsError(`the session setting ${JSON.stringify(name)} must be a string, not ${typeof value}`)
      if (trusted && this.#settings[name] === value) continue
      if (!SETTING_NAME.test(name)) throw new InvalidOptionsError(`${JSON.stringify(name)} is not a valid session setting name`)
      calls.push(`set_config(${pg.escapeLiteral(name)}, ${pg.escapeLiteral(value)}, false)`)
    }
    for (const name of Object.keys(this.#settings)) {
      if (!(name in target.settings) && (!trusted || this.#settings[name] !== '')) calls.push(`set_config(${pg.escapeLiteral(name)}, '', false)`)
    }
    if (calls.length > 0) statements.push(`SELECT ${calls.join(', ')}`)
    return statements.join('; ')
  }

  /** Records that `target` was applied (or already held). */
  applied (target: SessionTarget): void {
    this.#schema = target.schema
    this.#role = target.role
    // Keys once set stay remembered so they are cleared when a later target drops them.
    if (target.settings !== this.#settings) {
      const merged: Record<string, string> = {}
      for (const name of Object.keys(this.#settings)) merged[name] = ''
      this.#settings = Object.keys(merged).length === 0 ? target.settings : Object.assign(merged, target.settings)
    }
    this.#trusted = true
  }

  /** Notes a statement the client ran: a `SET`, `RESET`, `DISCARD` or `set_config` makes the state untrusted. */
  observe (sql: string): void {
    if (this.#trusted && CHANGES_SESSION.test(sql)) this.#trusted = false
  }

  /** Whether the remembered state can be relied on. */
  get trusted (): boolean {
    return this.#trusted
  }
}
