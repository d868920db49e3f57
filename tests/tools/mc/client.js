// SPDX-License-Identifier: GPL-2.0-only
// A Minecraft Java Edition client on minecraft-protocol, offline mode: logs
// in, takes the world the server sends on join (acknowledging the chunk
// batch and the teleport as a game client does), checks it against the
// server's "datapath:world" summary, optionally keeps playing --play
// seconds measuring round trips with ping_request/ping_response every
// --ping-ms, then prints one JSON line and exits (0 if ok, 1 if not).
// login_ms and join_ms count from the moment the TCP connection is up.
//
//   node client.js --host 10.98.0.1 --port 30001 [--username player]
//                  [--version 1.21.4] [--play 0] [--ping-ms 200] [--timeout 30]
//
//   {"ok":true,"local":{"address":"10.98.0.2","port":40314},
//    "remote":{"address":"10.98.0.1","port":30001},"login_ms":41,
//    "join_ms":380,"bytes_received":6310412,"bytes_sent":412,"chunks":32,
//    "world_bytes":6297600,"world_sha256":"…","complete":true,
//    "rtt":{"count":10,"lost":0,"min_ms":0.2,"median_ms":0.3,"max_ms":0.9}}
//
// On failure "ok" is false and "error" says what was awaited.
'use strict'

const mc = require('minecraft-protocol')
const lib = require('./lib')

const opts = lib.parseArgs(process.argv.slice(2), {
  host: '',
  port: '25565',
  username: 'player',
  version: lib.JAVA_VERSION,
  play: '0',
  'ping-ms': '200',
  timeout: '30'
})
if (!opts.host) lib.fail('--host is required')
const playSecs = lib.num(opts, 'play')
const pingMs = lib.num(opts, 'ping-ms')

// Times are counted from the moment the TCP connection is up.
let t0 = process.hrtime.bigint()
const ms = () => Number(process.hrtime.bigint() - t0) / 1e6
const report = { ok: false, local: null, remote: null, login_ms: null, join_ms: null, bytes_received: 0, bytes_sent: 0, chunks: 0, world_bytes: 0, world_sha256: null, complete: false }
let waiting = 'the connection'
let done = false

const client = mc.createClient({
  host: opts.host,
  port: lib.num(opts, 'port'),
  username: opts.username,
  version: opts.version,
  auth: 'offline',
  hideErrors: true
})

const hash = lib.sha256()
let batchSize = null
let summary = null

client.on('connect', () => {
  t0 = process.hrtime.bigint()
  report.local = { address: lib.plainAddress(client.socket.localAddress), port: client.socket.localPort }
  report.remote = { address: lib.plainAddress(client.socket.remoteAddress), port: client.socket.remotePort }
  waiting = 'the login packet'
})
client.on('login', () => {
  report.login_ms = ms()
  waiting = 'the world'
})
client.on('map_chunk', (p) => {
  report.chunks++
  report.world_bytes += p.chunkData.length
  hash.update(p.chunkData)
})
client.on('chunk_batch_finished', (p) => {
  batchSize = p.batchSize
  client.write('chunk_batch_received', { chunksPerTick: 25 })
})
client.on('position', (p) => client.write('teleport_confirm', { teleportId: p.teleportId }))
client.on('custom_payload', (p) => {
  if (p.channel !== lib.WORLD_CHANNEL) return
  summary = JSON.parse(p.data.toString())
  report.join_ms = ms()
  report.world_sha256 = hash.digest('hex')
  report.complete = batchSize === summary.chunks && report.chunks === summary.chunks &&
    report.world_bytes === summary.bytes && report.world_sha256 === summary.sha256
  report.bytes_received = client.socket.bytesRead
  if (!report.complete) {
    return finish(`incomplete world: got ${report.chunks} chunks (batch said ${batchSize}), ` +
      `${report.world_bytes} bytes, sha256 ${report.world_sha256}; server sent ${JSON.stringify(summary)}`)
  }
  if (playSecs > 0) play()
  else finish(null)
})
client.on('error', (err) => finish(`error while waiting for ${waiting}: ${err.message}`))
client.on('end', (reason) => finish(`connection ended while waiting for ${waiting}: ${reason}`))
client.on('kick_disconnect', (p) => finish(`kicked while waiting for ${waiting}: ${JSON.stringify(p.reason)}`))

// Round trips of ping_request/ping_response, the exchange the game's own
// debug ping uses, one every --ping-ms.
function play () {
  waiting = 'ping responses'
  const sent = new Map()
  const rtts = []
  let id = 0n
  client.on('ping_response', (p) => {
    const key = BigInt(p.id)
    const at = sent.get(key)
    if (at === undefined) return
    sent.delete(key)
    rtts.push(ms() - at)
  })
  const tick = setInterval(() => {
    id++
    sent.set(id, ms())
    client.write('ping_request', { id })
  }, pingMs)
  setTimeout(() => {
    clearInterval(tick)
    // Requests still out get two seconds to come back; what has not by
    // then is lost.
    const end = ms() + 2000
    const settle = setInterval(() => {
      if (sent.size > 0 && ms() < end) return
      clearInterval(settle)
      const s = rtts.slice().sort((a, b) => a - b)
      report.rtt = { count: s.length, lost: sent.size, min_ms: s[0] ?? null, median_ms: s[s.length >> 1] ?? null, max_ms: s[s.length - 1] ?? null }
      finish(s.length > 0 ? null : 'no ping_response came back')
    }, 20)
  }, playSecs * 1000)
}

function finish (error) {
  if (done) return
  done = true
  if (client.socket) {
    report.bytes_received = client.socket.bytesRead
    report.bytes_sent = client.socket.bytesWritten
  }
  report.ok = error === null
  if (error !== null) report.error = error
  lib.emit(report)
  client.end('done')
  // Exit once stdout is flushed, without waiting for the server to close.
  process.stdout.write('', () => process.exit(report.ok ? 0 : 1))
}

setTimeout(() => finish(`timed out after ${opts.timeout} s waiting for ${waiting}`), lib.num(opts, 'timeout') * 1000).unref()
