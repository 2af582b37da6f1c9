import { Writable } from 'node:stream'

/** A logger stream for Fastify or pino that keeps each JSON line it is given, parsed, in `lines`. */
export function logLines (): { lines: Array<Record<string, any>>, stream: Writable } {
  const lines: Array<Record<string, any>> = []
  const stream = new Writable({
    write (chunk, _encoding, callback) {
      for (const line of String(chunk).split('\n')) if (line !== '') lines.push(JSON.parse(line))
      callback()
    },
  })
  return { lines, stream }
}
