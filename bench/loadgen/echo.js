// Echo scenarios: closed-loop throughput and open-loop latency against /ws.
'use strict';

const { Samples, closeAll, connectMany, cpuSeconds, mark, pad, round, sleep } = require('./lib');
const { rawConnect, textFrame } = require('./rawclient');

const PREFIX = 'Echo: ';

// The measured phase both throughput loops share: warm up, mark, count replies over the
// window, mark, then drain what is still in flight and close. `c` holds the loop's counters.
async function measureClosedLoop(cfg, c, close, extra) {
  await sleep((cfg.warmup ?? 1) * 1000);
  await mark(cfg, 'start');
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const r0 = c.replies;
  await sleep((cfg.duration ?? 5) * 1000);
  const r1 = c.replies;
  const seconds = (performance.now() - t0) / 1000;
  const loadgenCpu = cpuSeconds(cpu0);
  await mark(cfg, 'end');
  c.running = false;

  const drainUntil = performance.now() + 3000;
  while (c.replies < c.sent && performance.now() < drainUntil) await sleep(10);
  const unanswered = c.sent - c.replies;
  await close();
  return {
    ...extra,
    messages: r1 - r0,
    seconds: round(seconds),
    messages_per_s: Math.round((r1 - r0) / seconds),
    bad_replies: c.bad,
    unanswered,
    closed_early: c.closedEarly,
    loadgen_cpu_s: round(loadgenCpu),
  };
}

function newCounters() {
  return { running: true, replies: 0, sent: 0, bad: 0, closedEarly: 0 };
}

// N connections, each keeping `inflight` messages outstanding: a reply triggers the next send.
// The harness reads the server's CPU at the marks, so the figure is messages per server CPU-second.
async function echoThroughput(cfg) {
  if (cfg.client === 'raw') return echoThroughputRaw(cfg);
  const conns = cfg.conns ?? 50;
  const inflight = cfg.inflight ?? 10;
  const payload = 'x'.repeat(cfg.size ?? 32);
  const expectedLength = PREFIX.length + payload.length;
  const maxMessages = cfg.maxMessages ?? 20_000_000;

  const { sockets, failures } = await connectMany(cfg.url, conns, cfg, { concurrency: 50 });
  if (sockets.length < conns) {
    await closeAll(sockets);
    return { error: 'could not open every connection', opened: sockets.length, failures };
  }

  const c = newCounters();
  for (const ws of sockets) {
    // Replies that arrive in one read are answered with one write: cork the socket on the first
    // reply and uncork after the read is handled, so the generator spends less CPU per message.
    const socket = ws._socket;
    let corked = false;
    const uncork = () => {
      corked = false;
      socket.uncork();
    };
    ws.on('message', (data, isBinary) => {
      c.replies += 1;
      if (isBinary || data.length !== expectedLength || data.toString('latin1', 0, 6) !== PREFIX) c.bad += 1;
      if (c.running && c.sent < maxMessages) {
        c.sent += 1;
        if (!corked && socket) {
          corked = true;
          socket.cork();
          process.nextTick(uncork);
        }
        ws.send(payload);
      }
    });
    ws.on('close', () => {
      if (c.running) c.closedEarly += 1;
    });
  }
  for (const ws of sockets) {
    for (let i = 0; i < inflight; i++) {
      c.sent += 1;
      ws.send(payload);
    }
  }

  return measureClosedLoop(cfg, c, () => closeAll(sockets), {
    connections: conns,
    inflight,
    size: payload.length,
    client: 'ws',
  });
}

// The same closed loop on the raw client (rawclient.js): replies that arrive in one read are
// answered with one write of prebuilt frames.
async function echoThroughputRaw(cfg) {
  const conns = cfg.conns ?? 50;
  const inflight = cfg.inflight ?? 10;
  const payload = 'x'.repeat(cfg.size ?? 32);
  const expectedLength = PREFIX.length + payload.length;
  const maxMessages = cfg.maxMessages ?? 20_000_000;
  const frame = textFrame(payload);
  const batch = Buffer.concat(Array.from({ length: 64 }, () => frame));
  const prefix = Buffer.from(PREFIX);

  const failures = {};
  const connections = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(conns, 50) }, async () => {
      while (next < conns) {
        next += 1;
        try {
          connections.push(await rawConnect(cfg.url));
        } catch (err) {
          failures[err.message] = (failures[err.message] || 0) + 1;
        }
      }
    }),
  );
  if (connections.length < conns) {
    await Promise.all(connections.map((c) => c.close()));
    return { error: 'could not open every connection', opened: connections.length, failures };
  }

  const c = newCounters();
  const writeFrames = (conn, count) => {
    while (count > 0) {
      const n = Math.min(count, 64);
      conn.write(n === 64 ? batch : batch.subarray(0, n * frame.length));
      count -= n;
    }
  };
  for (const conn of connections) {
    let owed = 0;
    const flush = () => {
      const n = owed;
      owed = 0;
      if (c.running) writeFrames(conn, n);
    };
    conn.onFrame = (opcode, buf, start, end) => {
      c.replies += 1;
      if (opcode !== 1 || end - start !== expectedLength || prefix.compare(buf, start, start + 6) !== 0) c.bad += 1;
      if (c.running && c.sent < maxMessages) {
        c.sent += 1;
        if (owed === 0) process.nextTick(flush);
        owed += 1;
      }
    };
    conn.socket.on('close', () => {
      if (c.running) c.closedEarly += 1;
    });
    conn.start();
  }
  for (const conn of connections) {
    c.sent += inflight;
    writeFrames(conn, inflight);
  }

  return measureClosedLoop(cfg, c, () => Promise.all(connections.map((x) => x.close())), {
    connections: conns,
    inflight,
    size: payload.length,
    client: 'raw',
  });
}

// Open loop: `rate` messages per second spread over N connections on a fixed schedule; latency
// is measured from each message's scheduled send time (no coordinated omission).
async function echoLatency(cfg) {
  const conns = cfg.conns ?? 50;
  const rate = cfg.rate ?? 1000;
  const size = cfg.size ?? 32;
  const warmup = cfg.warmup ?? 1;
  const duration = cfg.duration ?? 5;
  const warmupCount = Math.round(rate * warmup);
  const total = warmupCount + Math.round(rate * duration);

  const { sockets, failures } = await connectMany(cfg.url, conns, cfg, { concurrency: 50 });
  if (sockets.length < conns) {
    await closeAll(sockets);
    return { error: 'could not open every connection', opened: sockets.length, failures };
  }

  const latency = new Samples();
  let received = 0;
  let bad = 0;
  let start = 0;
  for (const ws of sockets) {
    ws.on('message', (data) => {
      const now = performance.now();
      received += 1;
      const text = data.toString();
      const seq = parseInt(text.slice(PREFIX.length), 10);
      if (!text.startsWith(PREFIX) || !(seq >= 0 && seq < total)) {
        bad += 1;
        return;
      }
      if (seq >= warmupCount) latency.add(now - (start + (seq * 1000) / rate));
    });
  }

  await mark(cfg, 'start');
  const cpu0 = process.cpuUsage();
  let sent = 0;
  start = performance.now();
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - start) * rate) / 1000) + 1);
    while (sent < due) {
      sockets[sent % conns].send(pad(String(sent), size));
      sent += 1;
    }
    await sleep(1);
  }
  const drainUntil = performance.now() + 3000;
  while (received < sent && performance.now() < drainUntil) await sleep(5);
  const loadgenCpu = cpuSeconds(cpu0);
  const seconds = (performance.now() - start) / 1000;
  await mark(cfg, 'end');
  await closeAll(sockets);
  return {
    connections: conns,
    rate,
    size,
    sent,
    received,
    lost: sent - received,
    bad_replies: bad,
    seconds: round(seconds),
    measured_seconds: duration,
    latency_ms: latency.summary(),
    loadgen_cpu_s: round(loadgenCpu),
  };
}

module.exports = { echoThroughput, echoLatency };
