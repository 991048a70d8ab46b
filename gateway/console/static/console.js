// Hearth console: plain JavaScript, no build step, no dependencies. Everything comes from this
// origin: /console/events (server-sent events, read with fetch so the API key can go in a header),
// the admin API to load and unload, and /v1/chat/completions for the playground.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "hearth.apiKey"; // sessionStorage only: gone when the tab closes
let models = [];
let chat = []; // the conversation so far: [{role, content}]
let abort = null; // the AbortController of the reply being streamed
const keyRequired = document.body.dataset.keyRequired === "true"; // the server says so in the page
const NEED_KEY = "This server needs an API key. It is kept in this browser tab only (sessionStorage).";

// -- the API key ---------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra);
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function askForKey(why) {
  if (!models.length) $("model-rows").replaceChildren(placeholder("enter the API key to see the models"));
  $("key-why").textContent = why;
  $("key-form").hidden = false;
  $("key-input").focus();
}

$("key-button").addEventListener("click", () => {
  const form = $("key-form");
  form.hidden = !form.hidden;
  if (!form.hidden) $("key-input").focus();
});
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key-input").value.trim();
  if (key) sessionStorage.setItem(KEY, key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  reconnect();
});
$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  if (keyRequired) {
    if (events) events.abort();
    clearTimeout(retry);
    status("API key needed", false);
    askForKey(NEED_KEY);
  } else {
    $("key-form").hidden = true;
    reconnect();
  }
});

function placeholder(text) {
  const row = document.createElement("tr");
  const td = row.insertCell();
  td.colSpan = 10;
  td.textContent = text;
  return row;
}

// The message of an error answer in either API's format (or the status line).
async function errorText(r) {
  try {
    const body = await r.json();
    const err = body.error;
    return r.status + ": " + (typeof err === "string" ? err : (err && err.message) || JSON.stringify(body));
  } catch (_) {
    return r.status + " " + r.statusText;
  }
}

// -- server-sent events over fetch ---------------------------------------------------------

// Calls onEvent(name, data) for every event of an SSE body; returns when it ends.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

let events = null; // the AbortController of the open event stream
let retry = null;

function status(text, ok) {
  const el = $("conn");
  el.textContent = text;
  el.className = "conn " + (ok ? "ok" : "bad");
}

function reconnect() {
  if (events) events.abort();
  clearTimeout(retry);
  connect();
}

async function connect() {
  const ctrl = (events = new AbortController());
  try {
    const r = await fetch("/console/events", { headers: headers(), signal: ctrl.signal, cache: "no-store" });
    if (r.status === 401) {
      status("API key needed", false);
      showModelsError(await errorText(r));
      askForKey(sessionStorage.getItem(KEY) ? "The API key was refused: enter the right one." : NEED_KEY);
      return; // the key form reconnects
    }
    if (!r.ok) throw new Error(await errorText(r));
    status("live", true);
    showModelsError(null);
    let ended = false;
    await readEvents(r, (name, data) => {
      if (name === "end") ended = true;
      else update(JSON.parse(data));
    });
    status(ended ? "server is shutting down: retrying" : "disconnected: retrying", false);
  } catch (e) {
    if (ctrl.signal.aborted) return;
    status("disconnected: retrying", false);
    showModelsError("event stream: " + e.message);
  }
  if (!ctrl.signal.aborted) retry = setTimeout(connect, 2000);
}

// -- models --------------------------------------------------------------------------------

function size(n) {
  if (n === null || n === undefined) return "–";
  for (const [unit, s] of [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (Math.abs(n) >= s) return (n / s).toFixed(1) + " " + unit;
  }
  return n + " B";
}

function duration(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

function keepAlive(m) {
  if (m.state === "unloaded" || m.state === "failed") return "–";
  if (m.pinned) return "pinned";
  if (m.expires_in_seconds !== null) return "unloads in " + duration(m.expires_in_seconds);
  if (m.keep_alive_seconds === null) return "forever";
  return duration(m.keep_alive_seconds) + " after use";
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

const pending = new Set(); // models with a load or unload under way from this page

function modelRow(m) {
  const row = document.createElement("tr");
  row.dataset.model = m.name;
  row.dataset.state = m.state;
  const name = cell(row, m.name);
  name.title = m.path || "";
  const st = cell(row, "");
  const badge = document.createElement("span");
  badge.className = "state " + m.state;
  badge.textContent = m.state;
  st.append(badge);
  if (m.detail) {
    const d = document.createElement("div");
    d.className = "detail";
    d.textContent = m.detail;
    st.append(d);
  }
  const ready = m.workers.filter((w) => w.state === "ready").length;
  cell(row, ready + "/" + m.replicas, "num");
  const mem = cell(row, size(m.memory_bytes), "num");
  mem.title = "estimate " + size(m.memory_estimate_bytes);
  if (m.memory_bytes === null) mem.textContent = "est. " + size(m.memory_estimate_bytes);
  cell(row, m.context_length ? m.context_length.toLocaleString() : "–", "num");
  cell(row, keepAlive(m));
  cell(row, String(m.running), "num");
  cell(row, String(m.waiting), "num");
  cell(row, String(m.restarts), "num");
  const actions = row.insertCell();
  if (m.replicas > 0) {
    const busy = pending.has(m.name);
    const loaded = ["starting", "loading", "ready", "draining"].includes(m.state);
    actions.append(
      button("Load", "load " + m.name, busy || loaded || m.state === "unloading", () => admin(m.name, "load")),
      button("Unload", "unload " + m.name, busy || m.state === "unloaded" || m.state === "unloading",
        () => admin(m.name, "unload")),
    );
  }
  return row;
}

function button(text, label, disabled, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.disabled = disabled;
  b.addEventListener("click", onClick);
  return b;
}

function showModelsError(text) {
  $("models-error").hidden = !text;
  $("models-error").textContent = text || "";
}

async function admin(name, action) {
  pending.add(name);
  render();
  try {
    const wait = action === "load" ? "?wait=false" : "";
    const r = await fetch("/admin/models/" + encodeURIComponent(name) + "/" + action + wait, {
      method: "POST",
      headers: headers(),
    });
    if (r.status === 401) askForKey("The admin API needs the API key.");
    showModelsError(r.ok ? null : action + " " + name + ": " + (await errorText(r)));
  } catch (e) {
    showModelsError(action + " " + name + ": " + e.message);
  } finally {
    pending.delete(name);
    render();
  }
}

function render() {
  const rows = $("model-rows");
  // keep the focused button focused across the re-render (the rows are rebuilt every second)
  const focused = document.activeElement && rows.contains(document.activeElement) ?
    document.activeElement.getAttribute("aria-label") : null;
  rows.replaceChildren(...models.map(modelRow));
  if (focused) {
    const again = [...rows.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === focused);
    if (again && !again.disabled) again.focus();
  }
  const chatModels = models.filter((m) => m.kind === "chat").map((m) => m.name);
  const select = $("p-model");
  const have = [...select.options].map((o) => o.value);
  if (have.join("\n") !== chatModels.join("\n")) {
    const current = select.value;
    select.replaceChildren(...chatModels.map((n) => new Option(n, n, false, n === current)));
  }
}

// -- live ----------------------------------------------------------------------------------

function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(2) + " s";
}

function chart(svg, points, key) {
  // x: seconds before now, over the history there is (at least a minute, at most the server's
  // window of five); y: 0 to a little over the series' maximum
  const span = Math.max(60, ...points.map((p) => -p.t));
  let max = 0;
  for (const p of points) max = Math.max(max, p[key]);
  const top = max > 0 ? max * 1.15 : 1;
  const xy = points.map((p) => [300 + (p.t / span) * 300, 60 - (p[key] / top) * 58]);
  const line = xy.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" ");
  const ns = "http://www.w3.org/2000/svg";
  const poly = document.createElementNS(ns, "polyline");
  poly.setAttribute("points", line);
  const area = document.createElementNS(ns, "polygon");
  if (xy.length) area.setAttribute("points", xy[0][0].toFixed(1) + ",60 " + line + " 300,60");
  svg.replaceChildren(area, poly);
  svg.dataset.max = String(max);
  svg.dataset.points = String(points.length);
  return max;
}

function updateLive(live) {
  $("v-tps").textContent = live.tokens_per_s === undefined ? "–" : live.tokens_per_s.toFixed(1);
  $("v-inflight").textContent = live.in_flight === undefined ? "–" : String(live.in_flight);
  $("v-p50").textContent = seconds(live.ttft_p50);
  $("v-p99").textContent = seconds(live.ttft_p99);
  $("v-cache").textContent = live.cache_hit_rate === null ? "–" : (live.cache_hit_rate * 100).toFixed(1) + " %";
  $("v-restarts").textContent = String(live.restarts);
  $("live-window").textContent = live.window_seconds ? "(last " + duration(live.window_seconds) + ")" : "";
  $("c-tps-max").textContent = "max " + chart($("c-tps"), live.series, "tokens_per_s").toFixed(1);
  $("c-inflight-max").textContent = "max " + chart($("c-inflight"), live.series, "in_flight");
  if (live.prompt_tokens === undefined) return;
  // running and waiting as the gateway counts them (the table's), not the workers' last heartbeats
  const running = models.reduce((s, m) => s + m.running, 0);
  const waiting = models.reduce((s, m) => s + m.waiting, 0);
  $("live-totals").textContent = "Now: " + running + " running, " + waiting + " waiting. Since the start: " +
    live.prompt_tokens.toLocaleString() + " prompt tokens, " + live.completion_tokens.toLocaleString() +
    " completion tokens.";
}

function update(snapshot) {
  models = snapshot.models;
  render();
  updateLive(snapshot.live);
  const loaded = models.filter((m) => !["unloaded", "failed"].includes(m.state));
  const mem = loaded.reduce((s, m) => s + (m.memory_bytes || 0), 0);
  $("totals").textContent = loaded.length + " of " + models.length + " models loaded, " + size(mem) + " held";
}

// -- playground ----------------------------------------------------------------------------

function message(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const stats = document.createElement("div");
  stats.className = "stats";
  div.append(who, body, stats);
  $("transcript").append(div);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return { div, body, stats };
}

function showChatError(text) {
  $("chat-error").hidden = !text;
  $("chat-error").textContent = text || "";
}

$("p-format").addEventListener("change", () => {
  $("p-schema-label").hidden = $("p-format").value !== "json_schema";
});

function requestBody() {
  const messages = [];
  const system = $("p-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const body = {
    model: $("p-model").value,
    messages: messages.concat(chat),
    stream: true,
    stream_options: { include_usage: true },
  };
  const t = $("p-temperature").value;
  if (t !== "") body.temperature = Number(t);
  const n = $("p-max-tokens").value;
  if (n !== "") body.max_tokens = Number(n);
  const format = $("p-format").value;
  if (format === "json_object") body.response_format = { type: "json_object" };
  if (format === "json_schema") {
    let schema;
    try {
      schema = JSON.parse($("p-schema").value);
    } catch (e) {
      throw new Error("the JSON schema is not valid JSON: " + e.message);
    }
    body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: schema } };
  }
  return body;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send() {
  const prompt = $("p-prompt").value;
  if (!prompt.trim() || abort) return;
  if (!$("p-model").value) return showChatError("no chat model is configured");
  showChatError(null);
  chat.push({ role: "user", content: prompt });
  let body;
  try {
    body = requestBody();
  } catch (e) {
    chat.pop();
    return showChatError(e.message);
  }
  $("p-prompt").value = "";
  message("user", prompt);
  const reply = message("assistant", "");
  reply.div.classList.add("streaming");
  const ctrl = (abort = new AbortController());
  busy(true);
  $("stop").focus();
  const t0 = performance.now();
  let first = null;
  let text = "";
  let usage = null;
  let finish = null;
  let fail = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: ctrl.signal,
    });
    if (r.status === 401) askForKey("The chat API needs the API key.");
    if (!r.ok) throw new Error(await errorText(r));
    await readEvents(r, (_, data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices || []) {
        if (c.delta && c.delta.content) {
          if (first === null) first = performance.now();
          text += c.delta.content;
          reply.body.textContent = text;
        }
        if (c.finish_reason) finish = c.finish_reason;
      }
      $("transcript").scrollTop = $("transcript").scrollHeight;
    });
  } catch (e) {
    fail = ctrl.signal.aborted ? "stopped" : e.message;
  }
  const total = (performance.now() - t0) / 1000;
  abort = null;
  busy(false);
  reply.div.classList.remove("streaming");
  reply.div.dataset.done = fail === "stopped" ? "stopped" : fail ? "failed" : "ok";
  if (text) chat.push({ role: "assistant", content: text });
  else chat.pop(); // a reply that never came: the turn can be sent again
  const parts = [];
  if (usage) {
    const cached = (usage.prompt_tokens_details || {}).cached_tokens || 0;
    parts.push("prompt " + usage.prompt_tokens + " (cached " + cached + ")", "completion " + usage.completion_tokens);
  }
  if (first !== null) parts.push("first token " + seconds((first - t0) / 1000));
  if (usage && usage.completion_tokens > 1 && first !== null && total > (first - t0) / 1000) {
    parts.push(((usage.completion_tokens - 1) / (total - (first - t0) / 1000)).toFixed(1) + " tok/s");
  }
  parts.push("total " + seconds(total));
  if (finish) parts.push("finish: " + finish);
  if (fail === "stopped") parts.push("stopped");
  else if (fail) parts.push("failed: " + fail);
  reply.stats.textContent = parts.join(" · ");
  if (fail && fail !== "stopped") {
    reply.div.classList.add("failed");
    showChatError(fail);
  }
  $("p-prompt").focus();
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
$("p-prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
$("stop").addEventListener("click", () => abort && abort.abort());
$("clear").addEventListener("click", () => {
  if (abort) abort.abort();
  chat = [];
  $("transcript").replaceChildren();
  showChatError(null);
});

if (keyRequired && !sessionStorage.getItem(KEY)) {
  status("API key needed", false);
  askForKey(NEED_KEY);
} else {
  connect();
}
