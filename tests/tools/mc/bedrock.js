// SPDX-License-Identifier: GPL-2.0-only
// A Minecraft Bedrock Edition status responder: answers RakNet's
// unconnected ping (0x01, or 0x02 "open connections") with an unconnected
// pong (0x1c) carrying the server id string
// "MCPE;motd;protocol;version;online;max;guid;sub-motd;mode;1;port;port6;",
// which is what Bedrock clients and status tools read. Nothing else of
// RakNet: other datagrams are reported and ignored.
//
//   node bedrock.js [--host 0.0.0.0] [--port 19132] [--motd TEXT]
//                   [--protocol 766] [--version 1.21.50] [--online 0] [--max 20]
//
// One JSON object per line on stdout:
//   {"event":"listening","address":"0.0.0.0","port":19132}
//   {"event":"ping","address":"10.98.0.2","port":51234}
//   {"event":"ignored","address":…,"port":…,"bytes":12}
'use strict'

const dgram = require('dgram')
const crypto = require('crypto')
const lib = require('./lib')

const opts = lib.parseArgs(process.argv.slice(2), {
  host: '0.0.0.0',
  port: '19132',
  motd: 'datapath test server',
  protocol: '766',
  version: '1.21.50',
  online: '0',
  max: '20'
})

// RakNet's "offline message" marker, present in every unconnected packet.
const MAGIC = Buffer.from('00ffff00fefefefefdfdfdfd12345678', 'hex')
const PING = 0x01
const PING_OPEN = 0x02
const PONG = 0x1c
const guid = crypto.randomBytes(8)
const port = lib.num(opts, 'port')

function serverId () {
  const guidText = guid.readBigUInt64BE(0).toString()
  return ['MCPE', opts.motd, lib.num(opts, 'protocol'), opts.version, lib.num(opts, 'online'),
    lib.num(opts, 'max'), guidText, 'datapath', 'Survival', 1, port, port + 1].join(';') + ';'
}

const sock = dgram.createSocket(opts.host.includes(':') ? 'udp6' : 'udp4')
sock.on('message', (msg, rinfo) => {
  const from = { address: lib.plainAddress(rinfo.address), port: rinfo.port }
  // id (1), time (8), magic (16), client guid (8)
  if (msg.length < 33 || (msg[0] !== PING && msg[0] !== PING_OPEN) || !msg.subarray(9, 25).equals(MAGIC)) {
    lib.emit({ event: 'ignored', ...from, bytes: msg.length })
    return
  }
  const id = Buffer.from(serverId(), 'utf8')
  const len = Buffer.alloc(2)
  len.writeUInt16BE(id.length)
  // id, the ping's time echoed, server guid, magic, string length, string
  const pong = Buffer.concat([Buffer.from([PONG]), msg.subarray(1, 9), guid, MAGIC, len, id])
  sock.send(pong, rinfo.port, rinfo.address, (err) => {
    if (err) lib.emit({ event: 'error', ...from, error: err.message })
  })
  lib.emit({ event: 'ping', ...from })
})
sock.on('error', (err) => {
  process.stderr.write(`bedrock responder: ${err.message}\n`)
  process.exit(1)
})
sock.bind(port, opts.host, () => {
  const a = sock.address()
  lib.emit({ event: 'listening', address: a.address, port: a.port })
})

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
