import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/**
 * A TCP proxy in front of a PostgreSQL server that holds back what follows
 * each ErrorResponse for `pauseMillis`: the server's ready-for-query after a
 * failed statement then arrives in a later packet, as it may on a loaded
 * machine or through PgBouncer, instead of in the error's own.
 */
export async function delayingProxy (serverUrl: string, pauseMillis = 200): Promise<{ url: (databaseUrl: string) => string, close: () => Promise<void> }> {
  const target = new URL(serverUrl)
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname)
    sockets.add(client).add(upstream)
    client.on('close', () => { sockets.delete(client); upstream.destroy() })
    upstream.on('close', () => { sockets.delete(upstream); client.destroy() })
    client.on('error', () => {})
    upstream.on('error', () => {})
    client.pipe(upstream)
    let pending = Buffer.alloc(0)
    const messages: Buffer[] = []
    let writing = false
    const pump = async (): Promise<void> => {
      if (writing) return
      writing = true
      while (messages.length > 0) {
        const message = messages.shift()!
        client.write(message)
        // 'E': ErrorResponse. What comes after it waits.
        if (message[0] === 0x45) await sleep(pauseMillis)
      }
      writing = false
    }
    upstream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk])
      while (pending.length >= 5) {
        const end = 1 + pending.readInt32BE(1)
        if (pending.length < end) break
        messages.push(pending.subarray(0, end))
        pending = pending.subarray(end)
      }
      void pump()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return {
    url: (databaseUrl) => {
      const parsed = new URL(databaseUrl)
      parsed.hostname = '127.0.0.1'
      parsed.port = String(port)
      return parsed.toString()
    },
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => { resolve() }))
    },
  }
}
