/*
 * ws-service browser demo: connects to /ws (echo) or /ws/channels/{name},
 * sends what you type, lists what arrives, and reconnects by itself with
 * exponential backoff and jitter. No dependencies, no build step.
 */
(() => {
  "use strict";

  const CHANNEL_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
  const BACKOFF_BASE_MS = 500;      // first retry after 0.25-0.5 s
  const BACKOFF_CAP_MS = 10000;     // never wait more than 10 s
  const CONNECT_TIMEOUT_MS = 10000; // give up on a handshake that hangs
  const HEALTH_TIMEOUT_MS = 3000;
  const MAX_LOG_ENTRIES = 500;

  // The contract's close codes, each explained once.
  const CLOSE_CODES = {
    1000: "closed normally",
    1001: "the server is stopping",
    1002: "protocol error",
    1003: "unsupported data",
    1006: "connection lost (no close frame)",
    1007: "invalid message data",
    1008: "policy violation: rate limit, slow consumer or token expired",
    1009: "message too big",
    1011: "server error",
    1012: "the server is restarting",
    1013: "the server is busy, try again later",
  };

  const REFUSED =
    "Connection refused before opening: check the token or channel " +
    "(the server answered 401/403)";
  const REFUSED_NO_TOKEN =
    "Connection refused before opening: the server may require a token, " +
    "or the channel is not allowed (it answered 401/403)";
  const UNREACHABLE =
    "Server unreachable: the connection failed and /healthz does not answer";

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"),
    statusText: $("status-text"),
    connectForm: $("connect-form"),
    modeEcho: $("mode-echo"),
    modeChannel: $("mode-channel"),
    channel: $("channel"),
    channelError: $("channel-error"),
    token: $("token"),
    connect: $("connect"),
    disconnect: $("disconnect"),
    closeReason: $("close-reason"),
    log: $("log"),
    clear: $("clear"),
    sendForm: $("send-form"),
    message: $("message"),
  };

  let ws = null;        // the current socket, or null
  let target = null;    // { path, kind, label, token }
  let wanted = false;   // the user wants to be connected
  let attempt = 0;      // failed attempts since the last open
  let retryTimer = 0;
  let connectTimer = 0;
  let generation = 0;   // bumps on every new socket; stale callbacks check it

  // ---- target and URL -------------------------------------------------------

  function readTarget() {
    const token = ui.token.value.trim();
    if (ui.modeEcho.checked) {
      return { path: "/ws", kind: "echo", label: "echo /ws", token };
    }
    const name = ui.channel.value.trim();
    if (!CHANNEL_RE.test(name)) {
      ui.channelError.textContent = name
        ? "Use 1–128 of A–Z a–z 0–9 _ . : - (no spaces)."
        : "Enter a channel name.";
      ui.channelError.hidden = false;
      ui.channel.setAttribute("aria-invalid", "true");
      ui.channel.focus();
      return null;
    }
    ui.channelError.hidden = true;
    ui.channel.removeAttribute("aria-invalid");
    if (name === "broadcast") {
      return { path: "/ws/broadcast", kind: "broadcast", label: "broadcast /ws/broadcast", token };
    }
    const path = "/ws/channels/" + encodeURIComponent(name);
    return { path, kind: "channel", label: "channel " + name, channel: name, token };
  }

  function wsUrl(t) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = t.token ? "?token=" + encodeURIComponent(t.token) : "";
    return scheme + "//" + location.host + t.path + query;
  }

  // ---- display --------------------------------------------------------------

  function setState(state, text) {
    ui.status.dataset.state = state;
    ui.statusText.textContent = text;
    document.body.dataset.state = state;
    ui.disconnect.disabled = state === "idle";
  }

  function clock(d) {
    const p = (n, w = 2) => String(n).padStart(w, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  const TAGS = { sent: "sent", echo: "echo", broadcast: "broadcast", info: "info", error: "error" };

  function addEntry(kind, text, tagText) {
    const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    const now = new Date();
    const last = ui.log.lastElementChild;
    // The same notice again (a server that stays down): count it, do not flood the log.
    if (kind !== "sent" && last && last.dataset.kind === kind && last.dataset.text === text &&
        (kind === "info" || kind === "error")) {
      const n = Number(last.dataset.count) + 1;
      last.dataset.count = String(n);
      last.querySelector("time").dateTime = now.toISOString();
      last.querySelector("time").textContent = clock(now);
      last.querySelector(".count").textContent = ` ×${n}`;
      return;
    }
    const li = document.createElement("li");
    li.className = "entry entry--" + kind;
    li.dataset.kind = kind;
    li.dataset.text = text;
    li.dataset.count = "1";

    const time = document.createElement("time");
    time.dateTime = now.toISOString();
    time.textContent = clock(now);

    const tag = document.createElement("span");
    tag.className = "tag tag--" + kind;
    tag.textContent = tagText || TAGS[kind] || kind;

    const body = document.createElement("span");
    body.className = "body";
    body.textContent = text;
    const count = document.createElement("span");
    count.className = "count";
    body.append(count);

    li.append(time, " ", tag, " ", body);
    ui.log.append(li);
    while (ui.log.childElementCount > MAX_LOG_ENTRIES) ui.log.firstElementChild.remove();
    if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function describeData(data) {
    if (typeof data === "string") return data;
    const bytes = new Uint8Array(data);
    const hex = Array.from(bytes.subarray(0, 32), (b) => b.toString(16).padStart(2, "0")).join(" ");
    return `[binary, ${bytes.length} bytes] ${hex}${bytes.length > 32 ? " …" : ""}`;
  }

  function describeClose(ev) {
    const what = CLOSE_CODES[ev.code] || "closed";
    return `Closed ${ev.code}: ${what}` + (ev.reason ? ` (“${ev.reason}”)` : "");
  }

  // Closes that are part of normal life (not a problem to fix) are shown as info.
  const ROUTINE_CLOSES = new Set([1000, 1001, 1012]);

  function showClose(text, kind) {
    ui.closeReason.textContent = text;
    ui.closeReason.dataset.kind = kind;
    addEntry(kind === "normal" ? "info" : "error", text);
  }

  // A socket that closes before it opened tells the page nothing (always 1006).
  // /healthz tells "server down" from "server up but it refused the handshake".
  async function serverAnswers() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), HEALTH_TIMEOUT_MS);
    try {
      const res = await fetch("/healthz", { cache: "no-store", signal: ctl.signal });
      return res.ok;
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- connection lifecycle -------------------------------------------------

  function clearTimers() {
    clearTimeout(retryTimer);
    clearTimeout(connectTimer);
    retryTimer = connectTimer = 0;
  }

  function dropSocket(code, reason) {
    const sock = ws;
    ws = null;
    generation++;
    if (sock && sock.readyState <= WebSocket.OPEN) {
      try { sock.close(code, reason); } catch { sock.close(); }
    }
  }

  function open() {
    clearTimers();
    const gen = ++generation;
    const t = target;
    let sock;
    try {
      sock = new WebSocket(wsUrl(t));
    } catch (err) {
      showClose("Cannot connect: " + err.message, "error");
      wanted = false;
      setState("idle", "Not connected");
      return;
    }
    sock.binaryType = "arraybuffer";
    ws = sock;
    let opened = false;
    setState("connecting", `Connecting to ${t.label}…`);

    connectTimer = setTimeout(() => {
      if (gen === generation && sock.readyState === WebSocket.CONNECTING) sock.close();
    }, CONNECT_TIMEOUT_MS);

    sock.onopen = () => {
      if (gen !== generation) return;
      clearTimeout(connectTimer);
      opened = true;
      attempt = 0;
      setState("open", `Connected · ${t.label}`);
      addEntry("info", `Connected to ${t.path}`);
    };

    sock.onmessage = (ev) => {
      if (gen !== generation) return;
      const tagText = t.kind === "channel" ? "#" + t.channel : undefined;
      addEntry(t.kind, describeData(ev.data), tagText);
    };

    sock.onclose = async (ev) => {
      if (gen !== generation) return;
      clearTimeout(connectTimer);
      ws = null;
      if (wanted) scheduleReconnect();
      else setState("idle", "Not connected");
      if (opened) {
        showClose(describeClose(ev), ROUTINE_CLOSES.has(ev.code) ? "normal" : "error");
        return;
      }
      const up = await serverAnswers();
      // Stale if the user switched target or disconnected, or a retry already got in.
      if (t !== target || !wanted || (ws && ws.readyState === WebSocket.OPEN)) return;
      if (up) showClose(t.token ? REFUSED : REFUSED_NO_TOKEN, "refused");
      else showClose(UNREACHABLE, "unreachable");
    };
  }

  function scheduleReconnect() {
    // Exponential backoff with "equal jitter": half fixed, half random, capped.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    attempt++;
    setState("reconnecting", `Reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})…`);
    retryTimer = setTimeout(open, delay);
  }

  function connect() {
    const t = readTarget();
    if (!t) return;
    dropSocket(1000, "switching endpoint");
    target = t;
    wanted = true;
    attempt = 0;
    open();
  }

  function disconnect() {
    if (!wanted && !ws) return;
    wanted = false;
    clearTimers();
    dropSocket(1000, "user disconnect");
    setState("idle", "Not connected");
    showClose("Disconnected by you (1000); not reconnecting", "normal");
  }

  function send(text) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      addEntry("error", "Not connected: message not sent");
      return false;
    }
    ws.send(text);
    addEntry("sent", text);
    return true;
  }

  // ---- wiring ---------------------------------------------------------------

  ui.connectForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    connect();
  });
  ui.disconnect.addEventListener("click", disconnect);
  ui.clear.addEventListener("click", () => ui.log.replaceChildren());
  ui.channel.addEventListener("input", () => {
    ui.modeChannel.checked = true;
    ui.channelError.hidden = true;
    ui.channel.removeAttribute("aria-invalid");
  });
  ui.sendForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.message.value;
    if (text === "") return;
    if (send(text)) ui.message.value = "";
    ui.message.focus();
  });
  // Back online: do not sit out the rest of the backoff.
  window.addEventListener("online", () => {
    if (wanted && !ws) open();
  });

  // Prefill from the page URL: /demo?channel=room1 (tokens stay out of URLs).
  const params = new URLSearchParams(location.search);
  const preset = params.get("channel");
  if (preset !== null) {
    ui.channel.value = preset;
    ui.modeChannel.checked = true;
  }

  connect();
})();
