// Broadcast scenarios against /ws/broadcast.
//
// Every message is "<publisher> <sequence> <send time in ms>" padded to `size` bytes, sent by
// extra publisher connections on the same endpoint. Each subscriber checks the sequence per
// publisher (lost, out of order) and the publish-to-receive latency. Publishers receive the whole
// stream too (the endpoint echoes to the sender); they are not counted as subscribers.
'use strict';

const { Samples, closeAll, connectMany, cpuSeconds, mark, pad, round, sleep } = require('./lib');
const { rawConnectMany, rawCloseAll } = require('./rawclient');

// Parses "<publisher> <sequence> <ms>[.fraction]" from bytes without making a string.
// Returns false for anything else.
const parsed = { pub: 0, seq: 0, sentAt: 0 };
function parseMessage(buf, start, end) {
  let i = start;
  let pub = 0;
  let seq = 0;
  let whole = 0;
  let frac = 0;
  let scale = 1;
  let digits = 0;
  for (; i < end && buf[i] !== 0x20; i++, digits++) pub = pub * 10 + (buf[i] - 48);
  if (digits === 0 || i >= end) return false;
  digits = 0;
  for (i++; i < end && buf[i] !== 0x20; i++, digits++) seq = seq * 10 + (buf[i] - 48);
  if (digits === 0 || i >= end) return false;
  digits = 0;
  for (i++; i < end && buf[i] !== 0x2e && buf[i] !== 0x20; i++, digits++) whole = whole * 10 + (buf[i] - 48);
  if (i < end && buf[i] === 0x2e) {
    for (i++; i < end && buf[i] !== 0x20; i++) {
      frac = frac * 10 + (buf[i] - 48);
      scale *= 10;
    }
  }
  if (digits === 0) return false;
  parsed.pub = pub;
  parsed.seq = seq;
  parsed.sentAt = whole + frac / scale;
  return true;
}

// Opens the subscribers, with the `ws` client or (cfg.subscriberClient === 'raw') the raw one.
// Returns { sockets, failures, state, close }.
async function openSubscribers(cfg, subs, publishers, onDelivery) {
  const state = {
    deliveries: 0,
    outOfOrder: 0,
    bad: 0,
    closed: {},
    running: true,
    received: new Float64Array(subs),
  };
  const makeHandler = (index) => {
    const last = new Int32Array(publishers).fill(-1);
    return (buf, start, end) => {
      const now = performance.now();
      if (!parseMessage(buf, start, end) || parsed.pub >= publishers) {
        state.bad += 1;
        return;
      }
      const { pub, seq, sentAt } = parsed;
      state.deliveries += 1;
      state.received[index] += 1;
      if (seq <= last[pub]) state.outOfOrder += 1;
      else last[pub] = seq;
      onDelivery(now - sentAt, seq, pub);
    };
  };
  const onClosed = (code) => {
    if (state.running) state.closed[code] = (state.closed[code] || 0) + 1;
  };
  const options = { concurrency: 100, deadlineMs: 60000 };
  if (cfg.subscriberClient === 'raw') {
    const opened = await rawConnectMany(cfg.url, subs, {
      ...options,
      onOpen: (conn, index) => {
        const handle = makeHandler(index);
        conn.onFrame = (_opcode, buf, start, end) => handle(buf, start, end);
        conn.onClose = onClosed;
      },
    });
    return { ...opened, state, close: () => rawCloseAll(opened.sockets) };
  }
  const opened = await connectMany(cfg.url, subs, cfg, {
    ...options,
    onOpen: (ws, index) => {
      const handle = makeHandler(index);
      ws.on('message', (data) => handle(data, 0, data.length));
      ws.on('close', onClosed);
    },
  });
  return { ...opened, state, close: () => closeAll(opened.sockets) };
}

function lostCount(state, sockets, expectedPerSubscriber) {
  let lost = 0;
  for (let i = 0; i < state.received.length; i++) {
    lost += Math.max(0, expectedPerSubscriber - state.received[i]);
  }
  return lost;
}

// Wait for the deliveries still on their way: until all arrived, or nothing arrived for
// `idleMs`, or `maxMs` passed. What is missing then counts as lost.
async function drain(state, expected, { idleMs = 2000, maxMs = 20000 } = {}) {
  const until = performance.now() + maxMs;
  let seen = state.deliveries;
  let lastProgress = performance.now();
  while (state.deliveries < expected) {
    const now = performance.now();
    if (now > until || now - lastProgress > idleMs) break;
    if (state.deliveries !== seen) {
      seen = state.deliveries;
      lastProgress = now;
    }
    await sleep(10);
  }
}

// Open loop: one publisher at `rate` messages per second to `subs` subscribers.
async function broadcastFanout(cfg) {
  const subs = cfg.subscribers ?? 1000;
  const rate = cfg.rate ?? 100;
  const size = cfg.size ?? 32;
  const warmup = cfg.warmup ?? 1;
  const duration = cfg.duration ?? 5;
  const warmupCount = Math.round(rate * warmup);
  const total = warmupCount + Math.round(rate * duration);

  const latency = new Samples(1 << 20);
  const sub = await openSubscribers(cfg, subs, 1, (ms, seq) => {
    if (seq >= warmupCount) latency.add(ms);
  });
  const { sockets, failures, state } = sub;
  if (sockets.length < subs) {
    await sub.close();
    return { error: 'could not open every subscriber', opened: sockets.length, failures };
  }
  const pubOpen = await connectMany(cfg.url, 1, cfg);
  if (pubOpen.sockets.length !== 1) {
    await sub.close();
    return { error: 'could not open the publisher', failures: pubOpen.failures };
  }
  const publisher = pubOpen.sockets[0];
  await sleep(200); // let the server finish registering the last subscribers

  await mark(cfg, 'start');
  const cpu0 = process.cpuUsage();
  let sent = 0;
  let measureStart = 0;
  let deliveriesAtStart = 0;
  const start = performance.now();
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - start) * rate) / 1000) + 1);
    while (sent < due) {
      if (sent === warmupCount) {
        measureStart = performance.now();
        deliveriesAtStart = state.deliveries;
      }
      publisher.send(pad(`0 ${sent} ${performance.now().toFixed(3)}`, size));
      sent += 1;
    }
    await sleep(1);
  }
  const measureEnd = performance.now();
  const deliveriesInWindow = state.deliveries - deliveriesAtStart;
  await drain(state, total * subs);
  const loadgenCpu = cpuSeconds(cpu0);
  const windowSeconds = (performance.now() - start) / 1000;
  await mark(cfg, 'end');
  state.running = false;
  const measuredSeconds = (measureEnd - measureStart) / 1000;
  const result = {
    subscribers: subs,
    rate,
    size,
    published: sent,
    offered_deliveries_per_s: subs * rate,
    deliveries_per_s: Math.round(deliveriesInWindow / measuredSeconds),
    deliveries_total: state.deliveries,
    window_seconds: round(windowSeconds),
    measured_seconds: round(measuredSeconds),
    latency_ms: latency.summary(),
    lost: lostCount(state, sockets, total),
    out_of_order: state.outOfOrder,
    bad_messages: state.bad,
    closed_by_server: state.closed,
    loadgen_cpu_s: round(loadgenCpu),
  };
  await Promise.all([sub.close(), closeAll([publisher])]);
  return result;
}

// Closed loop: P publishers each keep W messages in flight, where a message is in flight until
// every subscriber has received it. The server is never idle and the backlog of any subscriber
// stays under P x W messages, so this measures the fastest fan-out the server sustains.
async function broadcastCapacity(cfg) {
  const subs = cfg.subscribers ?? 1000;
  const pubs = cfg.publishers ?? 4;
  const window = cfg.window ?? 4;
  const size = cfg.size ?? 32;
  const maxPerPublisher = cfg.maxPerPublisher ?? 1_000_000;
  const releaseAfterMs = cfg.releaseAfterMs ?? 2000;

  let measuring = false;
  let running = true;
  const latency = new Samples(1 << 20);
  // remaining[p][seq % ring]: subscribers that have not yet received message seq of publisher p.
  const ring = window * 4;
  const remaining = Array.from({ length: pubs }, () => new Int32Array(ring));
  const sentAt = Array.from({ length: pubs }, () => new Float64Array(ring));
  const inflight = new Array(pubs).fill(0);
  const done = new Array(pubs).fill(0); // messages fully delivered or released, in order
  const sent = new Array(pubs).fill(0);
  let released = 0;
  let publishers = [];

  const send = (p) => {
    const seq = sent[p];
    const slot = seq % ring;
    remaining[p][slot] = subs;
    sentAt[p][slot] = performance.now();
    publishers[p].send(pad(`${p} ${seq} ${sentAt[p][slot].toFixed(3)}`, size));
    sent[p] += 1;
    inflight[p] += 1;
  };
  const refill = (p) => {
    while (running && inflight[p] < window && sent[p] < maxPerPublisher) send(p);
  };
  // Retire finished messages of publisher p in sequence order, then top its window up.
  const retire = (p) => {
    while (done[p] < sent[p] && remaining[p][done[p] % ring] <= 0) {
      done[p] += 1;
      inflight[p] -= 1;
    }
    refill(p);
  };

  const sub = await openSubscribers(cfg, subs, pubs, (ms, seq, p) => {
    if (measuring) latency.add(ms);
    if (seq >= done[p] && seq < sent[p]) {
      const slot = seq % ring;
      remaining[p][slot] -= 1;
      if (remaining[p][slot] === 0 && seq === done[p]) retire(p);
    }
  });
  const { sockets, failures, state } = sub;
  if (sockets.length < subs) {
    await sub.close();
    return { error: 'could not open every subscriber', opened: sockets.length, failures };
  }
  const pubOpen = await connectMany(cfg.url, pubs, cfg);
  if (pubOpen.sockets.length !== pubs) {
    await Promise.all([sub.close(), closeAll(pubOpen.sockets)]);
    return { error: 'could not open the publishers', failures: pubOpen.failures };
  }
  publishers = pubOpen.sockets;
  await sleep(200);

  // A message some subscriber never gets (dropped, closed) is released after releaseAfterMs so
  // the loop goes on; the lost count reports it.
  const watchdog = setInterval(() => {
    const now = performance.now();
    for (let p = 0; p < pubs; p++) {
      while (done[p] < sent[p] && now - sentAt[p][done[p] % ring] > releaseAfterMs) {
        remaining[p][done[p] % ring] = 0;
        released += 1;
        retire(p);
      }
    }
  }, 100);
  for (let p = 0; p < pubs; p++) refill(p);

  await sleep((cfg.warmup ?? 1) * 1000);
  await mark(cfg, 'start');
  measuring = true;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const d0 = state.deliveries;
  const s0 = done.reduce((a, b) => a + b, 0);
  await sleep((cfg.duration ?? 5) * 1000);
  const d1 = state.deliveries;
  const s1 = done.reduce((a, b) => a + b, 0);
  const seconds = (performance.now() - t0) / 1000;
  const loadgenCpu = cpuSeconds(cpu0);
  await mark(cfg, 'end');
  measuring = false;
  running = false;
  const published = sent.reduce((a, b) => a + b, 0);
  await drain(state, published * subs);
  clearInterval(watchdog);
  state.running = false;
  const result = {
    subscribers: subs,
    publishers: pubs,
    window,
    size,
    published,
    publishes_per_s: Math.round((s1 - s0) / seconds),
    deliveries_per_s: Math.round((d1 - d0) / seconds),
    deliveries_in_window: d1 - d0,
    seconds: round(seconds),
    latency_ms: latency.summary(),
    lost: lostCount(state, sockets, published),
    released_without_full_delivery: released,
    out_of_order: state.outOfOrder,
    bad_messages: state.bad,
    closed_by_server: state.closed,
    loadgen_cpu_s: round(loadgenCpu),
  };
  await Promise.all([sub.close(), closeAll(publishers)]);
  return result;
}


module.exports = { broadcastFanout, broadcastCapacity };
