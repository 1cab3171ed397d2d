// crome-edge serve web view: the live frame, watch answers, a question box and a per-stage latency chart.
//
// Everything goes through fetch() so the API key (if the server has one) travels in the Authorization
// header: EventSource and <img src> cannot send it. The frame is polled (one request in flight, on the
// page's keep-alive connection) instead of an endless MJPEG response, so the page holds at most three
// connections (frame, watch stream, a streamed reply) of the browser's six per host, and nothing stays open
// on the server once the tab is gone.
"use strict";

const STAGES = ["preprocess", "vision", "adapter_visual", "tokenize", "adapter_text", "prefill", "decode", "sample",
                "detokenize"];
const CANDIDATES_SHOWN = 3;    // a closed set's most likely answers shown beside an answer
const COLOURS = ["#64748b", "#2563eb", "#7c3aed", "#0891b2", "#9333ea", "#ea580c", "#16a34a", "#ca8a04", "#db2777"];
const RECENT = 30;             // answers the chart averages
const FRAME_INTERVAL_MS = 100; // the frame poll's pace while the tab is visible

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("crome-key") || "", recent: [], watch: new Map(), answerTimes: [] };

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) {
    $("key-form").hidden = false;
    throw new Error("this server needs an API key");
  }
  return response;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const fmt = (ms) => (ms === null || ms === undefined) ? "–" : (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));

async function errorText(response) {
  try { return (await response.json()).error.message; } catch (e) { return response.status + " " + response.statusText; }
}

// Server-sent events over fetch: calls onEvent(object) for every `data:` line that holds JSON.
async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

// --- health -------------------------------------------------------------------------------------------
async function health() {
  for (;;) {
    try {
      const body = await (await fetch("/health")).json();
      const pill = $("status");
      pill.textContent = body.status;
      pill.className = "pill " + (body.status === "ok" ? "ok" : body.status === "loading" ? "warn" : "bad");
      $("model").textContent = body.engine.model;
      $("provider").textContent = body.engine.providers || "";
      const camera = body.camera;
      $("camera-state").textContent = camera ? camera.source + " · " + camera.state
        + (camera.reconnects ? " · " + camera.reconnects + " reconnects" : "") : "none (uploaded images only)";
    } catch (e) {
      $("status").textContent = "server unreachable";
      $("status").className = "pill bad";
    }
    await sleep(2000);
  }
}

// --- the live frame -----------------------------------------------------------------------------------
async function frames() {
  for (;;) {
    // while the watch card's map is on, the picture is the frame of the answer it explains (showWatchMap)
    if (document.hidden || watchMapShown()) { await sleep(document.hidden ? 1000 : 200); continue; }
    try {
      const response = await showFrame("/v1/frame.jpg");
      if (response.ok) {
        $("frame-info").textContent = "frame " + response.headers.get("X-Frame-Id") + " · "
          + fmt(parseFloat(response.headers.get("X-Frame-Age-Ms"))) + " ms old when fetched";
      } else {
        $("frame-info").textContent = await errorText(response);
        await sleep(900);
      }
    } catch (e) {
      $("frame-info").textContent = String(e.message || e);
      await sleep(1000);
    }
    await sleep(FRAME_INTERVAL_MS);
  }
}

// Fetches a frame (the newest, or ?id=N an explained answer's) into the <img>; the response, for its headers.
async function showFrame(path) {
  const response = await api(path);
  if (!response.ok) return response;
  const url = URL.createObjectURL(await response.blob());
  await new Promise((resolve) => { $("frame").onload = resolve; $("frame").onerror = resolve; $("frame").src = url; });
  if (state.frameUrl) URL.revokeObjectURL(state.frameUrl);
  state.frameUrl = url;
  if ($("frame").naturalWidth) state.frameSize = [$("frame").naturalWidth, $("frame").naturalHeight];
  $("no-frame").hidden = true;
  return response;
}

function watchMapShown() {
  return $("watch-explain-toggle").checked && state.watchMap != null;
}

// --- watch prompts and their answers ------------------------------------------------------------------
async function loadWatchPrompts() {
  const response = await api("/v1/watch/prompts");
  if (!response.ok) return;
  const prompts = (await response.json()).data;
  const ids = new Set(prompts.map((p) => p.id));
  for (const id of [...state.watch.keys()]) if (!ids.has(id)) state.watch.delete(id);
  for (const p of prompts) if (!state.watch.has(p.id)) state.watch.set(p.id, { prompt: p.prompt, event: null });
  renderWatch();
}

function renderWatch() {
  const list = $("watch-list");
  list.replaceChildren();
  if (!state.watch.size) {
    const li = document.createElement("li");
    li.className = "muted small";
    li.textContent = "no watch prompts: add one below";
    list.append(li);
  }
  for (const [id, w] of state.watch) {
    const li = document.createElement("li");
    li.dataset.watchId = id;
    const head = document.createElement("div");
    head.className = "prompt";
    const text = document.createElement("span");
    text.textContent = w.prompt;
    const remove = document.createElement("button");
    remove.className = "remove";
    remove.title = "stop watching";
    remove.textContent = "×";
    remove.onclick = async () => { await api("/v1/watch/prompts/" + id, { method: "DELETE" }); loadWatchPrompts(); };
    head.append(text, remove);
    const answer = document.createElement("div");
    const meta = document.createElement("div");
    meta.className = "meta";
    const e = w.event;
    if (!e) {
      answer.className = "answer muted";
      answer.textContent = "…";
    } else if (e.type === "watch_error") {
      answer.className = "answer error";
      answer.textContent = e.error;
    } else {
      answer.className = "answer";
      answer.textContent = e.answer || "(empty answer)";
      meta.textContent = "frame " + e.frame_id + " · frame age at answer " + fmt(e.frame_age_ms) + " ms · latency "
        + fmt(e.latency_ms) + " ms · " + e.tokens + " tokens";
    }
    li.append(head, answer);
    if (e && e.type === "watch") li.append(confidenceLine(e.adapter, e.adapter_version, e.confidence, e.low_confidence));
    li.append(meta);
    list.append(li);
  }
}

// How sure an answer was and which adapter version said it (the `crome` object of an explained reply, or a watch
// event's fields): "colour @ 3f2a9c1 · margin 0.82 · red 97% · green 2% · blue 1%". low: under --min-margin.
function confidenceLine(adapter, version, confidence, low) {
  const line = document.createElement("div");
  line.className = "confidence" + (low ? " low" : "");
  const who = document.createElement("span");
  who.className = "adapter-version";
  who.textContent = adapter ? adapter + " @ " + (version || "?").slice(0, 7) : "frozen backbone";
  if (version) who.title = "adapter sha256 " + version;
  line.append(who);
  const c = confidence || {};
  if (c.first_token_margin !== null && c.first_token_margin !== undefined) {
    const margin = document.createElement("span");
    margin.className = "margin";
    margin.textContent = "margin " + c.first_token_margin.toFixed(2) + (low ? " (low)" : "");
    margin.title = "first answer token: top-1 minus top-2 probability; mean log-probability "
      + (c.mean_logprob === null ? "–" : c.mean_logprob.toFixed(3));
    line.append(margin);
  }
  if (c.candidates) {
    const list = document.createElement("span");
    list.className = "candidates";
    list.textContent = Object.entries(c.candidates).slice(0, CANDIDATES_SHOWN)
      .map(([answer, p]) => answer + " " + (100 * p).toFixed(0) + "%").join(" · ");
    list.title = "probability of each answer the adapter was trained on, within its answer set";
    line.append(list);
  }
  return line;
}

function remember(timings) {
  state.recent.push(timings);
  if (state.recent.length > RECENT) state.recent.shift();
  drawChart();
}

async function watchStream() {
  for (;;) {
    try {
      // with the watch card's heat-map toggle on, the stream asks for maps: the server computes them only then
      state.watchAbort = new AbortController();
      const response = await api("/v1/watch" + ($("watch-explain-toggle").checked ? "?explain=true" : ""),
                                 { signal: state.watchAbort.signal });
      if (!response.ok) throw new Error(await errorText(response));
      await readSSE(response, (e) => {
        if (e.type === "watch" && e.explain && $("watch-explain-toggle").checked) showWatchMap(e);
        if (e.type === "watch" || e.type === "watch_error") {
          const w = state.watch.get(e.watch_id);
          if (w) { w.event = e; renderWatch(); } else { loadWatchPrompts(); }
          if (e.type === "watch") {
            remember(e.timings_ms);
            state.answerTimes.push(e.time);
            while (state.answerTimes.length > 50) state.answerTimes.shift();
            const t = state.answerTimes;
            if (t.length > 1) $("answers-rate").textContent = ((t.length - 1) / (t[t.length - 1] - t[0])).toFixed(2)
              + " watch answers/s (last " + t.length + ")";
          }
        }
      });
    } catch (e) {
      console.warn("watch stream:", e);
    }
    await sleep(1000); // the server restarted or the stream ended: reconnect
  }
}

$("watch-form").onsubmit = async (event) => {
  event.preventDefault();
  const prompt = $("watch-prompt").value.trim();
  if (!prompt) return;
  const response = await api("/v1/watch/prompts", { method: "POST", headers: { "Content-Type": "application/json" },
                                                    body: JSON.stringify({ prompt }) });
  if (response.ok) $("watch-prompt").value = "";
  else alert(await errorText(response));
  loadWatchPrompts();
};

// --- a question about the current frame (streamed reply) ----------------------------------------------
$("ask-form").onsubmit = async (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const reply = $("reply"), info = $("reply-info");
  reply.className = "reply";
  reply.textContent = "";
  $("reply-confidence").replaceChildren();
  info.textContent = "waiting for the engine…";
  $("ask").disabled = true;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: [
        { type: "text", text: question }, { type: "image_url", image_url: { url: "camera" } }] }],
        stream: true, stream_options: { include_usage: true }, explain: true }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    let timings = null, crome = null;
    await readSSE(response, (chunk) => {
      if (chunk.crome) crome = chunk.crome; // on the finish chunk
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        reply.textContent += choice.delta.content;
        info.textContent = "streaming…";
      }
      if (chunk.timings) timings = chunk.timings;
      if (chunk.crome && chunk.crome.explain) showMap(chunk.crome.explain);
    });
    if (!reply.textContent) reply.textContent = "(empty answer)";
    if (crome) $("reply-confidence").append(confidenceLine(crome.adapter, crome.adapter_version, crome.confidence, false));
    if (timings) {
      remember(timings.stages_ms);
      info.textContent = "frame " + timings.frame_id + " · first token " + fmt(timings.prompt_ms) + " ms · "
        + timings.predicted_n + " tokens · total " + fmt(timings.total_ms) + " ms · frame age at answer "
        + fmt(timings.frame_age_ms) + " ms";
    } else {
      info.textContent = "";
    }
  } catch (e) {
    reply.className = "reply error";
    reply.textContent = String(e.message || e);
    info.textContent = "";
  } finally {
    $("ask").disabled = false;
  }
};

// --- the answer's heat map over the frame (docs/explain.md) ----------------------------------------------
// The server's map is a small grid over the whole frame (the bundle's patch grid, summing to 1); drawn on a canvas
// laid over the <img>, where object-fit: contain put the picture, hottest cell most opaque.
function showMap(explain) {
  if (explain.unavailable) {
    state.map = null;
    $("explain-info").textContent = explain.unavailable;
  } else {
    state.map = explain;
    $("explain-info").textContent = "heat map of " + (explain.adapter || "the frozen backbone") + " · "
      + explain.grid_shape.join("×") + " grid · queries weighted " + explain.weighting;
  }
  drawOverlay();
}

function showWatchMap(e) {
  if (e.explain.unavailable) {
    state.watchMap = null;
    $("watch-explain-info").textContent = e.explain.unavailable;
  } else {
    state.watchMap = e.explain;
    $("watch-explain-info").textContent = "heat map of “" + e.prompt + "” → " + e.answer + " (frame " + e.frame_id
      + ", " + (e.explain.adapter || "the frozen backbone") + ")";
    showAnsweredFrame(e.frame_id);
  }
  drawOverlay();
}

// The map over the frame it was computed on: on a moving belt the newest frame has the part elsewhere.
async function showAnsweredFrame(frameId) {
  const seq = (state.answeredFrameSeq = (state.answeredFrameSeq || 0) + 1);
  try {
    const response = await showFrame("/v1/frame.jpg?id=" + frameId);
    if (seq !== state.answeredFrameSeq || !watchMapShown()) return; // a newer answer, or the toggle went off
    $("frame-info").textContent = response.ok ? "frame " + frameId + " · the frame the watch answer is about"
      : "the watch answer's frame " + frameId + " is gone (" + await errorText(response) + "): map over an older frame";
  } catch (error) {
    $("frame-info").textContent = String(error.message || error);
  }
  drawOverlay();
}

$("watch-explain-toggle").onchange = () => {
  if (!$("watch-explain-toggle").checked) { state.watchMap = null; $("watch-explain-info").textContent = ""; }
  if (state.watchAbort) state.watchAbort.abort(); // reconnect, asking for maps or no longer
  drawOverlay();
};

function drawOverlay() {
  const canvas = $("overlay");
  // the watch card's map when its toggle is on (the live one), else the ask box's
  const watching = $("watch-explain-toggle").checked && state.watchMap;
  const map = watching ? state.watchMap : ($("explain-toggle").checked ? state.map : null);
  // the last loaded frame's size: while the next frame loads the <img> may report none, and the map must not blink
  const size = state.frameSize;
  if (!map || !size) {
    canvas.hidden = true;
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
  canvas.hidden = false;
  canvas.width = canvas.clientWidth;
  canvas.height = canvas.clientHeight;
  const scale = Math.min(canvas.width / size[0], canvas.height / size[1]);
  const w = size[0] * scale, h = size[1] * scale;
  const x0 = (canvas.width - w) / 2, y0 = (canvas.height - h) / 2;
  const [rows, cols] = map.grid_shape;
  const max = Math.max(...map.grid.flat(), 1e-9);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const level = map.grid[r][c] / max;
      ctx.fillStyle = "hsla(" + Math.round(240 * (1 - level)) + ", 100%, 50%, " + (0.6 * level).toFixed(3) + ")";
      ctx.fillRect(x0 + c * w / cols, y0 + r * h / rows, Math.ceil(w / cols), Math.ceil(h / rows));
    }
  }
}

$("explain-toggle").onchange = drawOverlay;
window.addEventListener("resize", drawOverlay);

// --- the per-stage latency chart ----------------------------------------------------------------------
function drawChart() {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const n = state.recent.length;
  $("chart-n").textContent = n;
  const means = STAGES.map((s) => state.recent.reduce((sum, t) => sum + (t[s] || 0), 0) / Math.max(n, 1));
  const max = Math.max(...means, 1e-3);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "13px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  const left = 110, right = 60, row = canvas.height / STAGES.length;
  STAGES.forEach((stage, i) => {
    const y = i * row + row / 2;
    ctx.fillStyle = "#374151";
    ctx.fillText(stage, 4, y);
    const w = (canvas.width - left - right) * means[i] / max;
    ctx.fillStyle = COLOURS[i];
    ctx.fillRect(left, y - row * 0.3, Math.max(w, 1), row * 0.6);
    ctx.fillStyle = "#111827";
    ctx.fillText(fmt(means[i]), left + Math.max(w, 1) + 6, y);
  });
}

$("key-form").onsubmit = (event) => {
  event.preventDefault();
  state.key = $("key").value;
  sessionStorage.setItem("crome-key", state.key);
  $("key-form").hidden = true;
  loadWatchPrompts();
};

drawChart();
health();
frames();
loadWatchPrompts().catch((e) => console.warn(e));
watchStream();
