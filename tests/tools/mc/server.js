// SPDX-License-Identifier: GPL-2.0-only
// A Minecraft Java Edition server on minecraft-protocol, offline mode.
// It answers status pings, accepts logins and, when a player joins, sends
// the login packet, a world of --chunks map_chunk packets (about 197 KB
// of chunk data each) between chunk_batch_start and chunk_batch_finished,
// a position, and a custom_payload on "datapath:world" that sums the
// world up. It answers ping_request with ping_response and keeps players
// alive with keep_alive.
//
//   node server.js [--host 0.0.0.0] [--port 25565] [--motd TEXT] [--chunks 32]
//                  [--version 1.21.4] [--max-players 20]
//
// One JSON object per line on stdout, addresses as the server's sockets
// see them:
//   {"event":"listening","address":"0.0.0.0","port":25565,"version":"1.21.4","protocol":769}
//   {"event":"status","address":"10.98.0.2","port":40312}
//   {"event":"login","username":"p1","address":"10.98.0.2","port":40314}
//   {"event":"world_sent","username":"p1","chunks":32,"bytes":6297600,"sha256":"…"}
//   {"event":"left","username":"p1","address":"10.98.0.2","port":40314}
//   {"event":"error","address":…,"port":…,"error":"…"}
'use strict'

const mc = require('minecraft-protocol')
const lib = require('./lib')

const opts = lib.parseArgs(process.argv.slice(2), {
  host: '0.0.0.0',
  port: '25565',
  motd: 'datapath test server',
  chunks: '32',
  version: lib.JAVA_VERSION,
  'max-players': '20'
})
const chunks = lib.num(opts, 'chunks')

const server = mc.createServer({
  host: opts.host,
  port: lib.num(opts, 'port'),
  motd: opts.motd,
  maxPlayers: lib.num(opts, 'max-players'),
  version: opts.version,
  'online-mode': false,
  hideErrors: true,
  errorHandler: (client, err) => {
    peerEvent('error', client, { error: String(err && err.message ? err.message : err) })
    client.end(String(err))
  }
})
const mcData = require('minecraft-data')(server.version)

function peer (client) {
  const s = client.socket || {}
  return { address: lib.plainAddress(s.remoteAddress), port: s.remotePort }
}

function peerEvent (event, client, extra) {
  lib.emit({ event, ...extra, ...peer(client) })
}

server.on('listening', () => {
  const a = server.socketServer.address()
  lib.emit({ event: 'listening', address: a.address, port: a.port, version: mcData.version.minecraftVersion, protocol: mcData.version.version })
})

server.on('error', (err) => {
  process.stderr.write(`server error: ${err.message}\n`)
  process.exit(1)
})

server.on('connection', (client) => {
  // Registered after minecraft-protocol's own handlers, which answer it.
  client.once('ping_start', () => peerEvent('status', client, {}))
})

server.on('login', (client) => {
  peerEvent('login', client, { username: client.username })
  client.once('end', () => peerEvent('left', client, { username: client.username }))
})

server.on('playerJoin', (client) => {
  client.on('ping_request', (p) => client.write('ping_response', { id: p.id }))
  client.write('login', {
    ...mcData.loginPacket,
    entityId: client.id,
    maxPlayers: server.maxPlayers,
    viewDistance: 10,
    simulationDistance: 10,
    enforcesSecureChat: false
  })
  const hash = lib.sha256()
  let bytes = 0
  client.write('chunk_batch_start', {})
  for (const [x, z] of lib.chunkCoords(chunks)) {
    const data = lib.chunkData(x, z)
    hash.update(data)
    bytes += data.length
    client.write('map_chunk', {
      x,
      z,
      heightmaps: { type: 'compound', name: '', value: {} },
      chunkData: data,
      blockEntities: [],
      skyLightMask: [],
      blockLightMask: [],
      emptySkyLightMask: [],
      emptyBlockLightMask: [],
      skyLight: [],
      blockLight: []
    })
  }
  client.write('chunk_batch_finished', { batchSize: chunks })
  client.write('position', {
    teleportId: 1,
    x: 0.5,
    y: 100,
    z: 0.5,
    dx: 0,
    dy: 0,
    dz: 0,
    yaw: 0,
    pitch: 0,
    flags: {}
  })
  const sum = { chunks, bytes, sha256: hash.digest('hex') }
  client.write('custom_payload', { channel: lib.WORLD_CHANNEL, data: Buffer.from(JSON.stringify(sum)) })
  lib.emit({ event: 'world_sent', username: client.username, ...sum })
})

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
