// Shared pieces of the load generator: talking to the harness, opening sockets, statistics.
//
// Protocol with the harness (bench/run.py): one JSON object per stdout line. A line with
// `mark` asks the harness to take a measurement (server CPU, RSS, ...) at that moment; the load
// generator then waits for one line on stdin before it goes on, so the harness's sample sits
// exactly between the phases. The last line carries `result` (or `error`).
'use strict';

const readline = require('readline');
const WebSocket = require('ws');

let pendingAcks = [];
let bufferedAcks = 0;
let stdinReader = null;

function startStdin() {
  if (stdinReader) return;
  stdinReader = readline.createInterface({ input: process.stdin });
  stdinReader.on('line', () => {
    const next = pendingAcks.shift();
    if (next) next();
    else bufferedAcks += 1;
  });
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Print a mark and wait for the harness to acknowledge it (unless cfg.ack is false).
async function mark(cfg, name, extra = {}) {
  const at = performance.now();
  emit({ mark: name, t: at, ...extra });
  if (!cfg.ack) return;
  startStdin();
  if (bufferedAcks > 0) {
    bufferedAcks -= 1;
    return;
  }
  await new Promise((resolve) => pendingAcks.push(resolve));
}

function stopStdin() {
  if (stdinReader) stdinReader.close();
  stdinReader = null;
}

function cpuSeconds(prev) {
  const u = process.cpuUsage(prev);
  return (u.user + u.system) / 1e6;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Open one WebSocket; resolves with the socket once open, rejects with a short reason.
function connect(url, cfg, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const ws = new WebSocket(url, {
      perMessageDeflate: Boolean(cfg.deflate),
      handshakeTimeout: timeoutMs,
    });
    const fail = (reason) => {
      if (settled) return;
      settled = true;
      try {
        ws.terminate();
      } catch (_) {
        /* already gone */
      }
      reject(new Error(reason));
    };
    ws.on('open', () => {
      if (settled) return;
      settled = true;
      resolve(ws);
    });
    ws.on('unexpected-response', (_req, res) => {
      fail(`http ${res.statusCode}`);
    });
    ws.on('error', (err) => fail(err.code || err.message || String(err)));
    ws.on('close', (code) => fail(`closed ${code} before open`));
  });
}

// Open `count` sockets with at most `concurrency` handshakes in flight, stopping at deadline.
// Returns { sockets, failures: {reason: count}, seconds }.
async function connectMany(url, count, cfg, { concurrency = 100, deadlineMs = 60000, onOpen } = {}) {
  const sockets = [];
  const failures = {};
  const started = performance.now();
  let next = 0;
  async function worker() {
    while (next < count && performance.now() - started < deadlineMs) {
      const index = next++;
      try {
        const ws = await connect(url, cfg);
        if (onOpen) onOpen(ws, index);
        sockets.push(ws);
      } catch (err) {
        failures[err.message] = (failures[err.message] || 0) + 1;
      }
    }
  }
  const workers = [];
  for (let i = 0; i < Math.min(concurrency, count); i++) workers.push(worker());
  await Promise.all(workers);
  return { sockets, failures, seconds: (performance.now() - started) / 1000 };
}

// Close sockets politely in batches, then terminate any that did not finish in time.
async function closeAll(sockets, { batch = 500, waitMs = 3000 } = {}) {
  const open = sockets.filter((ws) => ws.readyState === WebSocket.OPEN);
  const done = open.map(
    (ws) =>
      new Promise((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) resolve();
        else ws.once('close', resolve);
      }),
  );
  for (let i = 0; i < open.length; i += batch) {
    for (const ws of open.slice(i, i + batch)) ws.close(1000);
    await sleep(1);
  }
  await Promise.race([Promise.all(done), sleep(waitMs)]);
  for (const ws of sockets) {
    if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
  }
}

// A growable array of float samples with percentiles.
class Samples {
  constructor(capacity = 1 << 16, limit = 5_000_000) {
    this.data = new Float64Array(capacity);
    this.n = 0;
    this.limit = limit;
    this.dropped = 0;
  }
  add(value) {
    if (this.n === this.data.length) {
      if (this.n >= this.limit) {
        this.dropped += 1;
        return;
      }
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.n++] = value;
  }
  summary(digits = 3) {
    if (this.n === 0) return { count: 0 };
    const sorted = this.data.slice(0, this.n).sort();
    const at = (q) => sorted[Math.min(this.n - 1, Math.floor(q * this.n))];
    let sum = 0;
    for (let i = 0; i < this.n; i++) sum += sorted[i];
    const r = (x) => Number(x.toFixed(digits));
    return {
      count: this.n,
      mean: r(sum / this.n),
      p50: r(at(0.5)),
      p90: r(at(0.9)),
      p99: r(at(0.99)),
      p999: r(at(0.999)),
      max: r(sorted[this.n - 1]),
    };
  }
}

function pad(text, size) {
  return text.length >= size ? text : text + ' '.repeat(size - text.length);
}

// A figure to `digits` decimals, as a number (for the JSON results).
function round(x, digits = 3) {
  return Number(x.toFixed(digits));
}

module.exports = {
  WebSocket,
  Samples,
  closeAll,
  connect,
  connectMany,
  cpuSeconds,
  emit,
  mark,
  pad,
  round,
  sleep,
  stopStdin,
};
