import t from 'tap'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { errorClasses, TenancyError, UnknownInstanceError, quote } from '../lib/errors.js'

t.test('the README error table lists every error code with its status', async (t) => {
  const readme = await readFile(path.resolve(import.meta.dirname, '..', 'README.md'), 'utf8')
  const rows = new Map<string, number>()
  for (const match of readme.matchAll(/^\| `(TENANCY_[A-Z_]+)` \| (\d{3}) \|/gm)) rows.set(match[1]!, Number(match[2]))
  const classes = Object.entries(errorClasses)
  t.ok(classes.length >= 10)
  for (const [code, ErrorClass] of classes) {
    const err = new ErrorClass('x')
    t.equal(err.code, code)
    t.ok(err instanceof TenancyError, `${code} is a TenancyError`)
    t.ok(err instanceof ErrorClass, `${code} is an instance of its own class`)
    t.equal(rows.get(code), err.statusCode, `README row for ${code}`)
  }
  t.same([...rows.keys()].sort(), Object.keys(errorClasses).sort(), 'no README row without an error class')
})

t.test('messages quote the bad value safely', async (t) => {
  const err = new UnknownInstanceError(quote('a'.repeat(500) + '\n'))
  t.ok(err.message.length < 200)
  t.notMatch(err.message, /\n/)
  t.equal(quote('x"y'), '"x\\"y"')
})
