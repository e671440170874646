// The seed's Node `ws` servers, the reference every benchmark figure is a ratio to.
//
// The seed (a WebSocket tutorial) had two servers: an echo that replies `Echo: ${message}` and a
// broadcast that loops over `server.clients` sending each message to every open client. Both are
// kept exactly as written; the only changes are the ones a benchmark needs:
//   - one process serves both, routed by path like ws-service: `/ws/broadcast` is the broadcast
//     server, every other path is the echo server (query strings such as ?api_key= are ignored);
//   - the per-message console.log is off (a log line per message would measure the terminal);
//     pass --log to put it back;
//   - `GET /` answers like the seed's Express variant, so the harness can wait for readiness.
//
// Usage: node node_ws_server.js --port 8080 [--host 127.0.0.1] [--log]
'use strict';

const http = require('http');
const WebSocket = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const port = Number(arg('--port', '8080'));
const host = arg('--host', '127.0.0.1');
const log = process.argv.includes('--log');

const httpServer = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end('WebSocket Server is running');
});

// Seed section 2.2: the echo server.
const echoServer = new WebSocket.Server({ noServer: true });
echoServer.on('connection', (ws) => {
  if (log) console.log('Client connected');
  ws.on('message', (message) => {
    if (log) console.log(`Received: ${message}`);
    ws.send(`Echo: ${message}`);
  });
  ws.on('close', () => {
    if (log) console.log('Client disconnected');
  });
});

// Seed section 4.1: the broadcast server.
const broadcastServer = new WebSocket.Server({ noServer: true });
broadcastServer.on('connection', (ws) => {
  ws.on('message', (message) => {
    broadcastServer.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(message);
      }
    });
  });
});

httpServer.on('upgrade', (req, socket, head) => {
  const path = (req.url || '/').split('?')[0];
  const target = path === '/ws/broadcast' ? broadcastServer : echoServer;
  target.handleUpgrade(req, socket, head, (ws) => target.emit('connection', ws, req));
});

httpServer.listen(port, host, () => {
  console.log(`WebSocket server is running on ws://${host}:${port} pid=${process.pid}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
