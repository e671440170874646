// Connection scenarios: idle capacity and handshake rate, against /ws.
'use strict';

const { Samples, WebSocket, closeAll, connect, connectMany, cpuSeconds, mark, round, sleep } = require('./lib');
const { rawConnect } = require('./rawclient');

// Open `count` idle connections, let the harness measure the server's memory, then close them.
async function idleCapacity(cfg) {
  const count = cfg.count ?? 10000;
  // A few connections first, so lazy imports and first-use allocations are not in the delta.
  const warm = await connectMany(cfg.url, cfg.warmupCount ?? 20, cfg, { concurrency: 10 });
  await closeAll(warm.sockets);
  await sleep(300);
  await mark(cfg, 'baseline');
  const cpu0 = process.cpuUsage();
  const closed = {};
  let holding = false;
  const opened = await connectMany(cfg.url, count, cfg, {
    concurrency: cfg.concurrency ?? 100,
    deadlineMs: (cfg.openSeconds ?? 60) * 1000,
    onOpen: (ws) => {
      ws.on('close', (code) => {
        if (holding) closed[code] = (closed[code] || 0) + 1;
      });
      ws.on('error', () => {});
    },
  });
  holding = true;
  const openSeconds = opened.seconds;
  await mark(cfg, 'connected', { open: opened.sockets.length });
  await sleep((cfg.holdSeconds ?? 2) * 1000);
  const stillOpen = opened.sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  await mark(cfg, 'held', { open: stillOpen });
  holding = false;
  const loadgenCpu = cpuSeconds(cpu0);
  await closeAll(opened.sockets, { waitMs: 10000 });
  return {
    requested: count,
    opened: opened.sockets.length,
    failed: count - opened.sockets.length,
    failures: opened.failures,
    still_open_after_hold: stillOpen,
    closed_by_server: closed,
    open_seconds: round(openSeconds),
    handshakes_per_s_while_opening: Math.round(opened.sockets.length / openSeconds),
    loadgen_cpu_s: round(loadgenCpu),
  };
}

// Connect, wait for open, close with 1000, wait for the close: as many cycles as possible in
// `duration` seconds, one at a time (sequential) or from `concurrency` loops at once.
// cfg.client 'raw' (default in the harness) does the upgrade on a bare socket (rawclient.js):
// the `ws` client spends more CPU per handshake than the `ws` server, so it would be the limit.
async function handshakeRate(cfg) {
  const concurrency = cfg.concurrency ?? 1;
  const duration = cfg.duration ?? 3;
  const maxCycles = cfg.maxCycles ?? 50000;
  const cycleTime = new Samples();
  const failures = {};
  let cycles = 0;
  let started = 0;

  const rawCycle = async () => {
    const t = performance.now();
    const conn = await rawConnect(cfg.url, 5000);
    conn.start();
    await conn.close();
    cycleTime.add(performance.now() - t);
  };
  const cycle = async () => {
    if (cfg.client === 'raw') return rawCycle();
    const t = performance.now();
    const ws = await connect(cfg.url, cfg, 5000);
    await new Promise((resolve) => {
      const timer = setTimeout(() => {
        ws.terminate();
        resolve();
      }, 5000);
      ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.on('error', () => {});
      ws.close(1000);
    });
    cycleTime.add(performance.now() - t);
  };

  await mark(cfg, 'start');
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const deadline = t0 + duration * 1000;
  const loop = async () => {
    while (performance.now() < deadline && started < maxCycles) {
      started += 1;
      try {
        await cycle();
        cycles += 1;
      } catch (err) {
        failures[err.message] = (failures[err.message] || 0) + 1;
        await sleep(5);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const seconds = (performance.now() - t0) / 1000;
  const loadgenCpu = cpuSeconds(cpu0);
  await mark(cfg, 'end');
  return {
    client: cfg.client === 'raw' ? 'raw' : 'ws',
    concurrency,
    cycles,
    failed: started - cycles,
    failures,
    seconds: round(seconds),
    cycles_per_s: Math.round(cycles / seconds),
    cycle_ms: cycleTime.summary(),
    loadgen_cpu_s: round(loadgenCpu),
  };
}


module.exports = { idleCapacity, handshakeRate };
