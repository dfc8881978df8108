// Appliance fleet monitor: one WebSocket, a full snapshot on connect, deltas after. No framework, no CDN.
// Everything from the server is rendered through textContent (never innerHTML): payloads are untrusted text.
"use strict";

(() => {
  const TOKEN_KEY = "appliance-monitor-token";
  const state = {
    machines: new Map(), jobs: new Map(), queueStats: null, otherQueues: {}, pools: null, series: null,
    redis: { ok: true, error: null }, events: [], queue: "", serverOffsetMs: 0, hideFinished: false,
  };
  let ws = null, everConnected = false, backoffMs = 500, dirty = false, tokenTried = false;

  // --- small DOM helpers ------------------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function bar(percent, kind, label) {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    const fill = h("span");
    fill.style.width = p + "%";  // CSSOM, allowed by the page's CSP (no inline style attributes)
    return h("div", { class: "bar " + (kind || ""), role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": Math.round(p), "aria-label": label || null }, fill);
  }
  function progress(percent, label) {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    return h("div", { class: "progress" }, bar(p, p >= 100 ? "ok" : "", label), h("span", { class: "pct", text: p.toFixed(0) + "%" }));
  }
  const badge = (text, kind, title) => h("span", { class: "badge badge-" + kind, text, title: title || null });
  const fmtS = (s) => {
    if (s === null || s === undefined || Number.isNaN(s)) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 90) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  };
  const fmtBytes = (b) => (b === null || b === undefined) ? "–" : (b / 2 ** 30).toFixed(b >= 10 * 2 ** 30 ? 0 : 1) + " GiB";
  const shortId = (id) => (id && id.length > 14 ? id.slice(0, 12) + "…" : id || "–");
  const nowServer = () => Date.now() + state.serverOffsetMs;
  const timeOf = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  // --- connection -------------------------------------------------------------------------------------------
  function wsUrl() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/ws" + (token ? "?token=" + encodeURIComponent(token) : "");
  }
  function setConn(kind, text) {
    const b = $("conn-badge");
    b.className = "badge badge-" + kind;
    b.textContent = text;
    b.dataset.state = kind === "ok" ? "live" : kind === "bad" ? "down" : "connecting";
  }
  function connect() {
    setConn("warn", everConnected ? "Reconnecting…" : "Connecting…");
    ws = new WebSocket(wsUrl());
    ws.onopen = () => {
      backoffMs = 500;
      // The server sends a snapshot on every connect; after a reconnect ask explicitly as well, as the original did.
      if (everConnected) ws.send(JSON.stringify({ type: "resync_request" }));
      everConnected = true;
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      handle(msg);
    };
    ws.onclose = (ev) => {
      if (ev.code === 4401) { showLogin(); return; }
      setConn("bad", "Monitor disconnected");
      setTimeout(connect, backoffMs * (0.5 + Math.random()));
      backoffMs = Math.min(backoffMs * 2, 5000);
    };
  }
  function showLogin() {
    setConn("bad", "Token required");
    $("login-why").textContent = tokenTried ? "That token was not accepted. Try again." : "This monitor requires a bearer token.";
    $("login").hidden = false;
    $("token-input").focus();
  }
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    tokenTried = true;
    $("login").hidden = true;
    connect();
  });
  $("hide-finished").addEventListener("change", (ev) => { state.hideFinished = ev.target.checked; schedule(); });

  // --- messages ---------------------------------------------------------------------------------------------
  function handle(msg) {
    switch (msg.type) {
      case "full_state_snapshot":
        state.queue = msg.queue;
        state.serverOffsetMs = msg.now_ms - Date.now();
        state.machines = new Map(msg.machines.map((m) => [m.id, m]));
        state.jobs = new Map(msg.jobs.map((j) => [j.id, j]));
        state.queueStats = msg.queue_stats; state.pools = msg.pools; state.series = msg.series;
        state.otherQueues = msg.other_queues || {};
        state.redis = msg.redis;
        state.events = [];
        for (const m of msg.machines) for (const e of m.events || []) state.events.push(e);
        state.events.sort((a, b) => (a.timestamp || 0) - (b.timestamp || 0));
        document.body.dataset.synced = "1";
        break;
      case "machine_update": state.machines.set(msg.machine.id, msg.machine); break;
      case "machine_event":
        state.events.push(msg.event);
        if (state.events.length > 100) state.events.shift();
        break;
      case "job_update": state.jobs.set(msg.job.id, msg.job); trimJobs(); break;
      case "queue_stats": state.queueStats = msg.stats; state.otherQueues = msg.other_queues || {}; break;
      case "pools": state.pools = msg.pools; break;
      case "redis": state.redis = { ok: msg.ok, error: msg.error }; break;
      case "tick":
        state.serverOffsetMs = msg.now_ms - Date.now();
        state.series = msg.series; state.redis = msg.redis;
        for (const t of msg.machines) {
          const m = state.machines.get(t.id);
          if (m) { m.online = t.online; m.offline_reason = t.offline_reason; m.age_s = t.age_s; }
        }
        break;
      case "auth_required": return;
      default: return;
    }
    schedule();
  }
  function trimJobs() {
    if (state.jobs.size <= 200) return;
    const sorted = [...state.jobs.values()].sort((a, b) => b.updated_ms - a.updated_ms);
    for (const j of sorted.slice(200)) state.jobs.delete(j.id);
  }
  function schedule() {
    if (dirty) return;
    dirty = true;
    requestAnimationFrame(() => { dirty = false; render(); });
  }

  // --- rendering --------------------------------------------------------------------------------------------
  function render() {
    const redisDown = !state.redis.ok;
    $("redis-banner").hidden = !redisDown;
    $("redis-error").textContent = redisDown && state.redis.error ? "(" + state.redis.error + ")" : "";
    if (ws && ws.readyState === WebSocket.OPEN) setConn(redisDown ? "bad" : "ok", redisDown ? "Redis unreachable" : "Live");
    $("queue-name").textContent = state.queue ? "queue " + state.queue : "";
    $("clock").textContent = timeOf(nowServer());
    renderSummary(); renderMachines(); renderPools(); renderShapes(); renderOtherQueues(); renderSeries(); renderEvents(); renderJobs();
  }

  function renderSummary() {
    const machines = [...state.machines.values()];
    $("s-machines").textContent = machines.filter((m) => m.online).length + " / " + machines.length;
    let busy = 0, total = 0;
    for (const m of machines) {
      if (!m.online) continue;
      for (const w of Object.values(m.workers || {})) { total++; if (w.current_job_id) busy++; }
    }
    $("s-workers").textContent = busy + " / " + total;
    const q = state.queueStats;
    $("s-waiting").textContent = q ? q.waiting : "–";
    $("s-active").textContent = q ? q.active : "–";
    $("s-unworkable").textContent = q ? q.unworkable : "–";
    $("s-unworkable").classList.toggle("alert", !!(q && q.unworkable));
    $("s-dead").textContent = q ? q.dead : "–";
    const oldest = q ? Math.max(0, ...q.shapes.filter((s) => s.waiting).map((s) => s.oldest_wait_s || 0)) : null;
    $("s-oldest").textContent = q && q.waiting ? fmtS(oldest) : "–";
    const s = state.series;
    $("s-rate").textContent = s ? String(s.completed.slice(-12).reduce((a, b) => a + b, 0)) : "–";
  }

  function machineStatus(m) {
    if (!m.online) return badge("offline", "bad", m.offline_reason || "");
    const phase = (m.machine && m.machine.phase) || "unknown";
    if (m.draining) return badge("drained", "warn");
    if (phase === "ready") return badge(m.healthy === false ? "degraded" : "online", m.healthy === false ? "warn" : "ok");
    if (phase === "degraded") return badge("degraded", "warn");
    if (phase === "starting") return badge("starting", "info");
    return badge(phase, "warn");
  }

  function renderMachines() {
    const box = $("machines");
    const list = [...state.machines.values()].sort((a, b) => (b.online - a.online) || a.id.localeCompare(b.id));
    $("machines-empty").hidden = list.length > 0;
    $("machines-note").textContent = list.length ? list.filter((m) => !m.online).length + " offline" : "";
    box.replaceChildren(...list.map(machineCard));
  }

  function machineCard(m) {
    const res = m.resources || {};
    const uptime = m.machine && m.machine.uptime_ms ? fmtS(m.machine.uptime_ms / 1000) : "–";
    const seen = m.age_s === null || m.age_s === undefined ? "never" : m.age_s < 1 ? "just now" : fmtS(m.age_s) + " ago";
    const card = h("article", { class: "card" + (m.online ? "" : " offline"), "data-machine": m.id, "data-online": m.online ? "1" : "0",
      "aria-label": "Machine " + m.id },
      h("div", { class: "card-head" },
        h("div", { class: "card-title" },
          h("h3", { text: m.id, title: m.id }),
          h("div", { class: "card-tags" },
            m.type ? h("span", { class: "tag", text: m.type }) : null,
            h("span", { class: "tag", text: m.pool ? "pool " + m.pool : "any pool" }),
            m.supervision ? h("span", { class: "tag", text: m.supervision }) : null)),
        machineStatus(m)),
      h("div", { class: "card-meta" },
        h("span", { class: "last-seen", text: "last seen " + seen }),
        h("span", { text: "up " + uptime }),
        res.cpu_cores ? h("span", { text: res.cpu_cores + " CPU · " + fmtBytes(res.ram_total_bytes) + " RAM" }) : null,
        !m.online && m.offline_reason ? h("span", { class: "offline-reason", text: m.offline_reason }) : null));

    const gpus = m.gpus || [];
    if (gpus.length) {
      card.append(h("div", { class: "card-section" }, h("h4", { text: "GPUs" }), h("div", { class: "rows" },
        gpus.map((g) => {
          const util = g.utilization_ratio === null || g.utilization_ratio === undefined ? null : g.utilization_ratio * 100;
          const mem = g.memory_total_bytes ? (g.memory_used_bytes / g.memory_total_bytes) * 100 : null;
          const temp = g.temperature_celsius;
          return h("div", { class: "gpu" },
            h("span", { class: "name", text: g.index + " · " + (g.name || "GPU"), title: g.uuid || "" }),
            h("div", { class: "meter" }, "util " + (util === null ? "–" : util.toFixed(0) + "%"),
              bar(util, util > 90 ? "warm" : "ok", "GPU " + g.index + " utilisation")),
            h("div", { class: "meter" }, "VRAM " + fmtBytes(g.memory_used_bytes) + " / " + fmtBytes(g.memory_total_bytes),
              bar(mem, mem > 92 ? "hot" : "", "GPU " + g.index + " memory")),
            h("span", { class: temp >= 85 ? "badge badge-bad plain" : "muted", text: temp === null || temp === undefined ? "–" : Math.round(temp) + " °C" }));
        }))));
    }

    const services = Object.entries(m.services || {});
    if (services.length) {
      card.append(h("div", { class: "card-section" }, h("h4", { text: "Services" }), h("div", { class: "rows" },
        services.map(([name, s]) => {
          const st = s.active_state || "unknown";
          const kind = st === "active" || st === "unmanaged" ? (s.healthy === false ? "warn" : "ok") : st === "failed" ? "bad" : "warn";
          const restarts = Number(s.restarts || 0);
          return h("div", { class: "row", "data-service": name },
            h("span", { class: "name", text: name, title: s.status_text || s.unit || "" }),
            h("span", { class: "right" },
              restarts ? h("span", { class: restarts >= 3 ? "badge badge-bad plain" : "badge badge-warn plain",
                text: restarts + " restart" + (restarts === 1 ? "" : "s") }) : h("span", { class: "muted small", text: "0 restarts" }),
              badge(st, kind)));
        }))));
    }

    const workers = Object.entries(m.workers || {});
    if (workers.length) {
      card.append(h("div", { class: "card-section" }, h("h4", { text: "Workers" }), h("div", { class: "rows" },
        workers.map(([wid, w]) => {
          const jobId = m.online ? w.current_job_id : null;  // an offline machine's last report is stale
          const job = jobId ? state.jobs.get(jobId) : null;
          let pct = job ? job.percent : null;
          if (pct === null && Array.isArray(w.jobs) && w.jobs.length) pct = w.jobs[0].progress;
          if (pct === null && typeof w.progress === "number") pct = w.progress;
          const st = w.state || w.status || "unknown";
          const alive = w.alive !== false && m.online;
          return h("div", { class: "row worker", "data-worker": wid },
            h("div", { class: "name" },
              h("div", { text: w.slot || wid, title: wid }),
              h("div", { class: "small muted", text: jobId ? "job " + shortId(jobId) : (alive ? st : "not connected"), title: jobId || "" })),
            jobId ? progress(pct, "Progress of job " + jobId) : h("span", { class: "right" }, badge(alive ? st : "offline", alive ? "idle" : "bad")));
        }))));
    }
    const evs = m.events || [];
    const last = evs[evs.length - 1];
    if (last) card.append(h("div", { class: "small muted", text: "last event: " + last.event_type + (last.step_name ? " " + last.step_name : "") + " at " + timeOf(last.timestamp) }));
    return card;
  }

  function renderPools() {
    const body = $("pools-table").tBodies[0];
    const pools = state.pools ? state.pools.pools : [];
    body.replaceChildren(...pools.map((p) => h("tr", { "data-pool": p.pool },
      h("td", {}, h("strong", { text: p.pool }), p.configured ? null : h("span", { class: "muted small", text: " (unconfigured)" })),
      h("td", { class: "num", text: p.waiting }), h("td", { class: "num", text: p.active }),
      h("td", { class: "num" + (p.unworkable ? " error" : ""), text: p.unworkable }),
      h("td", { class: "num", text: p.waiting ? fmtS(p.oldest_wait_s) : "–" }),
      h("td", { class: "num", text: fmtS(p.duration_p50_s) }),
      h("td", { class: "num", text: p.success_ratio === null ? "–" : Math.round(p.success_ratio * 100) + "%" }),
      h("td", { class: "num", text: p.machines }),
      h("td", { class: "num", title: "decided by: " + p.reason }, h("strong", { text: p.desired_machines }),
        p.desired_machines !== p.machines ? h("span", { class: "muted small", text: p.desired_machines > p.machines ? " ↑" : " ↓" }) : null))));
  }

  function renderShapes() {
    const body = $("shapes-table").tBodies[0];
    const shapes = state.queueStats ? state.queueStats.shapes.filter((s) => s.waiting) : [];
    $("shapes-empty").hidden = shapes.length > 0;
    body.replaceChildren(...shapes.map((s) => {
      const r = s.requirements || {};
      const extra = Object.entries(r).filter(([k]) => k !== "service" && k !== "pool").map(([k, v]) => k + "=" + (Array.isArray(v) ? v.join(",") : v)).join(" ");
      return h("tr", {},
        h("td", { text: r.service || "?" }), h("td", { text: r.pool || "–" }), h("td", { class: "mono small", text: extra || "–" }),
        h("td", { class: "num", text: s.waiting }), h("td", { class: "num", text: fmtS(s.oldest_wait_s) }),
        h("td", {}, s.live_workers ? badge("served", "ok") : badge("unworkable", "bad", "no live worker can run these jobs")));
    }));
  }

  function renderOtherQueues() {
    const names = Object.keys(state.otherQueues || {}).sort();
    $("other-queues").hidden = names.length === 0;
    $("queues-table").tBodies[0].replaceChildren(...names.map((name) => {
      const q = state.otherQueues[name];
      const n = (v) => (q ? v : "–");
      return h("tr", { "data-queue": name },
        h("th", { scope: "row", text: name }), h("td", { class: "num", text: n(q && q.waiting) }),
        h("td", { class: "num", text: n(q && q.active) }), h("td", { class: "num", text: n(q && q.delayed) }),
        h("td", { class: "num", text: n(q && q.dead) }),
        h("td", { class: "num" + (q && q.unworkable ? " alert" : ""), text: n(q && q.unworkable) }),
        h("td", { class: "num", text: n(q && (q.totals.completed || 0)) }));
    }));
  }

  function spark(id, values, fmt) {
    const svg = $(id);
    const vals = values.map((v) => (v === null || v === undefined ? null : Number(v)));
    const max = Math.max(1e-9, ...vals.filter((v) => v !== null));
    const n = vals.length, W = 300, H = 48;
    const pts = [];
    vals.forEach((v, i) => { if (v !== null) pts.push([(i / Math.max(1, n - 1)) * W, H - 3 - (v / max) * (H - 8)]); });
    if (pts.length === 1) pts.unshift([Math.max(0, pts[0][0] - 4), pts[0][1]]);  // one sample: a short tick
    const ns = "http://www.w3.org/2000/svg";
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.map((p) => p.join(",")).join(" "));
    const area = document.createElementNS(ns, "polygon");
    if (pts.length) area.setAttribute("points", [[pts[0][0], H], ...pts, [pts[pts.length - 1][0], H]].map((p) => p.join(",")).join(" "));
    svg.replaceChildren(area, line);
    const lastVal = [...vals].reverse().find((v) => v !== null);
    $(id + "-v").textContent = lastVal === undefined ? "–" : fmt(lastVal);
  }

  function renderSeries() {
    const s = state.series;
    if (!s) return;
    spark("spark-completed", s.completed, (v) => String(v));
    spark("spark-failed", s.failed, (v) => String(v));
    spark("spark-latency", s.latency_p50_s, fmtS);
  }

  function renderEvents() {
    const list = state.events.slice(-30).reverse();
    $("events").replaceChildren(...(list.length ? list.map((e) => h("li", {},
      h("time", { text: e.timestamp ? timeOf(e.timestamp) : "" }),
      h("span", {}, h("strong", { text: e.machine_id + " " }), e.event_type + (e.step_name ? " · " + e.step_name : "") +
        (e.service ? " · " + e.service : "") + (e.reason ? " · " + e.reason : "")))) : [h("li", { class: "muted", text: "No events yet." })]));
  }

  const STATUS_KIND = { pending: "idle", blocked: "idle", claimed: "info", running: "info", completed: "ok", failed: "bad", dead: "bad", cancelled: "warn" };
  function renderJobs() {
    let jobs = [...state.jobs.values()].sort((a, b) => b.updated_ms - a.updated_ms);
    if (state.hideFinished) jobs = jobs.filter((j) => !["completed", "failed", "dead", "cancelled"].includes(j.status));
    jobs = jobs.slice(0, 100);
    $("jobs-empty").hidden = jobs.length > 0;
    $("jobs-table").tBodies[0].replaceChildren(...jobs.map((j) => {
      const detail = j.error || j.message || "";
      const run = j.duration_ms !== null && j.duration_ms !== undefined ? j.duration_ms / 1000
        : (j.claimed_ms && !j.finished_ms && ["claimed", "running"].includes(j.status) ? (nowServer() - j.claimed_ms) / 1000 : null);
      return h("tr", { "data-job": j.id, "data-status": j.status },
        h("td", { class: "mono", title: j.id, text: shortId(j.id) }),
        h("td", { text: j.service || "–" }), h("td", { text: j.pool || "–" }),
        h("td", {}, badge(j.status, STATUS_KIND[j.status] || "idle")),
        h("td", {}, progress(j.percent, "Progress of job " + j.id)),
        h("td", { class: "mono small", text: j.worker || "–" }),
        h("td", { class: "num", text: j.attempt || "–" }),
        h("td", { class: "num", text: j.wait_ms === null || j.wait_ms === undefined ? "–" : fmtS(j.wait_ms / 1000) }),
        h("td", { class: "num", text: fmtS(run) }),
        h("td", { class: "detail" + (j.error ? " error" : ""), title: detail, text: detail }));
    }));
  }

  // The page may be opened with ?token=...: keep it for this tab, then take it out of the address bar.
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  setInterval(() => { $("clock").textContent = timeOf(nowServer()); }, 1000);
  connect();
})();
