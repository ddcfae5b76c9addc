// @vates/nbd-client 3.6.0 (npm, Xen Orchestra's NBD client) as Xen Orchestra drives it:
// connect, read blocks, disconnect. Prints the size and a digest of each block read.
// Usage: node client.mjs HOST PORT EXPORT [BLOCK_SIZE] [BLOCKS]
// The package is looked up in ./node_modules (scripts/zoo installs it there).
import { createHash } from 'node:crypto'
import NbdTcpClient from '@vates/nbd-client/NbdTcpClient.mjs'

const [address, port, exportname, blockSize = '4096', blocks = '2'] = process.argv.slice(2)
const client = new NbdTcpClient(
  { address, port: Number(port), exportname },
  { connectTimeout: 10e3, messageTimeout: 10e3, readBlockRetries: 1, reconnectRetry: 1 }
)
await client.connect()
console.log(`size ${client.exportSize}`)
try {
  for (let index = 0; index < Number(blocks); index++) {
    const block = await client.readBlock(index, Number(blockSize))
    console.log(`block ${index} ${block.length} ${createHash('sha256').update(block).digest('hex')}`)
  }
} finally {
  await client.disconnect()
}
