/**
 * What in the text of a raw fragment (`sql\`…\`` inside a builder) could carry
 * the rest of the statement away: a comment, a statement separator, an
 * unclosed quote or parenthesis. The filter appends its predicates after the
 * user's SQL, so `set('name', sql\`'x' -- note\`)` would otherwise comment out
 * `where … and "t"."iid" = $1`. Returns what was found, or `undefined` when
 * the fragment is a whole expression. Parameters count as one value.
 *
 * ```ts
 * rawFragmentProblem(['now() -- server time']) // 'a -- comment'
 * rawFragmentProblem(["coalesce(", ", 'x')"]) // undefined
 * ```
 */
export function rawFragmentProblem (fragments: readonly string[]): string | undefined {
  return scan(fragments.join(' $0 '), false)
}

/**
 * Whether the SQL of a SET value has a comma outside parentheses, brackets,
 * quotes and comments: `set({ name: sql\`'x', iid = 4\` })` would end its
 * assignment there and start another, of a column no check has seen. A
 * comment, separator or unclosed quote before any such comma is
 * {@link rawFragmentProblem}'s to refuse (every raw fragment is checked).
 *
 * ```ts
 * hasListComma(`'x', "iid" = 4`) // true
 * hasListComma(`concat('a, b', "name")`) // false
 * ```
 */
export function hasListComma (sql: string): boolean {
  return scan(sql, true) === LIST_COMMA
}

const LIST_COMMA = 'a , outside parentheses'

// An identifier goes on through letters, digits, _ and $ (and any non-ASCII
// letter): a $ inside one (`a$$b$$`) starts no dollar quote, and taking it for
// one would hide what follows from this scan but not from PostgreSQL.
const IDENTIFIER_CHAR = /[A-Za-z0-9_$\u0080-\uffff]/

function scan (text: string, commas: boolean): string | undefined {
  let depth = 0
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!
    const next = text[i + 1]
    if (c === '-' && next === '-') return 'a -- comment'
    if (c === '/' && next === '*') return 'a /* comment'
    if (c === ';') return 'a statement separator (;)'
    if (c === '(' || (commas && c === '[')) depth++
    else if (c === ')' && --depth < 0) return 'a ) with no ('
    else if (commas && c === ']' && --depth < 0) return 'a ] with no ['
    else if (commas && c === ',' && depth === 0) return LIST_COMMA
    else if (c === '\'' || c === '"') {
      // E'…' strings take backslash escapes; '' and "" escape their quote.
      const escapes = c === '\'' && /[eE]/.test(text[i - 1] ?? '') && !IDENTIFIER_CHAR.test(text[i - 2] ?? '')
      const end = closing(text, i + 1, c, escapes)
      if (end < 0) return `an unclosed ${c}`
      i = end
    } else if (c === '$' && !IDENTIFIER_CHAR.test(text[i - 1] ?? '')) {
      const tag = /^\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$/.exec(text.slice(i))
      if (tag !== null) {
        const end = text.indexOf(tag[0], i + tag[0].length)
        if (end < 0) return 'an unclosed dollar quote'
        i = end + tag[0].length - 1
      }
    }
  }
  return depth === 0 ? undefined : 'a ( with no )'
}

function closing (text: string, from: number, quote: string, escapes: boolean): number {
  for (let i = from; i < text.length; i++) {
    const c = text[i]
    if (escapes && c === '\\') { i++; continue }
    if (c !== quote) continue
    if (text[i + 1] === quote) { i++; continue }
    return i
  }
  return -1
}
