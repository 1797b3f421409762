// throng command-centre dashboard: plain Canvas 2D, no libraries, works with no internet.
// Data: /api/scenario (segments, ground, basemap), /ws/live (heatmap, segments, alert and ack frames),
// /api/cells/boundaries (hexagon outlines), /api/health (watermark lag), /api/history/* (rewind,
// drill-down charts), /api/segments/{id} (drill-down), /api/alerts (+ /ack).
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const auth = token ? { Authorization: "Bearer " + token } : {};
const TIER = { low: "#2e9e5b", medium: "#e3b505", high: "#e8590c", critical: "#c92a2a", degraded: "#868e96" };
const $ = (id) => document.getElementById(id);

const state = { scenario: null, bbox: null, cells: [], outlines: new Map(), segments: new Map(), frames: 0, alerts: 0,
  liveCells: [], names: new Map(), paths: [] };
// Rewind: when `on`, the map and table show history at `cursor` (event time, ms) instead of live frames.
const rw = { on: false, playing: false, cursor: 0, first: 0, last: 0, chunk: null, shownEnd: null, segments: new Map(), loading: false };

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
  // Ground no segment covers (junctions, kerbs): walkable, counted apart, drawn faint and dashed.
  ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
  for (const f of (state.scenario.ground && state.scenario.ground.features) || []) {
    if (f.geometry.type !== "Polygon") continue;
    ctx.beginPath(); path(ctx, P, f.geometry.coordinates[0]); ctx.closePath();
    ctx.strokeStyle = "#6c7a86"; ctx.lineWidth = 1 * devicePixelRatio; ctx.stroke();
  }
  ctx.setLineDash([]);
  const shown = rw.on ? rw.segments : state.segments;
  state.paths = [];
  for (const f of state.scenario.segments.features || []) {
    const s = shown.get(f.properties.id);
    const p = new Path2D();
    f.geometry.coordinates[0].forEach((c, i) => { const [x, y] = P(c); i ? p.lineTo(x, y) : p.moveTo(x, y); });
    p.closePath();
    state.paths.push({ id: f.properties.id, path: p });
    ctx.strokeStyle = TIER[s ? s.tier : "low"] || TIER.degraded; ctx.lineWidth = 2.5 * devicePixelRatio; ctx.stroke(p);
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
  if (!rw.on) renderRows([...state.segments.values()]);
}

function renderRows(list) {
  const rows = list.slice().sort((a, b) => (b.people || 0) - (a.people || 0));
  $("rows").innerHTML = rows.map((s) => `<tr data-seg="${s.id}" data-people="${Math.round(s.people || 0)}"><td>${s.name || state.names.get(s.id) || s.id}</td><td>${Math.round(s.people || 0).toLocaleString()}</td>` +
    `<td>${(s.density || 0).toFixed(2)}</td><td>${s.flow == null ? "—" : s.flow.toFixed(0)}</td>` +
    `<td><span class="tier t-${s.tier}">${s.tier}</span></td><td>${s.trend == null ? "—" : arrow(s.trend_dir) + " " + s.trend.toFixed(0) + "/min"}</td>` +
    `<td>${fmtMin(s.minutes_to_next)}</td></tr>`).join("");
  const sel = $("org-seg");
  if (sel.options.length !== rows.length) {
    sel.innerHTML = rows.map((s) => `<option value="${s.id}">${s.name || state.names.get(s.id) || s.id}</option>`).join("");
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
    if (!f.final && f.sources) renderFeeds(f.sources);
    state.liveCells = f.cells;
    if (rw.on) return;
    await ensureOutlines(f.cells.map((c) => c[0]));
    state.cells = f.cells;
    const clock = $("clock");
    clock.textContent = localTime(f.window_end) + (f.final ? "" : " (provisional)");
    clock.dataset.windowEnd = f.window_end;
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

// ---- Rewind: a slider over the last hours of history, played at a chosen speed. ----
const CHUNK_MS = 30 * 60 * 1000;

async function openRewind(back_ms) {
  const r = await fetchJson("/api/history/range");
  if (r.last == null) { $("rw-time").textContent = "no history yet 暂无历史"; $("rewind").hidden = false; return; }
  rw.on = true; rw.first = Math.max(r.first, r.last - 6 * 3600 * 1000); rw.last = r.last; rw.slide = r.slide_ms;
  const slider = $("rw-slider");
  slider.min = rw.first; slider.max = rw.last; slider.step = r.slide_ms;
  $("rewind").hidden = false;
  await seek(Math.max(rw.first, rw.last - back_ms));
}

async function seek(t) {
  rw.cursor = t;
  $("rw-slider").value = t;
  if (!rw.chunk || t < rw.chunk.from || t > rw.chunk.to) {
    const from = t - rw.slide, to = t + CHUNK_MS;
    rw.chunk = { from, to, windows: (await fetchJson(`/api/history/segments?from=${from}&to=${to}`)).windows };
  }
  let w = null;
  for (const x of rw.chunk.windows) { if (x.window_end <= t) w = x; else break; }
  if (!w || w.window_end === rw.shownEnd) return;
  rw.shownEnd = w.window_end;
  rw.segments = new Map(w.segments.map((s) => [s.id, { ...s, name: state.names.get(s.id) }]));
  renderRows([...rw.segments.values()]);
  const clock = $("clock");
  clock.textContent = "回放 REWIND " + localTime(w.window_end);
  clock.className = "rewind";
  clock.dataset.windowEnd = w.window_end;
  $("rw-time").textContent = localTime(w.window_end);
  $("rewind").dataset.windowEnd = w.window_end;
  if (!rw.loading) {
    rw.loading = true;
    try {
      const h = await fetchJson(`/api/history/heatmap?at=${w.window_end}`);
      await ensureOutlines(h.cells.map((c) => c[0]));
      if (rw.on) state.cells = h.cells;
    } finally { rw.loading = false; }
  }
  draw(); updateStatus();
}

function backToLive() {
  rw.on = false; rw.playing = false; rw.chunk = null; rw.shownEnd = null;
  $("rewind").hidden = true; $("rw-play").textContent = "▶ play";
  $("clock").className = "";
  state.cells = state.liveCells;
  renderRows([...state.segments.values()]);
  draw();
}

setInterval(async () => {
  if (!rw.on || !rw.playing) return;
  const next = rw.cursor + Number($("rw-speed").value) * 250;
  if (next >= rw.last) {
    const r = await fetchJson("/api/history/range").catch(() => null);
    if (r && r.last > rw.last) { rw.last = r.last; $("rw-slider").max = r.last; }
    if (next >= rw.last) { rw.playing = false; $("rw-play").textContent = "▶ play"; }
  }
  await seek(Math.min(next, rw.last)).catch(() => {});
}, 250);

$("rw-open").addEventListener("click", () => openRewind(30 * 60 * 1000).catch((e) => { $("rw-time").textContent = e.message; }));
$("rw-live").addEventListener("click", backToLive);
$("rw-play").addEventListener("click", () => { rw.playing = !rw.playing; $("rw-play").textContent = rw.playing ? "❚❚ pause" : "▶ play"; });
$("rw-slider").addEventListener("input", (e) => seek(Number(e.target.value)));

// ---- Drill-down: one segment's last hour against its thresholds, its sources, its alerts. ----
function svgChart(points, levels, unit, nowcast) {
  const W = 600, H = 150, L = 40, R = 70, T = 8, B = 20;
  if (!points.length) return "<p class='muted'>no history yet</p>";
  const t0 = points[0][0], tEnd = nowcast ? Math.max(points[points.length - 1][0], nowcast[1][0]) : points[points.length - 1][0];
  const t1 = Math.max(tEnd, t0 + 60000);
  const top = Math.max(...points.map((p) => p[1]), levels ? levels.high : 0, nowcast ? nowcast[1][1] : 0) * 1.15 || 1;
  const x = (t) => L + (t - t0) / (t1 - t0) * (W - L - R), y = (v) => T + (1 - Math.min(v / top, 1.02)) * (H - T - B);
  let s = `<svg viewBox="0 0 ${W} ${H}" width="100%" class="drill-chart"><rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="#11191f"/>`;
  for (const [name, v] of Object.entries(levels || {})) {
    if (v > top) { s += `<text x="${W - R + 4}" y="${T + 8}" fill="${TIER[name]}" font-size="10">${name} ${v} ↑</text>`; continue; }
    s += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="${TIER[name]}" stroke-dasharray="5 4"/><text x="${W - R + 4}" y="${y(v) + 4}" fill="${TIER[name]}" font-size="10">${name} ${v}</text>`;
  }
  for (let k = 0; k <= 3; k++) s += `<text x="${L - 4}" y="${y(top * k / 3) + 3}" fill="#8c99a6" font-size="9" text-anchor="end">${(top * k / 3).toFixed(top < 3 ? 2 : 0)}</text>`;
  for (let k = 0; k <= 4; k++) { const t = t0 + (t1 - t0) * k / 4; s += `<text x="${x(t)}" y="${H - 6}" fill="#8c99a6" font-size="9" text-anchor="middle">${localTime(t).slice(0, 5)}</text>`; }
  s += `<polyline fill="none" stroke="#4dabf7" stroke-width="1.8" points="${points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ")}"/>`;
  if (nowcast) s += `<line class="nowcast" x1="${x(nowcast[0][0])}" y1="${y(nowcast[0][1])}" x2="${x(nowcast[1][0])}" y2="${y(nowcast[1][1])}" stroke="#ff922b" stroke-width="1.5" stroke-dasharray="2 3"/>`;
  return s + `<text x="${L + 4}" y="${T + 11}" fill="#8c99a6" font-size="10">${unit}</text></svg>`;
}

async function openDrill(id) {
  const el = $("drill");
  const seg = await fetchJson(`/api/segments/${encodeURIComponent(id)}`);
  const end = seg.window_end || Date.now();
  const [hist, alerts] = await Promise.all([
    fetchJson(`/api/history/segments?segment=${encodeURIComponent(id)}&from=${end - 3600000}&to=${end}`).catch(() => ({ windows: [] })),
    fetchJson(`/api/alerts?segment=${encodeURIComponent(id)}`).catch(() => []),
  ]);
  const rows = hist.windows.map((w) => [w.window_end, w.segments[0]]);
  const th = seg.thresholds || {};
  const dens = rows.map(([t, r]) => [t, r.density]);
  // The nowcast: at the current rise, when the next tier's density level is reached.
  let nowcast = null;
  if (seg.minutes_to_next != null && seg.next_tier && th.density && seg.minutes_to_next <= 60) {
    nowcast = [[end, seg.density], [end + seg.minutes_to_next * 60000, th.density[seg.next_tier]]];
  }
  const flows = rows.filter(([, r]) => r.flow != null).map(([t, r]) => [t, r.flow]);
  const src = seg.sources || {};
  const sum = (k) => rows.reduce((a, [, r]) => a + (r[k] || 0), 0);
  el.innerHTML = `<button class="close" title="close">×</button>` +
    `<h2 data-segment="${id}">${seg.name} <span class="tier t-${seg.tier}">${seg.tier}</span></h2>` +
    `<div>people <b id="drill-people" data-people="${Math.round(seg.people || 0)}" data-window-end="${seg.window_end}">${Math.round(seg.people || 0).toLocaleString()}</b> · ` +
    `<b>${(seg.density || 0).toFixed(2)}</b> p/m² on ${Math.round(seg.area_m2).toLocaleString()} m² · flow ${seg.flow == null ? "—" : seg.flow.toFixed(0) + " p/m/min"} · ` +
    `${localTime(seg.window_end || end)}` +
    (nowcast ? ` · <span id="drill-nowcast" style="color:#ff922b">${seg.next_tier} in ~${fmtMin(seg.minutes_to_next)} at the current rise</span>` : "") + `</div>` +
    `<h3 class="muted">density, last hour (p/m²)</h3>${svgChart(dens, th.density, "p/m²", nowcast)}` +
    (flows.length ? `<h3 class="muted">flow, last hour (people per metre per minute)</h3>${svgChart(flows, th.flow, "p/m/min", null)}` : "") +
    `<h3 class="muted">where the number comes from (latest window; counters and gates: last hour)</h3><table id="drill-sources">` +
    `<tr><td>phones (LBS) 手机信令</td><td data-k="lbs">${Math.round(src.lbs_people || 0).toLocaleString()} people</td></tr>` +
    `<tr><td class="muted">of which the trend over the positions' age 趋势修正</td><td data-k="trend">${src.trend_people == null ? "—" : (src.trend_people >= 0 ? "+" : "−") + Math.abs(Math.round(src.trend_people)).toLocaleString() + " people"}</td></tr>` +
    `<tr><td>zone headcount 摄像头计数</td><td data-k="counted">${src.counted_people == null ? "—" : Math.round(src.counted_people).toLocaleString() + " people"}</td></tr>` +
    `<tr><td>people counters in / out 计数器</td><td>${src.counter_in || 0} / ${src.counter_out || 0} (hour: ${sum("inflow")} / ${sum("outflow")} incl. gates)</td></tr>` +
    `<tr><td>metro gates out of / into the station 闸机</td><td>${src.gate_in || 0} / ${src.gate_out || 0}</td></tr>` +
    `<tr><td>shown (the larger of phones and headcount)</td><td>${Math.round(seg.people || 0).toLocaleString()}</td></tr></table>` +
    `<h3 class="muted">alerts</h3><ul id="drill-alerts">${alerts.map((a) => `<li>${localTime(a.ts)} <span class="tier t-${a.from_tier}">${a.from_tier}</span> → <span class="tier t-${a.to_tier}">${a.to_tier}</span> ${a.reason}${a.ack ? ` <span class="ack-by">✓ ${a.ack.by}</span>` : ""}</li>`).join("") || "<li class='muted'>none</li>"}</ul>`;
  el.dataset.segment = id;
  el.hidden = false;
  el.querySelector(".close").onclick = () => { el.hidden = true; };
}

$("rows").addEventListener("click", (e) => { const tr = e.target.closest("tr[data-seg]"); if (tr) openDrill(tr.dataset.seg); });
$("alert-list").addEventListener("click", (e) => { const a = e.target.closest(".seg-link"); if (a) { e.preventDefault(); openDrill(a.dataset.seg); } });
$("map").addEventListener("click", (e) => {
  const c = $("map"), r = c.getBoundingClientRect(), ctx = c.getContext("2d");
  const px = (e.clientX - r.left) * c.width / r.width, py = (e.clientY - r.top) * c.height / r.height;
  const hit = state.paths.find((p) => ctx.isPointInPath(p.path, px, py));
  if (hit) openDrill(hit.id);
});

async function main() {
  state.scenario = await fetchJson("/api/scenario");
  state.bbox = state.scenario.bbox;
  for (const f of state.scenario.segments.features || []) state.names.set(f.properties.id, f.properties.name);
  $("tz").textContent = state.scenario.time_zone || "UTC";
  const segs = await fetchJson("/api/segments");
  renderSegments(segs.filter((s) => s.tier != null));
  const past = await fetchJson("/api/alerts?since=" + (Date.now() - 3600 * 1000)).catch(() => []);
  past.reverse().forEach(addAlert);
  draw();
  connect();
  pollHealth(); setInterval(pollHealth, 5000);
  addEventListener("resize", draw);
  // Links straight into a view: ?rewind=SECONDS (that far back, paused) and ?drill=SEGMENT.
  if (params.get("rewind")) await openRewind(Number(params.get("rewind")) * 1000);
  if (params.get("drill")) await openDrill(params.get("drill"));
}
main().catch((e) => { $("status").textContent = "error: " + e.message; });
