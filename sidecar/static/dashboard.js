/* DG Do dispatch dashboard: plain JS, no build step, no library.
 *
 * One WebSocket to /ws/admin (topics system_stats, fleet, active_orders, assignments, drivers,
 * log). The token comes from ?token= (then removed from the address bar) or is pasted once.
 * Before each connect the page asks GET /admin/whoami, because a refused upgrade (401/403)
 * reaches a script only as close code 1006, the same as "server down": whoami tells them apart.
 * A token that expires while the page is open ends the connection (close 4401): the page then asks
 * for a new one, saying how to mint it, rather than reconnect with a token that no longer opens one.
 * The map is a canvas in Web Mercator over a coordinate grid (works offline); a tile layer URL
 * is an optional setting. Nothing here is trusted as HTML: all text goes in through textContent.
 */
(() => {
  "use strict";

  const CITY = { lat: 38.56, lon: 68.78, name: "Dushanbe centre", fitMetres: 11500 };  // the view a reset shows
  const TOPICS = ["system_stats", "fleet", "active_orders", "assignments", "drivers", "log"];
  const TERMINAL = new Set(["completed", "canceled", "no_driver"]);
  const LIVE_STATES = ["searching", "accepted", "arriving", "arrived", "started"];
  const COLORS = { available: "#1f9d55", offered: "#e09b00", on_trip: "#2563eb", offline: "#9ca3af" };
  const PICKUP = "#c026d3", DROPOFF = "#db2777";
  const TOKEN_KEY = "dgdo.admin.token", TILE_KEY = "dgdo.admin.tileUrl";
  const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 10000;
  // system_stats comes about once a second: a connection silent this long is dead even if it
  // never closes (a wedged sidecar, a half-open TCP connection after a network drop or a sleep).
  const SILENT_MS = 10000;
  const WHOAMI_TIMEOUT_MS = 10000;
  const SPARK_SAMPLES = 600;        // 10 minutes of system_stats at 1/s
  const LOG_KEEP = 2000, LOG_SHOW = 300, TIMELINE_KEEP = 500;
  const ANIMATE_MAX_DRIVERS = 3000; // above this, markers jump instead of gliding (CPU)
  const GLIDE_MS = 500;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---- state -----------------------------------------------------------------------------

  const S = {
    token: null,
    ws: null,
    lastSeq: null,
    backoff: BACKOFF_MIN_MS,
    retryTimer: null,
    heardAt: 0,                  // performance.now() of the socket's last message (0: none yet)
    skewMs: 0,                   // server ts - local clock, so ages are measured on the server's clock
    drivers: new Map(),          // id -> {lat, lon, fromLat, fromLon, t0, state, order}
    orders: new Map(),           // id -> order map from `fleet`
    timelines: new Map(),        // id -> [{ts, text}]
    log: [],
    stats: null,
    spark: { match: [], push: [] },
    selected: null,              // {kind: "driver"|"order", id}
    cancels: new Map(),          // request id -> order id: this page's order_cancel awaiting its ack or error
    results: new Map(),          // order id -> what the operator's cancel came to (shown under its timeline)
    tileUrl: localStorage.getItem(TILE_KEY) || "",
  };

  const serverNow = () => Date.now() + S.skewMs;

  // ---- token ------------------------------------------------------------------------------

  function takeTokenFromUrl() {
    const url = new URL(location.href);
    const t = url.searchParams.get("token");
    if (t === null) return null;
    url.searchParams.delete("token");  // out of the address bar, history and screenshots
    history.replaceState(null, "", url.pathname + (url.search || "") + url.hash);
    return t.trim();
  }

  function storedToken() {
    return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY);
  }

  function keepToken(t, remember) {
    sessionStorage.setItem(TOKEN_KEY, t);
    if (remember) localStorage.setItem(TOKEN_KEY, t);
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    S.token = null;
  }

  function askForToken(message, status) {
    setConn("auth", status || "no token");
    const m = $("auth-message");
    m.textContent = "";
    // `code` spans: a command to copy (text only, never markup: see the file's header)
    (Array.isArray(message) ? message : [message || ""]).forEach((part) =>
      m.append(typeof part === "string" ? part : el("code", null, part.code)));
    $("auth").hidden = false;
    $("auth-token").focus();
  }

  // The token's `sub`, read (not verified: only to word the hint) from its payload.
  function subOf(token) {
    try {
      const sub = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).sub;
      return typeof sub === "string" && /^[A-Za-z0-9_.:-]{1,36}$/.test(sub) ? sub : null;
    } catch (e) {
      return null;
    }
  }

  // The token ran out (refused as expired, or the connection it opened closed 4401 at its expiry):
  // only a new one helps, so say how to get one.
  function askForNewToken(sub) {
    forgetToken();
    askForToken(["Your admin link expired. Get a new one with ",
      { code: `dgdo token --role admin --sub ${sub || "ops"}` },
      " and paste the token here (make run prints a fresh link each time it starts)."], "token expired");
  }

  // ---- connection ---------------------------------------------------------------------------

  function setConn(state, text) {
    const p = $("conn-status");
    p.dataset.state = state;
    p.textContent = text;
  }

  function scheduleReconnect(why) {
    clearTimeout(S.retryTimer);
    const wait = Math.round(S.backoff * (0.75 + Math.random() * 0.5));
    S.backoff = Math.min(BACKOFF_MAX_MS, S.backoff * 2);
    setConn("reconnecting", `${why}: retrying in ${(wait / 1000).toFixed(1)} s`);
    S.retryTimer = setTimeout(connect, wait);
  }

  // whoami answers what the upgrade would: 200, 401 (missing/bad/expired) or 403 (not an admin token).
  // Asked without a token too: a server run with auth off (--insecure-no-auth) answers 200.
  async function checkToken(token) {
    let r;
    try {
      r = await fetch("/admin/whoami", { headers: token ? { Authorization: `Bearer ${token}` } : {}, cache: "no-store",
        signal: AbortSignal.timeout(WHOAMI_TIMEOUT_MS) });  // a server that accepts and never answers
    } catch (e) {
      return { status: 0 };
    }
    let body = {};
    try { body = await r.json(); } catch (e) { /* not JSON: a proxy's page */ }
    return { status: r.status, body };
  }

  async function connect() {
    clearTimeout(S.retryTimer);
    setConn("connecting", "checking token…");
    const who = await checkToken(S.token);
    if (who.status === 401 || who.status === 403) {
      const why = (who.body && who.body.error) || "";
      if (who.status === 401 && /expired/.test(why)) return askForNewToken(S.token && subOf(S.token));
      forgetToken();
      const text = who.status === 403 ? `This token is not an admin token (${why}).`
        : /no token/.test(why) ? "No admin token given."
          : `The admin token was refused (${why || "invalid"}).`;
      return askForToken(text);
    }
    if (who.status !== 200) return scheduleReconnect(who.status === 0 ? "sidecar unreachable" : `HTTP ${who.status}`);
    $("who").textContent = `as ${who.body.sub}` + (who.body.exp ? `, token valid until ${new Date(who.body.exp * 1000).toLocaleString()}` : "");

    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const query = [];
    if (S.token) query.push(`token=${encodeURIComponent(S.token)}`);
    if (S.lastSeq !== null) query.push(`last_seq=${S.lastSeq}`);
    const url = `${proto}//${location.host}/ws/admin` + (query.length ? `?${query.join("&")}` : "");
    const ws = new WebSocket(url, "dgdo.v1.json");
    S.ws = ws;
    setConn("connecting", "connecting…");
    S.heardAt = 0;  // from the welcome on (before it, an engine not yet attached may keep us waiting)
    ws.onmessage = (ev) => {
      if (S.ws === ws) S.heardAt = performance.now();
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      onMessage(m);
    };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      S.ws = null;
      if (ev.code === 4001) {
        setConn("replaced", "opened elsewhere");
        addLog("warning", Date.now(), "This dashboard was opened in another tab or browser with the same token; " +
          "this one stopped. Reload to take over.");
        return;  // protocol: do not reconnect on 4001 (another instance took over)
      }
      if (ev.code === 4401) {  // the token expired while connected (or just before the upgrade)
        addLog("warning", Date.now(), `The sidecar closed the connection: ${ev.reason || "unauthorized"}.`);
        if (/expired/.test(ev.reason)) return askForNewToken(S.token && subOf(S.token));
        forgetToken();
        return askForToken(`The admin token was refused (${ev.reason || "unauthorized"}).`);
      }
      scheduleReconnect(ev.code === 1001 ? "sidecar restarting" : "connection lost");
    };
  }

  function onMessage(m) {
    if (typeof m.ts === "number") S.skewMs = m.ts - Date.now();
    switch (m.type) {
      case "welcome":
        S.lastSeq = m.seq;
        S.backoff = BACKOFF_MIN_MS;
        setConn("live", "live");
        S.ws.send(JSON.stringify({ type: "subscribe", topics: TOPICS, id: "dashboard" }));
        break;
      case "system_stats": onStats(m); break;
      case "fleet": onFleet(m); break;
      case "active_orders":
        noteOrderStep(m.order_id, m.ts, m.status, m.driver_id, m.reason);
        addLog("order", m.ts, `order ${m.order_id} ${m.status}` + (m.driver_id ? ` · driver ${m.driver_id}` : "") +
          ` · passenger ${m.passenger_id}` + (m.reason ? ` (${m.reason})` : ""));
        break;
      case "assignment":
        addLog("assignment", m.ts, `order ${m.order_id} assigned to ${m.driver_id} (passenger ${m.passenger_id})`);
        break;
      case "driver_status":
        addLog("driver", m.ts, `driver ${m.driver_id} ${m.status}`);
        break;
      case "log":
        addLog(m.level, m.ts, m.message);
        break;
      case "ack":
        if (S.cancels.has(m.id)) answered(m.id, "canceled by you");
        break;
      case "error":
        addLog("error", m.ts, `server: ${m.code}: ${m.message}`);
        if (S.cancels.has(m.id)) answered(m.id, `not canceled: ${m.message}`);
        break;
      default: break;
    }
  }

  // ---- the model ------------------------------------------------------------------------------

  function onFleet(m) {
    const now = performance.now();
    const glide = m.full ? false : S.drivers.size <= ANIMATE_MAX_DRIVERS;
    if (m.full) {
      S.drivers.clear();
      S.orders.clear();
    }
    for (const [id, lat, lon, state, order] of m.drivers) {
      const d = S.drivers.get(id);
      if (d && glide) {
        const [cl, cn] = driverPos(d, now);
        d.fromLat = cl; d.fromLon = cn; d.t0 = now;
      } else if (d) {
        d.fromLat = lat; d.fromLon = lon; d.t0 = 0;
      }
      const prev = d ? d.state : null;
      const nd = d || { fromLat: lat, fromLon: lon, t0: 0 };
      nd.lat = lat; nd.lon = lon; nd.state = state; nd.order = order; nd.seen = m.ts;
      if (!d) S.drivers.set(id, nd);
      if (prev && prev !== state && state === "offered" && order) noteOrderStep(order, m.ts, "offered", id);
    }
    for (const id of m.gone) S.drivers.delete(id);
    for (const o of m.orders) {
      const shown = o.status === "searching" && o.offered_to ? "offered" : o.status;  // as the table shows it
      noteOrderStep(o.order_id, o.changed_ts, shown, o.driver_id || o.offered_to, null, o);
      if (TERMINAL.has(o.status)) S.orders.delete(o.order_id);
      else S.orders.set(o.order_id, o);
    }
    if (S.selected && S.selected.kind === "order") renderTimeline();  // (live or ended: what it offers)
    renderOrders();
    requestDraw();
  }

  function noteOrderStep(id, ts, status, driver, reason, order) {
    let t = S.timelines.get(id);
    if (!t) {
      t = [];
      S.timelines.set(id, t);
      if (S.timelines.size > TIMELINE_KEEP) S.timelines.delete(S.timelines.keys().next().value);
    }
    // The same step comes twice, from the `active_orders` topic (with its reason) and from `fleet`
    // (without): one line, with the reason whichever came first.
    const key = status + (driver ? ` · ${driver}` : "");
    const last = t[t.length - 1];
    if (!last || last.key !== key) t.push({ ts, key, text: key + (reason ? ` (${reason})` : "") });
    else if (reason && last.text === key) last.text = `${key} (${reason})`;
    if (order) S.timelines.get(id).order = order;
    if (S.selected && S.selected.kind === "order" && S.selected.id === id) renderTimeline();
  }

  // ---- numbers --------------------------------------------------------------------------------

  const fmt = (v) => (v === undefined || v === null ? "–" : (Math.round(v * 10) / 10).toLocaleString());

  function onStats(m) {
    S.stats = m;
    $("stat-drivers-online").textContent = fmt(m.drivers_online);
    $("stat-drivers-available").textContent = fmt(m.drivers_available);
    $("stat-drivers-busy").textContent = fmt(Math.max(0, m.drivers_online - m.drivers_available));
    $("stat-active-orders").textContent = `${m.active_orders} active in the engine`;
    const chips = $("live-orders-by-state");
    chips.replaceChildren(...LIVE_STATES.map((s) => {
      const c = el("span", "chip", s);
      c.append(el("b", null, String((m.live_orders || {})[s] || 0)));
      return c;
    }));
    const r = m.order_rates || {};
    for (const k of ["requested", "matched", "completed", "no_driver"]) $(`rate-${k}`).textContent = fmt(r[k]);
    const ml = m.matching_latency_us || {}, pl = m.push_latency_us || {};
    $("lat-match").textContent = `${fmt(ml.p50)} / ${fmt(ml.p99)}`;
    $("lat-push").textContent = `${fmt(pl.p50)} / ${fmt(pl.p99)}`;
    pushSample(S.spark.match, ml);
    pushSample(S.spark.push, pl);
    drawSpark($("spark-match"), S.spark.match);
    drawSpark($("spark-push"), S.spark.push);
    const byRole = m.connections_by_role || {};
    $("conn-driver").textContent = fmt(byRole.driver);
    $("conn-passenger").textContent = fmt(byRole.passenger);
    $("conn-admin").textContent = fmt(byRole.admin);
    $("conn-paused").textContent = fmt(m.paused_connections);
    const rd = m.ring_depths || {};
    $("ring-in").textContent = fmt(rd.in_bytes);
    $("ring-backlog").textContent = fmt(rd.in_backlog_bytes);
    $("ring-out").textContent = fmt(rd.out_bytes);
    const eng = $("engine-status");
    // A hold is known from the engine's own word before its heartbeat is missed (engine_timeout_s):
    // amber at once, not green with a hold's text.
    const hold = m.engine_hold;  // the engine said why: its journal cannot be written
    const state = !m.engine_attached ? "down" : m.engine_available && !hold ? "up" : "silent";
    eng.dataset.state = state;
    eng.textContent = { up: "engine up", down: "engine detached", silent: "engine not responding" }[state];
    if (hold && state !== "down") eng.textContent = `journal not writable (${hold.error}) for ${hold.for_s} s`;
  }

  function pushSample(arr, p) {
    arr.push([p.p50 || 0, p.p99 || 0]);
    if (arr.length > SPARK_SAMPLES) arr.shift();
  }

  function drawSpark(canvas, samples) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 160, h = canvas.clientHeight || 32;
    if (canvas.width !== w * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    if (samples.length < 2) return;
    const max = Math.max(1, ...samples.map((s) => s[1]));
    const span = Math.max(120, samples.length) - 1;  // at least two minutes wide, at most ten
    const x = (i) => w - ((samples.length - 1 - i) / span) * w;
    const y = (v) => h - 2 - (v / max) * (h - 4);
    for (const [idx, color] of [[1, "#f59e0b"], [0, "#2563eb"]]) {
      g.beginPath();
      samples.forEach((s, i) => (i ? g.lineTo(x(i), y(s[idx])) : g.moveTo(x(i), y(s[idx]))));
      g.strokeStyle = color;
      g.lineWidth = 1.2;
      g.stroke();
    }
    g.fillStyle = "#6b7280";
    g.font = "9px sans-serif";
    g.fillText(`max ${Math.round(max)}`, 2, 9);
  }

  // ---- orders table and timeline --------------------------------------------------------------

  const age = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  };

  function renderOrders() {
    const body = $("orders").tBodies[0];
    const now = serverNow();
    const rows = [...S.orders.values()].sort((a, b) => b.created_ts - a.created_ts).slice(0, 500);
    const existing = new Map([...body.rows].map((r) => [Number(r.dataset.orderId), r]));
    const keep = new Set();
    let before = body.firstChild;
    for (const o of rows) {
      keep.add(o.order_id);
      let tr = existing.get(o.order_id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.orderId = o.order_id;
        for (let i = 0; i < 6; i++) tr.append(el("td"));
        // On the press, not the click: a new order inserted above between press and release (the
        // demo's, each second) moves this row from under the pointer, and a click whose press and
        // release land on two rows goes to neither: the operator's click would be lost.
        tr.addEventListener("pointerdown", () => select({ kind: "order", id: o.order_id }));
      }
      const c = tr.cells;
      c[0].textContent = o.order_id;
      c[1].replaceChildren(el("span", `status ${o.status}`, o.offered_to && o.status === "searching" ? "offered" : o.status));
      c[2].textContent = age(now - o.created_ts);
      c[3].textContent = o.passenger_id || "";
      c[4].textContent = o.driver_id || (o.offered_to ? `(${o.offered_to})` : "");
      c[5].textContent = o.eta_s !== undefined ? age(o.eta_s * 1000) : "";
      tr.dataset.status = o.status;
      tr.classList.toggle("selected", !!(S.selected && S.selected.kind === "order" && S.selected.id === o.order_id));
      if (tr !== before) body.insertBefore(tr, before);
      before = tr.nextSibling;
    }
    for (const [id, tr] of existing) if (!keep.has(id)) tr.remove();
    $("orders-empty").hidden = rows.length > 0;
  }

  function renderTimeline() {
    const box = $("timeline");
    if (!S.selected || S.selected.kind !== "order") { box.hidden = true; return; }
    const id = S.selected.id;
    const t = S.timelines.get(id) || [];
    const o = S.orders.get(id) || t.order;
    box.hidden = false;
    $("timeline-id").textContent = id;
    $("timeline-summary").textContent = o
      ? `passenger ${o.passenger_id || "?"}` + (o.pickup ? ` · pickup ${o.pickup.lat.toFixed(4)}, ${o.pickup.lon.toFixed(4)}` : "") +
        (o.dropoff ? ` · dropoff ${o.dropoff.lat.toFixed(4)}, ${o.dropoff.lon.toFixed(4)}` : "") +
        (S.orders.has(id) ? "" : " · ended")
      : "seen by this page only through its updates";
    $("timeline-cancel").hidden = !S.orders.has(id);  // live orders only
    $("timeline-cancel").disabled = S.results.get(id) === "canceling…";
    $("timeline-result").textContent = S.results.get(id) || "";
    $("timeline-steps").replaceChildren(...t.map((s) => {
      const li = el("li");
      li.append(el("time", null, new Date(s.ts).toLocaleTimeString()), document.createTextNode(" " + s.text));
      return li;
    }));
  }

  // ---- the operator's cancel ------------------------------------------------------------------

  // Ends a live order (docs/protocol.md, order_cancel by an admin): a way out for an order whose
  // driver is gone for good, the started trip included. Asked first: nothing undoes it.
  function cancelSelected() {
    if (!S.selected || S.selected.kind !== "order" || !S.ws || S.ws.readyState !== WebSocket.OPEN) return;
    const orderId = S.selected.id;
    const reason = window.prompt(`Cancel order ${orderId}? Its passenger and driver are told an operator ` +
      "canceled it; this cannot be undone. Reason (optional, shown in the journal):", "");
    if (reason === null) return;
    const requestId = `cancel-${orderId}-${Date.now()}`;
    S.cancels.set(requestId, orderId);
    S.results.set(orderId, "canceling…");
    S.ws.send(JSON.stringify({ type: "order_cancel", order_id: orderId, reason: reason.trim(), id: requestId }));
    renderTimeline();
  }

  function answered(requestId, text) {
    const orderId = S.cancels.get(requestId);
    S.cancels.delete(requestId);
    S.results.set(orderId, text);
    if (S.results.size > TIMELINE_KEEP) S.results.delete(S.results.keys().next().value);
    addLog("order", serverNow(), `order ${orderId}: ${text}`);
    if (S.selected && S.selected.kind === "order" && S.selected.id === orderId) renderTimeline();
  }

  function select(sel) {
    S.selected = sel;
    renderOrders();
    renderTimeline();
    requestDraw();
  }

  // ---- event log ----------------------------------------------------------------------------

  function addLog(kind, ts, text) {
    S.log.push({ kind, ts, text });
    if (S.log.length > LOG_KEEP) S.log.splice(0, S.log.length - LOG_KEEP);
    scheduleLogRender();
  }

  let logPending = false;
  function scheduleLogRender() {
    if (logPending) return;
    logPending = true;
    setTimeout(() => { logPending = false; renderLog(); }, 200);  // a burst of events renders once
  }

  function renderLog() {
    const kinds = new Set([...document.querySelectorAll("#log-filters input[type=checkbox]")]
      .filter((c) => c.checked).map((c) => c.dataset.kind));
    const q = $("log-search").value.trim().toLowerCase();
    const out = [];
    for (let i = S.log.length - 1; i >= 0 && out.length < LOG_SHOW; i--) {
      const e = S.log[i];
      if (!kinds.has(e.kind)) continue;
      if (q && !e.text.toLowerCase().includes(q)) continue;
      const li = el("li", e.kind);
      li.dataset.kind = e.kind;
      li.append(el("time", null, new Date(e.ts).toLocaleTimeString()), document.createTextNode(e.text));
      out.push(li);
    }
    $("log").replaceChildren(...out);
  }

  // ---- the map --------------------------------------------------------------------------------

  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  const TILE = 256;
  const view = { lat: CITY.lat, lon: CITY.lon, zoom: 0, fitted: false };  // zoom: Web Mercator level (fractional)
  let drawQueued = false;
  const tiles = new Map();

  const worldX = (lon, z) => ((lon + 180) / 360) * TILE * 2 ** z;
  const worldY = (lat, z) => {
    const s = Math.sin((lat * Math.PI) / 180);
    return (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * TILE * 2 ** z;
  };
  const lonOf = (x, z) => (x / (TILE * 2 ** z)) * 360 - 180;
  const latOf = (y, z) => {
    const n = Math.PI - (2 * Math.PI * y) / (TILE * 2 ** z);
    return (180 / Math.PI) * Math.atan(0.5 * (Math.exp(n) - Math.exp(-n)));
  };

  function size() {
    return { w: canvas.clientWidth, h: canvas.clientHeight };
  }

  function project(lat, lon) {
    const { w, h } = size();
    return [worldX(lon, view.zoom) - worldX(view.lon, view.zoom) + w / 2,
      worldY(lat, view.zoom) - worldY(view.lat, view.zoom) + h / 2];
  }

  function unproject(px, py) {
    const { w, h } = size();
    return [latOf(worldY(view.lat, view.zoom) + py - h / 2, view.zoom),
      lonOf(worldX(view.lon, view.zoom) + px - w / 2, view.zoom)];
  }

  // The whole service area in view: CITY.fitMetres across the canvas's shorter side.
  function fitCity() {
    const { w, h } = size();
    const mpp = CITY.fitMetres / Math.max(100, Math.min(w, h));
    view.lat = CITY.lat; view.lon = CITY.lon;
    view.zoom = Math.log2((156543.03392 * Math.cos((CITY.lat * Math.PI) / 180)) / mpp);
    view.fitted = true;
  }

  const metresPerPixel = () => (156543.03392 * Math.cos((view.lat * Math.PI) / 180)) / 2 ** view.zoom;

  function driverPos(d, now) {
    if (!d.t0) return [d.lat, d.lon];
    const f = Math.min(1, (now - d.t0) / GLIDE_MS);
    return [d.fromLat + (d.lat - d.fromLat) * f, d.fromLon + (d.lon - d.fromLon) * f];
  }

  function requestDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(draw);
  }

  function niceStep(metres) {
    const p = 10 ** Math.floor(Math.log10(metres));
    for (const m of [1, 2, 5, 10]) if (m * p >= metres) return m * p;
    return 10 * p;
  }

  function drawTiles(w, h) {
    if (!S.tileUrl) return;
    const z = Math.max(0, Math.min(19, Math.round(view.zoom)));
    const scale = 2 ** (view.zoom - z);
    const cx = worldX(view.lon, z), cy = worldY(view.lat, z);
    const x0 = Math.floor((cx - w / 2 / scale) / TILE), x1 = Math.floor((cx + w / 2 / scale) / TILE);
    const y0 = Math.floor((cy - h / 2 / scale) / TILE), y1 = Math.floor((cy + h / 2 / scale) / TILE);
    for (let x = x0; x <= x1; x++) {
      for (let y = y0; y <= y1; y++) {
        const url = S.tileUrl.replace("{z}", z).replace("{x}", x).replace("{y}", y);
        let img = tiles.get(url);
        if (!img) {
          img = new Image();
          img.onload = requestDraw;
          img.referrerPolicy = "no-referrer";
          img.src = url;
          tiles.set(url, img);
          if (tiles.size > 512) tiles.delete(tiles.keys().next().value);
        }
        if (img.complete && img.naturalWidth) {
          const px = (x * TILE - cx) * scale + w / 2, py = (y * TILE - cy) * scale + h / 2;
          ctx.drawImage(img, px, py, TILE * scale + 0.5, TILE * scale + 0.5);
        }
      }
    }
  }

  function drawGrid(w, h) {
    const mpp = metresPerPixel();
    const step = niceStep(mpp * 90);  // a line every ~90 px
    const dLat = step / 111320, dLon = step / (111320 * Math.cos((view.lat * Math.PI) / 180));
    const [latTop, lonLeft] = unproject(0, 0), [latBottom, lonRight] = unproject(w, h);
    ctx.strokeStyle = S.tileUrl ? "rgba(0,0,0,.12)" : "#e2e8f0";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#94a3b8";
    ctx.font = "10px sans-serif";
    ctx.beginPath();
    for (let lat = Math.ceil((latBottom - CITY.lat) / dLat) * dLat + CITY.lat; lat <= latTop; lat += dLat) {
      const y = Math.round(project(lat, CITY.lon)[1]) + 0.5;
      ctx.moveTo(0, y); ctx.lineTo(w, y);
      ctx.fillText(lat.toFixed(3), 4, y - 2);
    }
    for (let lon = Math.ceil((lonLeft - CITY.lon) / dLon) * dLon + CITY.lon; lon <= lonRight; lon += dLon) {
      const x = Math.round(project(CITY.lat, lon)[0]) + 0.5;
      ctx.moveTo(x, 0); ctx.lineTo(x, h);
      ctx.fillText(lon.toFixed(3), x + 2, h - 4);
    }
    ctx.stroke();
    // The city centre.
    const [cx, cy] = project(CITY.lat, CITY.lon);
    ctx.strokeStyle = "#64748b";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.arc(cx, cy, 9, 0, 2 * Math.PI);
    ctx.moveTo(cx - 14, cy); ctx.lineTo(cx + 14, cy);
    ctx.moveTo(cx, cy - 14); ctx.lineTo(cx, cy + 14);
    ctx.stroke();
    ctx.fillStyle = "#475569";
    ctx.font = "11px sans-serif";
    ctx.fillText(CITY.name, cx + 12, cy - 10);
  }

  function drawScale(w, h) {
    const mpp = metresPerPixel();
    const most = mpp * 140;  // the bar's longest length in metres: the largest 1, 2 or 5 x 10^k under it
    const p = 10 ** Math.floor(Math.log10(most));
    const metres = [5, 2, 1].map((m) => m * p).find((m) => m <= most);
    const len = metres / mpp;
    const x = 12, y = h - 22;
    ctx.fillStyle = "rgba(255,255,255,.85)";
    ctx.fillRect(x - 6, y - 16, len + 12, 26);
    ctx.strokeStyle = "#111827";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(x, y - 4); ctx.lineTo(x, y + 2); ctx.lineTo(x + len, y + 2); ctx.lineTo(x + len, y - 4);
    ctx.stroke();
    ctx.fillStyle = "#111827";
    ctx.font = "11px sans-serif";
    ctx.fillText(metres >= 1000 ? `${metres / 1000} km` : `${metres} m`, x + 2, y - 6);
  }

  let hits = [];  // [x, y, kind, id] of what was drawn, for hover and click

  function draw() {
    drawQueued = false;
    const dpr = window.devicePixelRatio || 1;
    const { w, h } = size();
    if (!view.fitted && w > 0 && h > 0) fitCity();
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#f8fafc";
    ctx.fillRect(0, 0, w, h);
    drawTiles(w, h);
    drawGrid(w, h);
    const now = performance.now();
    let moving = false;
    const pos = new Map();
    for (const [id, d] of S.drivers) {
      const p = driverPos(d, now);
      if (d.t0 && now - d.t0 < GLIDE_MS) moving = true;
      pos.set(id, project(p[0], p[1]));
    }
    hits = [];
    // Orders: lines first (under the markers), then pickups and dropoffs.
    let ordersDrawn = 0;
    for (const o of S.orders.values()) {
      if (!o.pickup) continue;
      const started = o.status === "started";
      const target = started && o.dropoff ? o.dropoff : o.pickup;
      const [tx, ty] = project(target.lat, target.lon);
      const did = o.driver_id || o.offered_to;
      const dp = did && pos.get(did);
      if (dp) {
        ctx.beginPath();
        ctx.setLineDash(o.driver_id ? [] : [4, 4]);
        ctx.moveTo(dp[0], dp[1]);
        ctx.lineTo(tx, ty);
        ctx.strokeStyle = started ? DROPOFF : PICKUP;
        ctx.lineWidth = 1.5;
        ctx.stroke();
        ctx.setLineDash([]);
      }
      const [px, py] = project(o.pickup.lat, o.pickup.lon);
      if (!started) {
        ctx.strokeStyle = PICKUP;
        ctx.lineWidth = 2;
        ctx.strokeRect(px - 5, py - 5, 10, 10);
        if (o.status === "searching" && !o.offered_to) {
          ctx.fillStyle = "rgba(192,38,211,.18)";
          ctx.fillRect(px - 5, py - 5, 10, 10);
        }
        hits.push([px, py, "order", o.order_id]);
      }
      if (started && o.dropoff) {
        ctx.fillStyle = DROPOFF;
        ctx.beginPath();
        ctx.moveTo(tx, ty - 7); ctx.lineTo(tx + 7, ty); ctx.lineTo(tx, ty + 7); ctx.lineTo(tx - 7, ty);
        ctx.closePath();
        ctx.fill();
        hits.push([tx, ty, "order", o.order_id]);
      }
      ordersDrawn++;
    }
    // Drivers, by state so that the busy ones end on top.
    const counts = { available: 0, offered: 0, on_trip: 0, offline: 0 };
    let drawn = 0;
    const big = S.drivers.size > ANIMATE_MAX_DRIVERS;
    const r = big ? 3 : 5;
    for (const state of ["offline", "available", "offered", "on_trip"]) {
      ctx.fillStyle = COLORS[state];
      ctx.beginPath();
      for (const [id, d] of S.drivers) {
        if (d.state !== state) continue;
        counts[state]++;
        const [x, y] = pos.get(id);
        if (x < -10 || y < -10 || x > w + 10 || y > h + 10) continue;
        ctx.moveTo(x + r, y);
        ctx.arc(x, y, r, 0, 2 * Math.PI);
        hits.push([x, y, "driver", id]);
        drawn++;
      }
      ctx.fill();
    }
    if (!big) {
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1;
      for (const [x, y, kind] of hits) {
        if (kind !== "driver") continue;
        ctx.beginPath();
        ctx.arc(x, y, r, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }
    if (S.selected) {
      const p = S.selected.kind === "driver" ? pos.get(S.selected.id) : null;
      const o = S.selected.kind === "order" ? S.orders.get(S.selected.id) : null;
      const at = p || (o && o.pickup ? project(o.pickup.lat, o.pickup.lon) : null);
      if (at) {
        ctx.strokeStyle = "#111827";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.arc(at[0], at[1], 11, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }
    drawScale(w, h);
    for (const k of Object.keys(counts)) $(`legend-${k}`).textContent = counts[k];
    canvas.dataset.drivers = String(drawn);
    canvas.dataset.orders = String(ordersDrawn);
    if (moving) requestDraw();
  }

  function hitAt(x, y) {
    let best = null, bestD = 100;  // within 10 px
    for (const h of hits) {
      const d = (h[0] - x) ** 2 + (h[1] - y) ** 2;
      if (d <= bestD) { best = h; bestD = d; }
    }
    return best;
  }

  function describe(kind, id) {
    const now = serverNow();
    if (kind === "driver") {
      const d = S.drivers.get(id);
      if (!d) return null;
      return `driver ${id}\nstate ${d.state.replace("_", " ")}` + (d.order ? ` (order ${d.order})` : "") +
        `\n${d.lat.toFixed(5)}, ${d.lon.toFixed(5)}\nlast update ${age(now - d.seen)} ago`;
    }
    const o = S.orders.get(id);
    if (!o) return null;
    return `order ${id}\nstatus ${o.status}` + (o.offered_to ? ` (offered to ${o.offered_to})` : "") +
      `\npassenger ${o.passenger_id || "?"}` + (o.driver_id ? `\ndriver ${o.driver_id}` : "") +
      (o.eta_s !== undefined ? `\nETA ${age(o.eta_s * 1000)}` : "") + `\nage ${age(now - o.created_ts)}`;
  }

  function showTooltip(ev) {
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    const h = hitAt(x, y);
    const tip = $("tooltip");
    const text = h && describe(h[2], h[3]);
    if (!text) { tip.hidden = true; return; }
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = `${Math.min(x + 14, rect.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${Math.min(y + 14, rect.height - tip.offsetHeight - 4)}px`;
  }

  // Pan (drag), zoom (wheel, buttons), hover, click.
  let drag = null;
  canvas.addEventListener("mousedown", (ev) => {
    drag = { x: ev.clientX, y: ev.clientY, moved: false };
  });
  window.addEventListener("mouseup", (ev) => {
    if (drag && !drag.moved && ev.target === canvas) {
      const rect = canvas.getBoundingClientRect();
      const h = hitAt(ev.clientX - rect.left, ev.clientY - rect.top);
      select(h ? { kind: h[2], id: h[3] } : null);
    }
    drag = null;
    canvas.classList.remove("dragging");
  });
  window.addEventListener("mousemove", (ev) => {
    if (drag) {
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
      if (drag.moved) {
        canvas.classList.add("dragging");
        const [lat, lon] = unproject(size().w / 2 - dx, size().h / 2 - dy);
        view.lat = lat; view.lon = lon;
        drag.x = ev.clientX; drag.y = ev.clientY;
        requestDraw();
      }
    } else if (ev.target === canvas) {
      showTooltip(ev);
    }
  });
  canvas.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  function zoomAt(px, py, by) {
    const [lat, lon] = unproject(px, py);
    view.zoom = Math.max(9, Math.min(19, view.zoom + by));
    const [lat2, lon2] = unproject(px, py);
    view.lat += lat - lat2; view.lon += lon - lon2;
    requestDraw();
  }
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const rect = canvas.getBoundingClientRect();
    zoomAt(ev.clientX - rect.left, ev.clientY - rect.top, -Math.sign(ev.deltaY) * 0.25);
  }, { passive: false });
  $("zoom-in").addEventListener("click", () => zoomAt(size().w / 2, size().h / 2, 0.5));
  $("zoom-out").addEventListener("click", () => zoomAt(size().w / 2, size().h / 2, -0.5));
  $("recenter").addEventListener("click", () => { fitCity(); requestDraw(); });
  new ResizeObserver(requestDraw).observe(canvas);

  // ---- controls ------------------------------------------------------------------------------

  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("auth-token").value.trim();
    if (!t) { $("auth-message").textContent = "Paste a token first."; return; }
    keepToken(t, $("auth-remember").checked);
    S.token = t;
    $("auth-token").value = "";
    $("auth").hidden = true;
    S.backoff = BACKOFF_MIN_MS;
    connect();
  });
  $("logout").addEventListener("click", () => {
    forgetToken();
    if (S.ws) { const ws = S.ws; S.ws = null; ws.close(1000); }
    askForToken("Signed out.");
  });
  $("settings-open").addEventListener("click", () => {
    $("tile-url").value = S.tileUrl;
    $("settings").hidden = false;
  });
  $("settings-cancel").addEventListener("click", () => { $("settings").hidden = true; });
  $("settings-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    S.tileUrl = $("tile-url").value.trim();
    if (S.tileUrl) localStorage.setItem(TILE_KEY, S.tileUrl); else localStorage.removeItem(TILE_KEY);
    tiles.clear();
    $("settings").hidden = true;
    requestDraw();
  });
  $("timeline-close").addEventListener("click", () => select(null));
  $("timeline-cancel").addEventListener("click", cancelSelected);
  document.querySelectorAll("#log-filters input").forEach((i) => i.addEventListener("input", renderLog));
  setInterval(renderOrders, 1000);  // ages tick
  setInterval(() => {  // a socket that went silent: given up (its close may never come) and opened again
    if (!S.ws || !S.heardAt || performance.now() - S.heardAt < SILENT_MS) return;
    const ws = S.ws;
    S.ws = null;
    ws.close();
    scheduleReconnect("no data from the sidecar");
  }, 1000);

  // What the map drew, in canvas pixels, for tests and the curious: [{kind, id, x, y}].
  window.dgdo = { markers: () => hits.map(([x, y, kind, id]) => ({ kind, id, x, y })) };

  // ---- start ----------------------------------------------------------------------------------

  const fromUrl = takeTokenFromUrl();
  if (fromUrl !== null) {
    if (fromUrl) keepToken(fromUrl, false);
    S.token = fromUrl || null;
  } else {
    S.token = storedToken();
  }
  requestDraw();
  connect();
})();
