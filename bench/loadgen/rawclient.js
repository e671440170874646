// A minimal WebSocket client on a raw TCP socket, for the echo throughput hot path only.
//
// Node's `ws` client costs about as much CPU per message as Node's `ws` server, so a `ws`-based
// generator runs out of CPU at the same rate as the reference server. This client speaks just
// enough RFC 6455 for a closed echo loop: the upgrade request, prebuilt masked text frames
// (zero masking key, which is valid), and a frame parser that only needs lengths and opcodes.
// Everything it receives is counted and checked for the echo prefix; pings are answered with
// pongs; a close frame ends the connection.
'use strict';

const crypto = require('crypto');
const net = require('net');

function textFrame(payload) {
  const body = Buffer.from(payload);
  if (body.length > 125) throw new Error('rawclient frames are for small payloads');
  return Buffer.concat([Buffer.from([0x81, 0x80 | body.length, 0, 0, 0, 0]), body]);
}

const CLOSE_FRAME = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);

// Resolves with a RawConnection once the server answered 101, rejects otherwise.
function rawConnect(url, timeoutMs = 10000) {
  const u = new URL(url);
  const path = (u.pathname || '/') + (u.search || '');
  const key = crypto.randomBytes(16).toString('base64');
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: u.hostname, port: Number(u.port || 80) });
    let head = Buffer.alloc(0);
    const timer = setTimeout(() => fail('handshake timeout'), timeoutMs);
    const fail = (reason) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Error(reason));
    };
    socket.once('error', (err) => fail(err.code || err.message));
    socket.on('connect', () => {
      socket.setNoDelay(true);
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 16384) fail('oversized handshake response');
        return;
      }
      socket.removeListener('data', onData);
      clearTimeout(timer);
      const status = head.toString('latin1', 0, head.indexOf('\r\n'));
      if (!/^HTTP\/1\.1 101 /.test(status)) {
        fail(`http ${status.split(' ')[1]}`);
        return;
      }
      resolve(new RawConnection(socket, head.subarray(end + 4)));
    };
    socket.on('data', onData);
  });
}

class RawConnection {
  constructor(socket, rest) {
    this.socket = socket;
    this.pending = rest;
    this.onFrame = null; // (opcode, buffer, start, end) for data frames
    this.closed = false;
    this.closeCode = null;
    this.onClose = null; // (code) once the TCP connection is gone; 1006 without a close frame
    socket.on('data', (chunk) => this._parse(chunk));
    socket.on('close', () => {
      this.closed = true;
      if (this.onClose) this.onClose(this.closeCode ?? 1006);
    });
    socket.on('error', () => {});
  }

  start() {
    if (this.pending.length) this._parse(Buffer.alloc(0));
  }

  _parse(chunk) {
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    let off = 0;
    while (buf.length - off >= 2) {
      const opcode = buf[off] & 0x0f;
      let len = buf[off + 1] & 0x7f;
      let hdr = 2;
      if (len === 126) {
        if (buf.length - off < 4) break;
        len = buf.readUInt16BE(off + 2);
        hdr = 4;
      } else if (len === 127) {
        if (buf.length - off < 10) break;
        len = Number(buf.readBigUInt64BE(off + 2));
        hdr = 10;
      }
      if (buf[off + 1] & 0x80) hdr += 4; // servers must not mask; tolerate it anyway
      if (buf.length - off < hdr + len) break;
      const start = off + hdr;
      if (opcode === 0x9) {
        const payload = buf.subarray(start, start + len);
        this.socket.write(Buffer.concat([Buffer.from([0x8a, 0x80 | len, 0, 0, 0, 0]), payload]));
      } else if (opcode === 0x8) {
        this.closeCode = len >= 2 ? buf.readUInt16BE(start) : 1005;
        this.closed = true;
        this.socket.end();
      } else if (opcode !== 0xa && this.onFrame) {
        this.onFrame(opcode, buf, start, start + len);
      }
      off = start + len;
    }
    this.pending = off < buf.length ? Buffer.from(buf.subarray(off)) : Buffer.alloc(0);
  }

  write(buffer) {
    if (!this.closed) this.socket.write(buffer);
  }

  close() {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.socket.destroy();
        resolve();
      }, 2000);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.socket.write(CLOSE_FRAME);
    });
  }
}

// Open `count` raw connections with at most `concurrency` handshakes in flight.
async function rawConnectMany(url, count, { concurrency = 100, deadlineMs = 60000, onOpen } = {}) {
  const connections = [];
  const failures = {};
  const started = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < count && performance.now() - started < deadlineMs) {
      const index = next++;
      try {
        const conn = await rawConnect(url);
        if (onOpen) onOpen(conn, index);
        conn.start();
        connections.push(conn);
      } catch (err) {
        failures[err.message] = (failures[err.message] || 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return { sockets: connections, failures, seconds: (performance.now() - started) / 1000 };
}

async function rawCloseAll(connections) {
  await Promise.all(connections.map((c) => c.close()));
}

module.exports = { rawConnect, rawConnectMany, rawCloseAll, textFrame };
