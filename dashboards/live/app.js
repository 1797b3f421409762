// throng command-centre dashboard: plain Canvas 2D, no libraries, works with no internet.
// Data: /api/scenario (segments, basemap), /ws/live (heatmap, segments, alert frames),
// /api/cells/boundaries (hexagon outlines), /api/health (watermark lag).
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const auth = token ? { Authorization: "Bearer " + token } : {};
const TIER = { low: "#2e9e5b", medium: "#e3b505", high: "#e8590c", critical: "#c92a2a", degraded: "#868e96" };
const $ = (id) => document.getElementById(id);

const state = { scenario: null, bbox: null, cells: [], outlines: new Map(), segments: new Map(), frames: 0, alerts: 0 };

function densityColour(d) {
  if (d >= 4) return TIER.critical;
  if (d >= 2) return TIER.high;
  if (d >= 1) return TIER.medium;
  return TIER.low;
}

// Equirectangular projection fitted to the scenario's bounding box (metres are square at 31°N).
function projector(canvas) {
  const [x0, y0, x1, y1] = state.bbox;
  const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
  const w = canvas.width, h = canvas.height, pad = 20;
  const s = Math.min((w - 2 * pad) / ((x1 - x0) * k), (h - 2 * pad) / (y1 - y0));
  const ox = (w - (x1 - x0) * k * s) / 2, oy = (h - (y1 - y0) * s) / 2;
  return ([lng, lat]) => [ox + (lng - x0) * k * s, h - oy - (lat - y0) * s];
}

function path(ctx, P, ring) {
  ring.forEach((c, i) => { const [x, y] = P(c); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
}

function draw() {
  const canvas = $("map");
  const r = canvas.getBoundingClientRect();
  canvas.width = Math.max(300, r.width * devicePixelRatio);
  canvas.height = Math.max(200, r.height * devicePixelRatio);
  if (!state.bbox) return;
  const ctx = canvas.getContext("2d");
  const P = projector(canvas);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const f of state.scenario.basemap.features || []) {
    const g = f.geometry; ctx.beginPath();
    if (g.type === "Polygon") { path(ctx, P, g.coordinates[0]); ctx.fillStyle = "#16324a"; ctx.fill(); }
    if (g.type === "LineString") {
      path(ctx, P, g.coordinates); ctx.strokeStyle = "#33414c"; ctx.lineWidth = 6 * devicePixelRatio; ctx.stroke();
      const [x, y] = P(g.coordinates[0]); ctx.fillStyle = "#6c7a86"; ctx.font = `${11 * devicePixelRatio}px sans-serif`; ctx.fillText(f.properties.name, x + 4, y - 4);
    }
  }
  ctx.globalAlpha = 0.75;
  for (const [h3, , density] of state.cells) {
    const ring = state.outlines.get(h3);
    if (!ring) continue;
    ctx.beginPath(); path(ctx, P, ring); ctx.closePath();
    ctx.fillStyle = densityColour(density); ctx.fill();
  }
  ctx.globalAlpha = 1;
  for (const f of state.scenario.segments.features || []) {
    const s = state.segments.get(f.properties.id);
    ctx.beginPath(); path(ctx, P, f.geometry.coordinates[0]); ctx.closePath();
    ctx.strokeStyle = TIER[s ? s.tier : "low"] || TIER.degraded; ctx.lineWidth = 2.5 * devicePixelRatio; ctx.stroke();
  }
}

async function fetchJson(url, opts = {}) {
  const r = await fetch(url, { ...opts, headers: { ...auth, ...(opts.headers || {}) } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function ensureOutlines(ids) {
  const missing = ids.filter((id) => !state.outlines.has(id));
  for (let i = 0; i < missing.length; i += 2000) {
    const got = await fetchJson("/api/cells/boundaries", { method: "POST", body: JSON.stringify(missing.slice(i, i + 2000)) });
    for (const [k, v] of Object.entries(got)) state.outlines.set(k, v);
  }
}

function fmtMin(m) { return m == null ? "—" : m < 1 ? "<1 min" : m > 600 ? ">10 h" : Math.round(m) + " min"; }
function arrow(dir) { return dir === "rising" ? "↑" : dir === "falling" ? "↓" : "→"; }

function renderSegments(list) {
  list.forEach((s) => state.segments.set(s.id, s));
  const rows = [...state.segments.values()].sort((a, b) => (b.people || 0) - (a.people || 0));
  $("rows").innerHTML = rows.map((s) => `<tr><td>${s.name}</td><td>${Math.round(s.people || 0).toLocaleString()}</td>` +
    `<td>${(s.density || 0).toFixed(2)}</td><td>${s.flow == null ? "—" : s.flow.toFixed(0)}</td>` +
    `<td><span class="tier t-${s.tier}">${s.tier}</span></td><td>${arrow(s.trend_dir)} ${(s.trend || 0).toFixed(0)}/min</td>` +
    `<td>${fmtMin(s.minutes_to_next)}</td></tr>`).join("");
  const sel = $("org-seg");
  if (sel.options.length !== rows.length) {
    sel.innerHTML = rows.map((s) => `<option value="${s.id}">${s.name}</option>`).join("");
  }
  updateStatus();
}

// Times in the event's own zone (the scenario's time_zone), whatever the viewing machine's is.
function localTime(ms) {
  const tz = (state.scenario && state.scenario.time_zone) || "UTC";
  return new Date(ms).toLocaleTimeString("zh-CN", { hour12: false, timeZone: tz });
}

// One list item per alert, keyed by segment and ts (the pair names an alert); an unacknowledged
// critical alert pulses until someone acknowledges it, on this screen or any other.
function alertKey(seg, ts) { return seg + "@" + ts; }

function addAlert(a) {
  state.alerts++;
  const li = document.createElement("li");
  li.dataset.key = alertKey(a.segment_id, a.ts);
  li.dataset.tier = a.to_tier;
  const t = localTime(a.ts);
  li.innerHTML = `<b>${t}</b> <a href="#" class="seg-link" data-seg="${a.segment_id}">${a.name}</a>: <span class="tier t-${a.from_tier}">${a.from_tier}</span> → ` +
    `<span class="tier t-${a.to_tier}">${a.to_tier}</span> — ${a.reason} <span class="ack-slot"></span>`;
  $("alert-list").prepend(li);
  while ($("alert-list").children.length > 200) $("alert-list").lastChild.remove();
  showAck(li, a.ack || null);
  updateStatus();
}

function showAck(li, ack) {
  const slot = li.querySelector(".ack-slot");
  li.classList.toggle("acked", !!ack);
  li.classList.toggle("crit-unacked", !ack && li.dataset.tier === "critical");
  if (ack) {
    li.dataset.ackBy = ack.by;
    slot.innerHTML = `<span class="ack-by">✓ ${ack.by} ${localTime(ack.ts)}</span>`;
  } else {
    slot.innerHTML = `<button class="ack-btn">确认 Acknowledge</button>`;
    slot.querySelector("button").onclick = () => acknowledge(li);
  }
  const n = document.querySelectorAll("#alert-list li.crit-unacked").length;
  const el = $("unacked");
  el.dataset.count = n;
  el.textContent = n ? `${n} critical unacknowledged 未确认` : "all acknowledged 已确认";
  el.className = "pill" + (n ? " alarm" : "");
}

async function acknowledge(li) {
  const [seg, ts] = li.dataset.key.split("@");
  try {
    const r = await fetchJson("/api/alerts/ack", { method: "POST", body: JSON.stringify({ segment_id: seg, ts: Number(ts) }) });
    showAck(li, r.ack);
  } catch (err) { li.querySelector(".ack-slot").textContent = "refused 拒绝: " + err.message; }
}

function onAck(a) {
  const li = document.querySelector(`#alert-list li[data-key="${CSS.escape(alertKey(a.segment_id, a.alert_ts))}"]`);
  if (li) showAck(li, a);
}

function updateStatus() {
  const st = $("status");
  st.dataset.hexagons = state.cells.filter(([h]) => state.outlines.has(h)).length;
  st.dataset.rows = $("rows").children.length;
  st.dataset.alerts = state.alerts;
  st.dataset.frames = state.frames;
  st.textContent = `${st.dataset.hexagons} cells · ${st.dataset.rows} segments · ${state.alerts} alerts`;
}

async function onFrame(f) {
  state.frames++;
  if (f.type === "heatmap") {
    await ensureOutlines(f.cells.map((c) => c[0]));
    state.cells = f.cells;
    const clock = $("clock");
    clock.textContent = localTime(f.window_end) + (f.final ? "" : " (provisional)");
    clock.dataset.windowEnd = f.window_end;
    if (!f.final && f.sources) renderFeeds(f.sources);
  } else if (f.type === "segments") {
    renderSegments(f.segments);
  } else if (f.type === "alert") {
    addAlert(f);
  } else if (f.type === "ack") {
    onAck(f);
  }
  draw();
  updateStatus();
}

let backoff = 500;
function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws/live${token ? "?token=" + encodeURIComponent(token) : ""}`);
  ws.onopen = () => { backoff = 500; $("conn").textContent = "live 实时"; $("conn").className = "pill up"; };
  ws.onmessage = (e) => { try { onFrame(JSON.parse(e.data)); } catch (err) { console.error(err); } };
  ws.onclose = () => {
    $("conn").textContent = "reconnecting 重连中…"; $("conn").className = "pill down";
    setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 10000);
  };
}

function span(ms) {
  if (ms == null) return "—";
  const s = Math.round(ms / 1000);
  return s < 90 ? s + " s" : s < 5400 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h";
}

// "carrier-b in · carrier-a due in 2 min": a quiet street with a feed still due is not an empty one.
function renderFeeds(sources) {
  const el = $("feeds");
  el.innerHTML = sources.map((s) => {
    const name = s.source.replace(/^lbs\//, "");
    const what = s.state === "due" ? (s.due_in_ms == null ? "due" : s.due_in_ms > 0 ? "due in " + span(s.due_in_ms) : "overdue") : s.state;
    return `<span class="f-${s.state}" data-source="${s.source}" data-state="${s.state}">${name} ${what}</span>`;
  }).join(" · ");
  el.dataset.due = sources.filter((s) => s.state === "due").length;
}

function renderSources(sources) {
  $("source-rows").innerHTML = sources.map((s) =>
    `<tr data-source="${s.source}"><td>${s.source}</td><td>${s.active ? "active" : "idle"}</td>` +
    `<td>${span(s.delay_p50_ms)}</td><td>${span(s.delay_p99_ms)}</td><td>${span(s.last_arrival_age_ms)} ago</td>` +
    `<td>${s.late} late</td></tr>`).join("");
}

async function pollHealth() {
  try {
    const h = await fetchJson("/api/health");
    const lag = h.engine && h.engine.watermark_lag_ms;
    const el = $("lag");
    el.textContent = lag == null ? "—" : span(lag);
    el.dataset.lagMs = lag == null ? "" : lag;
    // Amber past two minutes, red past ten: the newest window a viewer sees is that old.
    el.className = "pill" + (lag == null ? "" : lag > 600000 ? " stuck" : lag > 120000 ? " behind" : "");
    renderSources((h.engine && h.engine.sources) || []);
    if (h.engine && h.engine.open_window_sources) renderFeeds(h.engine.open_window_sources);
  } catch (e) { $("lag").textContent = "?"; }
}

$("org-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = {};
  if ($("org-capacity").value) body.capacity = Number($("org-capacity").value);
  if ($("org-high").value) body.density = { high: Number($("org-high").value) };
  const tok = $("org-token").value || token;
  try {
    const r = await fetchJson(`/api/segments/${encodeURIComponent($("org-seg").value)}/thresholds`,
      { method: "PUT", body: JSON.stringify(body), headers: tok ? { Authorization: "Bearer " + tok } : {} });
    $("org-result").textContent = "saved 已保存: capacity " + r.thresholds.capacity + ", density high " + r.thresholds.density.high;
  } catch (err) { $("org-result").textContent = "refused 拒绝: " + err.message; }
});

async function main() {
  state.scenario = await fetchJson("/api/scenario");
  state.bbox = state.scenario.bbox;
  $("tz").textContent = state.scenario.time_zone || "UTC";
  const segs = await fetchJson("/api/segments");
  renderSegments(segs.filter((s) => s.tier != null));
  const past = await fetchJson("/api/alerts?since=" + (Date.now() - 3600 * 1000)).catch(() => []);
  past.reverse().forEach(addAlert);
  draw();
  connect();
  pollHealth(); setInterval(pollHealth, 5000);
  addEventListener("resize", draw);
}
main().catch((e) => { $("status").textContent = "error: " + e.message; });
