// SPDX-License-Identifier: GPL-2.0-only
// What the Minecraft test tools share: command-line options, one JSON
// object per line on stdout, and the world the server sends on join.
'use strict'

const crypto = require('crypto')

// The Java Edition version every tool speaks unless told otherwise.
const JAVA_VERSION = '1.21.4'

// Channel of the custom_payload that closes the join data: the count,
// byte total and SHA-256 of every map_chunk's data, so a client can tell
// that the world arrived whole.
const WORLD_CHANNEL = 'datapath:world'

// `--name value` pairs into an object; numbers stay strings until the
// caller asks for them with num().
function parseArgs (argv, defaults) {
  const out = { ...defaults }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--') || i + 1 >= argv.length) {
      fail(`bad argument ${JSON.stringify(a.slice(0, 64))}: expected --name value`)
    }
    const key = a.slice(2)
    if (!(key in defaults)) fail(`unknown option --${key.slice(0, 64)}`)
    out[key] = argv[++i]
  }
  return out
}

function num (opts, key) {
  const v = Number(opts[key])
  if (!Number.isFinite(v)) fail(`--${key} must be a number, got ${JSON.stringify(String(opts[key]).slice(0, 64))}`)
  return v
}

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fail (msg) {
  process.stderr.write(msg + '\n')
  process.exit(2)
}

// A socket's peer as the process sees it; a dual-stack listener reports
// IPv4 peers as ::ffff:a.b.c.d.
function plainAddress (a) {
  return typeof a === 'string' && a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a
}

// Sections per chunk column in the overworld (y -64..319) and the bits
// of a block state id in the direct ("global") palette of 1.21.4, whose
// block states number 27,866.
const SECTIONS = 24
const STATE_BITS = 15
const STATES = 27866

// The data of one map_chunk (1.21.4 chunk format): per section a
// non-air block count, the block states as a direct paletted container
// (4 ids of 15 bits per long, 1,024 longs) and a single-valued biome
// container. The ids are pseudo-random, seeded by the column's
// coordinates, so the data is real-sized, does not compress away, and is
// the same on every run. About 197 KB per column.
function chunkData (cx, cz) {
  const sectionLen = 2 + 1 + 2 + 1024 * 8 + 3
  const buf = Buffer.alloc(SECTIONS * sectionLen)
  let x = ((cx * 73856093) ^ (cz * 19349663) ^ 0x9e3779b9) >>> 0 || 1
  const next = () => {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    return x % STATES
  }
  let o = 0
  for (let s = 0; s < SECTIONS; s++) {
    const countAt = o
    o += 2
    let nonAir = 0
    buf[o++] = STATE_BITS
    buf[o++] = 0x80 // varint 1024: longs that follow
    buf[o++] = 0x08
    for (let l = 0; l < 1024; l++) {
      const v = [next(), next(), next(), next()]
      for (const id of v) if (id !== 0) nonAir++
      // Entry k occupies bits 15k..15k+14 of the long, counted from the
      // least significant; the long is written big-endian.
      const lo = (v[0] | (v[1] << 15) | ((v[2] & 0x3) << 30)) >>> 0
      const hi = ((v[2] >>> 2) | (v[3] << 13)) >>> 0
      buf.writeUInt32BE(hi, o)
      buf.writeUInt32BE(lo, o + 4)
      o += 8
    }
    buf.writeInt16BE(nonAir, countAt)
    buf[o++] = 0 // biomes: single value,
    buf[o++] = 0 // biome id 0,
    buf[o++] = 0 // no longs
  }
  return buf
}

// Column coordinates of an n-chunk world: a square around the origin.
function chunkCoords (n) {
  const side = Math.ceil(Math.sqrt(n))
  const out = []
  for (let i = 0; i < n; i++) out.push([(i % side) - (side >> 1), Math.floor(i / side) - (side >> 1)])
  return out
}

function sha256 () {
  return crypto.createHash('sha256')
}

module.exports = { JAVA_VERSION, WORLD_CHANNEL, parseArgs, num, emit, fail, plainAddress, chunkData, chunkCoords, sha256 }
