// The benchmark's load generator: Node's `ws` client, one scenario per run.
//
// Usage: node main.js '<json config>'
//   config: { "scenario": "echo_throughput" | "echo_latency" | "broadcast" |
//             "broadcast_capacity" | "idle" | "handshake",
//             "url": "ws://127.0.0.1:PORT/ws?...", "deadline": seconds, "ack": true, ... }
// Loopback only: any URL whose host is not a loopback address is refused. The whole run is
// bounded by `deadline` seconds (default 120); each scenario also bounds its own counts.
'use strict';

const { emit, stopStdin } = require('./lib');
const { echoThroughput, echoLatency } = require('./echo');
const { broadcastFanout, broadcastCapacity } = require('./broadcast');
const { idleCapacity, handshakeRate } = require('./connections');

const SCENARIOS = {
  echo_throughput: echoThroughput,
  echo_latency: echoLatency,
  broadcast: broadcastFanout,
  broadcast_capacity: broadcastCapacity,
  idle: idleCapacity,
  handshake: handshakeRate,
};

function isLoopback(url) {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

async function main() {
  const cfg = JSON.parse(process.argv[2] || '{}');
  cfg.ack = cfg.ack !== false;
  const run = SCENARIOS[cfg.scenario];
  if (!run) throw new Error(`unknown scenario ${JSON.stringify(cfg.scenario)}`);
  if (!cfg.url || !isLoopback(cfg.url)) throw new Error(`refusing non-loopback url ${cfg.url}`);
  const deadline = setTimeout(() => {
    emit({ error: `deadline of ${cfg.deadline ?? 120} s exceeded` });
    process.exit(3);
  }, (cfg.deadline ?? 120) * 1000);
  deadline.unref();
  const result = await run(cfg);
  if (result.error) emit({ error: result.error, detail: result });
  else emit({ result });
  stopStdin();
  clearTimeout(deadline);
  // Sockets the server never closed must not keep the process alive.
  setTimeout(() => process.exit(0), 200).unref();
}

main().catch((err) => {
  emit({ error: String((err && err.stack) || err) });
  process.exit(2);
});
