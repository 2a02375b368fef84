/* Flo console: one page per hash route (#/overview, #/kv, ...), data from /api (flo_server/api.py).
 *
 * No framework and nothing from outside this directory: h() builds elements, every piece of
 * server data goes in as text (never as HTML). Pages return {refresh, every} to be refreshed
 * while they are shown. Read-only but for the DLQ requeue, which the server may refuse.
 */
"use strict";

(function () {
  // --- small helpers ---------------------------------------------------------------------------------

  function h(tag, attrs) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
        else if (k === "class") el.className = v;
        else if (k === "text") el.textContent = v;
        else if (k === "value") el.value = v;
        else if (k === "checked") el.checked = !!v;
        else el.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (let i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }

  function add(el, kid) {
    if (kid === null || kid === undefined || kid === false) return;
    if (Array.isArray(kid)) kid.forEach((k) => add(el, k));
    else if (kid instanceof Node) el.appendChild(kid);
    else el.appendChild(document.createTextNode(String(kid)));
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  function put(el, ...kids) { // Element.append would print null as "null"
    for (const k of kids) add(el, k);
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  const fmt = {
    num(n) {
      if (n === null || n === undefined) return "–";
      return Number(n).toLocaleString("en-US");
    },
    rate(n) {
      if (n === null || n === undefined) return "–";
      if (n >= 1e6) return (n / 1e6).toFixed(2) + " M";
      if (n >= 1e4) return (n / 1e3).toFixed(1) + " k";
      if (n >= 100) return n.toFixed(0);
      return n.toFixed(n >= 10 ? 1 : 2);
    },
    bytes(n) {
      if (n === null || n === undefined) return "–";
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
      return (i ? n.toFixed(n >= 100 ? 0 : 1) : n) + " " + units[i];
    },
    secs(s) { // a latency
      if (s === null || s === undefined) return "–";
      if (s < 1e-3) return (s * 1e6).toFixed(s < 1e-5 ? 1 : 0) + " µs";
      if (s < 1) return (s * 1e3).toFixed(s < 1e-2 ? 2 : 1) + " ms";
      return s.toFixed(2) + " s";
    },
    dur(s) { // an uptime, an age
      if (s === null || s === undefined) return "–";
      s = Math.max(0, Math.floor(s));
      const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
      if (d) return d + "d " + hh + "h";
      if (hh) return hh + "h " + m + "m";
      if (m) return m + "m " + (s % 60) + "s";
      return s + "s";
    },
    time(ms) {
      if (!ms) return "–";
      return h("span", { class: "nowrap", title: new Date(ms).toISOString() }, fmt.timeText(ms));
    },
    timeText(ms) {
      const d = new Date(ms);
      const p = (x) => String(x).padStart(2, "0");
      return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
        p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
    },
    ago(ms) {
      if (!ms) return "–";
      return fmt.dur((Date.now() - ms) / 1000) + " ago";
    },
  };

  // --- the API ---------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function call(method, path, params, body) {
    let url = "/api" + path;
    if (params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
      const s = q.toString();
      if (s) url += "?" + s;
    }
    const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, opts);
    } catch (e) {
      throw new ApiError(0, "cannot reach the server (" + e.message + ")");
    }
    let data = null;
    try { data = await res.json(); } catch (e) { /* not JSON: a proxy's page, a 500 */ }
    if (!res.ok) throw new ApiError(res.status, (data && data.error) || res.status + " " + res.statusText);
    return data;
  }

  const api = {
    get: (path, params) => call("GET", path, params),
    post: (path, body) => call("POST", path, null, Object.assign({ csrf: session.csrf }, body)),
  };

  let session = { user: "", csrf: "" };

  // --- the frame: navigation, banner, refresh timer --------------------------------------------------

  const main = document.getElementById("main");
  const banner = document.getElementById("banner");
  let timer = null;
  let generation = 0; // a page left behind must not draw over the next one

  function showError(err) {
    let text = err && err.message ? err.message : String(err);
    if (err && err.status === 401) text = "Not signed in: " + text + ". Reload the page to enter a user name and password.";
    banner.textContent = text;
    banner.hidden = false;
  }

  function hideError() { banner.hidden = true; }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [page, query] = raw.split("?");
    return { page: page || "overview", params: Object.fromEntries(new URLSearchParams(query || "")) };
  }

  function setHash(page, params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v) q.set(k, v);
    const s = q.toString();
    history.replaceState(null, "", "#/" + page + (s ? "?" + s : ""));
  }

  async function route() {
    const { page, params } = parseHash();
    const fn = PAGES[page] || PAGES.overview;
    const gen = ++generation;
    if (timer) { clearInterval(timer); timer = null; }
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
    hideError();
    clear(main);
    main.dataset.page = page;
    let ctl = null;
    try {
      ctl = await fn(main, params, () => gen === generation);
    } catch (e) {
      if (gen === generation) showError(e);
      return;
    }
    if (gen !== generation || !ctl || !ctl.refresh) return;
    timer = setInterval(async () => {
      if (document.hidden) return;
      try {
        await ctl.refresh();
        if (gen === generation) hideError();
      } catch (e) {
        if (gen === generation) showError(e);
      }
    }, ctl.every || 3000);
  }

  // --- building blocks -------------------------------------------------------------------------------

  function section(title, ...kids) {
    return h("section", { class: "card" }, title ? h("h2", null, title) : null, ...kids);
  }

  function toolbar(...kids) { return h("div", { class: "toolbar" }, ...kids); }

  // A table: cols are [title, cell(row) -> node/text, {class}] ; rows are data.
  function table(cols, rows, opts) {
    opts = opts || {};
    if (!rows.length) return h("p", { class: "empty" }, opts.empty || "Nothing here.");
    const head = h("tr", null, cols.map((c) => h("th", { class: (c[2] && c[2].class) || null }, c[0])));
    const body = rows.map((r) => {
      const tr = h("tr", { class: opts.rowClass ? opts.rowClass(r) : null },
        cols.map((c) => h("td", { class: (c[2] && c[2].class) || null }, c[1](r))));
      if (opts.onclick) { tr.classList.add("clickable"); tr.addEventListener("click", () => opts.onclick(r, tr)); }
      return tr;
    });
    return h("div", { class: "table-wrap" }, h("table", { class: opts.class || null }, h("thead", null, head),
      h("tbody", null, body)));
  }

  function badge(text, kind) { return h("span", { class: "badge " + (kind || text) }, text); }

  function count(n, warn) {
    return h("span", { class: warn && n > 0 ? "warn-num" : null }, fmt.num(n));
  }

  function preview(v) {
    if (!v) return "–";
    const cls = "preview " + (v.encoding === "text" ? "text" : "b64");
    return h("span", { class: cls, title: v.encoding === "base64" ? "binary, shown as base64" : null },
      v.data + (v.truncated ? " …" : ""));
  }

  function stat(label, value, sub, cls) {
    return h("div", { class: "stat" + (cls ? " " + cls : "") }, h("div", { class: "label" }, label),
      h("div", { class: "value" }, value),
      sub ? h("div", { class: "sub" }, sub) : null);
  }

  function sparkline(points, cls) {
    const w = 200, hgt = 36;
    const s = svg("svg", { viewBox: `0 0 ${w} ${hgt}`, class: "spark " + (cls || ""), preserveAspectRatio: "none" });
    if (points.length < 2) return s;
    const max = Math.max(...points, 1e-9);
    const step = w / (points.length - 1);
    const xy = points.map((p, i) => `${(i * step).toFixed(1)},${(hgt - 2 - (p / max) * (hgt - 4)).toFixed(1)}`);
    s.appendChild(svg("polyline", { points: xy.join(" ") }));
    return s;
  }

  async function nsSelect(current, opts) {
    opts = opts || {};
    const data = await api.get("/namespaces");
    let names = data.namespaces.filter((n) => !opts.has || n[opts.has] > 0).map((n) => n.name);
    if (current && !names.includes(current)) names.unshift(current);
    const sel = h("select", { "aria-label": "namespace", id: "ns" },
      opts.all ? h("option", { value: "" }, "all namespaces") : null,
      names.map((n) => h("option", { value: n }, n)));
    sel.value = current || (opts.all ? "" : names[0] || "default");
    return sel;
  }

  // --- Overview --------------------------------------------------------------------------------------

  async function pageOverview(root, params, alive) {
    const hist = { ops: [], p99: [] };
    const grid = h("div", { class: "stats" });
    const cmds = h("div");
    const logBox = h("div");
    const infoBox = h("div");
    put(root,
      section("Live", grid),
      h("div", { class: "cols" }, section("Busiest commands (last second)", cmds), section("Log and fsync", logBox)),
      section("Server", infoBox),
    );

    async function refresh() {
      const o = await api.get("/overview");
      if (!alive()) return;
      hist.ops.push(o.ops_per_s); hist.p99.push(o.latency.p99_s || 0);
      if (hist.ops.length > 60) { hist.ops.shift(); hist.p99.shift(); }
      const lat = o.latency;
      const c = o.connections;
      const fs = o.fsync;
      put(clear(grid),
        stat("Operations / s", fmt.rate(o.ops_per_s), sparkline(hist.ops)),
        stat("Errors / s", fmt.rate(o.errors_per_s), fmt.num(o.commands_total) + " commands served"),
        stat("Latency p50", fmt.secs(lat.p50_s !== null ? lat.p50_s : lat.all_time.p50_s),
          lat.p50_s !== null ? "last second" : "since start (sampled 1 in 32)"),
        stat("Latency p99", fmt.secs(lat.p99_s !== null ? lat.p99_s : lat.all_time.p99_s), sparkline(hist.p99, "alt")),
        stat("Connections", fmt.num(c.total), `${c.flo} Flo · ${c.resp} RESP · ${c.waiters} parked`),
        stat("Memory (RSS)", fmt.bytes(o.memory.rss_bytes)),
        stat("Log writes / s", fmt.rate(o.writes_per_s), "LSN " + fmt.num(o.log.last_lsn)),
        stat("fsync p99", fs ? fmt.secs(fs.p99_s) : "–", fs ? fmt.rate(fs.per_s) + " / s · " + fmt.num(fs.count) + " total"
          : "no data directory"),
        stat("Network in / out", fmt.bytes(o.bytes_in_per_s) + "/s", fmt.bytes(o.bytes_out_per_s) + "/s out"),
        stat("Uptime", fmt.dur(o.uptime_s), o.ready ? "ready" : "recovering"),
      );
      put(clear(cmds), table([
        ["command", (r) => h("code", null, r.command)],
        ["per second", (r) => fmt.rate(r.per_s), { class: "num" }],
      ], o.top_commands, { empty: "Idle." }));
      const lg = o.log;
      const rows = [
        ["fsync policy", lg.policy || o.info.fsync],
        ["last LSN", fmt.num(lg.last_lsn)],
        ["flushed / synced LSN", has(lg.flushed_lsn) ? fmt.num(lg.flushed_lsn) + " / " + fmt.num(lg.synced_lsn) : "–"],
        ["bytes appended", has(lg.bytes_appended) ? fmt.bytes(lg.bytes_appended) : "–"],
        ["segments", has(lg.segments) ? fmt.num(lg.segments) : "–"],
        ["snapshots", has(lg.snapshots) ? `${fmt.num(lg.snapshots)} (last at LSN ${fmt.num(lg.snapshot_lsn)})` : "–"],
        ["fsync mean", fs ? fmt.secs(fs.mean_s) : "–"],
        ["log state", lg.failed ? badge("failed: " + lg.failed, "bad") : badge("ok", "good")],
      ];
      put(clear(logBox), kvTable(rows));
      const i = o.info;
      put(clear(infoBox), kvTable([
        ["version", i.version], ["data directory", i.data_dir || "(in memory)"], ["Flo op codes", fmt.num(i.ops)],
        ["authentication", i.auth_required ? "required" : "off"], ["failed logins", fmt.num(i.auth_failures)],
        ["TLS port", i.tls_port || "–"], ["connections received", fmt.num(c.received)],
        ["connections refused", fmt.num(c.rejected)],
      ]));
    }
    await refresh();
    return { refresh, every: 1000 };
  }

  function has(v) { return v !== undefined && v !== null; }

  function kvTable(rows) {
    return h("table", { class: "kv" }, h("tbody", null, rows.map(([k, v]) => h("tr", null, h("th", null, k),
      h("td", null, v)))));
  }

  // --- Connections -----------------------------------------------------------------------------------

  async function pageConnections(root, params, alive) {
    const box = h("div");
    const note = h("p", { class: "hint" });
    put(root, section("Client connections", note, box));
    async function refresh() {
      const d = await api.get("/connections");
      if (!alive()) return;
      note.textContent = d.all_shown ? `${d.total} open.` :
        `${d.connections.length} of ${d.total} open connections are yours; an admin sees them all.`;
      put(clear(box), table([
        ["id", (c) => c.id, { class: "num" }],
        ["protocol", (c) => badge(c.protocol, c.protocol)],
        ["peer", (c) => h("code", null, c.peer || "?")],
        ["user", (c) => c.user || h("em", null, "not signed in")],
        ["age", (c) => fmt.dur(c.age_s)],
        ["name", (c) => c.name || "–"],
        ["TLS", (c) => (c.tls ? "yes" : "no")],
      ], d.connections, { empty: "No client is connected." }));
    }
    await refresh();
    return { refresh, every: 2000 };
  }

  // --- KV --------------------------------------------------------------------------------------------

  async function pageKv(root, params, alive) {
    const ns = await nsSelect(params.ns || "default", { has: "kv_keys" });
    const prefix = h("input", { type: "search", placeholder: "key prefix", value: params.prefix || "", id: "prefix",
      "aria-label": "key prefix" });
    const list = h("div", { class: "keylist" });
    const detail = h("div", { class: "detail" }, h("p", { class: "empty" }, "Choose a key."));
    let cursor = null;
    let rows = [];
    const form = h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); search(); } },
      h("label", null, "namespace ", ns), prefix, h("button", { type: "submit" }, "Search"));
    put(root, section("Keys", form, h("div", { class: "split" }, list, detail)));

    async function search(more) {
      if (!more) { rows = []; cursor = null; }
      const d = await api.get("/kv", { ns: ns.value, prefix: prefix.value, after: cursor || "", limit: 200 });
      if (!alive()) return;
      rows = rows.concat(d.keys);
      cursor = d.next;
      setHash("kv", { ns: ns.value, prefix: prefix.value });
      put(clear(list),
        h("p", { class: "hint" }, `${rows.length} key${rows.length === 1 ? "" : "s"} shown` +
          (d.more ? " (more below)" : "") + ` · ${fmt.num(d.namespace_keys)} in the namespace`),
        table([
          ["key", (k) => h("code", null, k.key)],
          ["size", (k) => fmt.bytes(k.size), { class: "num" }],
          ["version", (k) => k.version, { class: "num" }],
          ["TTL", (k) => (k.ttl_ms === null ? "–" : fmt.dur(k.ttl_ms / 1000))],
        ], rows, { empty: "No key with this prefix.", onclick: (k, tr) => {
          for (const x of list.querySelectorAll("tr.selected")) x.classList.remove("selected");
          tr.classList.add("selected");
          show(k.b64).catch(showError);
        } }),
        d.more ? h("button", { class: "more", onclick: () => search(true).catch(showError) }, "Load more") : null,
      );
    }

    async function show(b64) {
      const k = await api.get("/kv/key", { ns: ns.value, key_b64: b64, history: 20 });
      if (!alive()) return;
      const value = k.value;
      put(clear(detail),
        h("h3", null, h("code", null, k.key)),
        kvTable([
          ["version", k.version], ["size", fmt.bytes(k.size)], ["written", fmt.time(k.written_at_ms)],
          ["TTL", k.ttl_ms === null ? "none" : fmt.dur(k.ttl_ms / 1000) + " (expires " + fmt.timeText(k.expires_at_ms) + ")"],
          ["encoding", value.encoding === "text" ? "UTF-8 text" : "binary (base64 below)"],
        ]),
        h("pre", { class: "value" }, value.data + (value.truncated ? "\n… (" + fmt.bytes(value.size) + " in all)" : "")),
        value.decoded ? [h("h4", null, "Decoded (msgpack)"),
          h("pre", { class: "value" }, JSON.stringify(value.decoded, null, 2))] : null,
        h("h4", null, "Earlier versions"),
        table([
          ["version", (r) => r.version, { class: "num" }],
          ["written", (r) => fmt.time(r.written_at_ms)],
          ["size", (r) => fmt.bytes(r.value.size), { class: "num" }],
          ["value", (r) => preview(r.value)],
        ], k.history, { empty: "No earlier version is kept." }),
      );
    }

    ns.addEventListener("change", () => search().catch(showError));
    await search();
    return null;
  }

  // --- Queues ----------------------------------------------------------------------------------------

  async function pageQueues(root, params, alive) {
    const ns = await nsSelect(params.ns || "", { all: true, has: "queues" });
    const list = h("div");
    const detail = h("div");
    let chosen = params.name ? { ns: params.ns || "default", name: params.name } : null;
    const selected = new Set();
    const status = h("div", { class: "status-line", "aria-live": "polite" });
    put(root,
      section("Queues", toolbar(h("label", null, "namespace ", ns)), list),
      detail,
    );

    async function refreshList() {
      const d = await api.get("/queues", { ns: ns.value });
      if (!alive()) return;
      put(clear(list), table([
        ["namespace", (q) => q.ns],
        ["queue", (q) => h("code", null, q.name)],
        ["ready", (q) => count(q.ready), { class: "num" }],
        ["in flight", (q) => count(q.inflight), { class: "num" }],
        ["delayed", (q) => count(q.delayed), { class: "num" }],
        ["DLQ", (q) => count(q.dlq, true), { class: "num" }],
        ["enqueued", (q) => fmt.num(q.total_enqueued), { class: "num" }],
        ["acked", (q) => fmt.num(q.total_acked), { class: "num" }],
      ], d.queues, {
        empty: "No queue yet: queues appear on their first enqueue.",
        rowClass: (q) => (chosen && q.ns === chosen.ns && q.name === chosen.name ? "selected" : null),
        onclick: (q) => { chosen = { ns: q.ns, name: q.name }; selected.clear(); status.textContent = "";
          setHash("queues", { ns: ns.value, name: q.name }); refresh().catch(showError); },
      }));
    }

    async function refreshDetail() {
      if (!chosen) { clear(detail); return; }
      let q;
      try {
        q = await api.get("/queue", { ns: chosen.ns, name: chosen.name, peek: 20, dlq: 200 });
      } catch (e) {
        if (e.status === 404) { chosen = null; clear(detail); return; }
        throw e;
      }
      if (!alive()) return;
      const s = q.stats;
      for (const seq of [...selected]) if (!q.dlq.some((m) => m.seq === seq)) selected.delete(seq);
      const msgCols = [
        ["seq", (m) => m.seq, { class: "num" }],
        ["priority", (m) => m.priority, { class: "num" }],
        ["enqueued", (m) => fmt.time(m.enqueued_at_ms)],
        ["deliveries", (m) => m.delivery_count, { class: "num" }],
        ["payload", (m) => preview(m.payload)],
      ];
      const checkAll = h("input", { type: "checkbox", "aria-label": "select all", checked: q.dlq.length > 0 &&
        q.dlq.every((m) => selected.has(m.seq)), onchange: (e) => {
        for (const m of q.dlq) e.target.checked ? selected.add(m.seq) : selected.delete(m.seq);
        refreshDetail().catch(showError);
      } });
      const dlqCols = [[checkAll, (m) => h("input", { type: "checkbox", "aria-label": "select " + m.seq,
        checked: selected.has(m.seq), onchange: (e) => { e.target.checked ? selected.add(m.seq) : selected.delete(m.seq);
          requeueBtn.disabled = !selected.size; } })]].concat(msgCols.slice(0, 3), [
        ["deliveries", (m) => m.delivery_count, { class: "num" }],
        ["dead since", (m) => fmt.time(m.due_ms)],
        ["payload", (m) => preview(m.payload)],
      ]);
      const requeueBtn = h("button", { class: "danger", id: "requeue", disabled: !selected.size || null,
        title: q.can_requeue ? "make the selected messages ready again" : "the server will refuse: requeue needs the admin right",
        onclick: () => requeue([...selected]) }, "Requeue selected");
      const allBtn = h("button", { id: "requeue-all", disabled: !q.dlq.length || null,
        onclick: () => requeue(q.dlq.map((m) => m.seq)) }, `Requeue all ${q.dlq.length} shown`);
      put(clear(detail),
        section(null, h("h2", null, "Queue ", h("code", null, q.name), h("span", { class: "muted" }, " in " + q.ns)),
          h("div", { class: "stats small" },
            stat("Ready", fmt.num(s.ready)), stat("In flight (leased)", fmt.num(s.inflight)),
            stat("Delayed", fmt.num(s.delayed)), stat("Dead-lettered", fmt.num(s.dlq)),
            stat("Enqueued", fmt.num(s.total_enqueued)), stat("Delivered", fmt.num(s.total_delivered)),
            stat("Acked", fmt.num(s.total_acked)), stat("Last seq", fmt.num(s.last_seq))),
          h("p", { class: "hint" }, `A message goes to the DLQ after ${q.max_deliveries} deliveries or a nack to the DLQ.`)),
        section("Dead-letter queue",
          toolbar(requeueBtn, allBtn, q.can_requeue ? null : h("span", { class: "hint" }, "requeue needs the admin right")),
          status, table(dlqCols, q.dlq, { empty: "The DLQ is empty." })),
        section("Next ready (peek, not leased)", table(msgCols, q.ready, { empty: "Nothing ready." })),
      );
    }

    async function requeue(seqs) {
      if (!seqs.length || !chosen) return;
      status.className = "status-line";
      status.textContent = "Requeueing " + seqs.length + "…";
      try {
        const r = await api.post("/queue/requeue", { ns: chosen.ns, name: chosen.name, seqs });
        selected.clear();
        await refresh();
        status.className = "status-line ok";
        status.textContent = `Requeued ${r.requeued} message${r.requeued === 1 ? "" : "s"}.`;
      } catch (e) {
        status.className = "status-line refused";
        status.textContent = "Refused (" + e.status + "): " + e.message;
      }
    }

    async function refresh() { await refreshList(); await refreshDetail(); }
    ns.addEventListener("change", () => { chosen = null; setHash("queues", { ns: ns.value }); refresh().catch(showError); });
    await refresh();
    return { refresh, every: 3000 };
  }

  // --- Streams ---------------------------------------------------------------------------------------

  async function pageStreams(root, params, alive) {
    const ns = await nsSelect(params.ns || "", { all: true, has: "streams" });
    const box = h("div");
    put(root, section("Streams", toolbar(h("label", null, "namespace ", ns)), box));
    async function refresh() {
      const d = await api.get("/streams", { ns: ns.value });
      if (!alive()) return;
      clear(box);
      if (!d.streams.length) { put(box, h("p", { class: "empty" }, "No stream yet.")); return; }
      for (const s of d.streams) {
        put(box, h("div", { class: "stream" },
          h("h3", null, h("code", null, s.name), h("span", { class: "muted" }, " in " + s.ns)),
          h("div", { class: "stats small" }, stat("Records", fmt.num(s.length)), stat("Size", fmt.bytes(s.bytes)),
            stat("First id", s.first_id || "–", null, "id"), stat("Last id", s.last_id || "–", null, "id"),
            stat("Retention", [s.retention.max_len ? "≤ " + fmt.num(s.retention.max_len) + " records" : null,
              s.retention.max_age_ms ? "≤ " + fmt.dur(s.retention.max_age_ms / 1000) : null,
              s.retention.max_bytes ? "≤ " + fmt.bytes(s.retention.max_bytes) : null].filter(Boolean).join(", ") || "none")),
          table([
            ["group", (g) => h("code", null, g.name)],
            ["consumers", (g) => g.consumers, { class: "num" }],
            ["lag", (g) => count(g.lag, true), { class: "num" }],
            ["pending", (g) => count(g.pending), { class: "num" }],
            ["delivered", (g) => fmt.num(g.delivered), { class: "num" }],
            ["acked", (g) => fmt.num(g.acked), { class: "num" }],
            ["dead", (g) => count(g.dead, true), { class: "num" }],
            ["pending by consumer", (g) => Object.entries(g.pending_by_consumer)
              .map(([c, n]) => c + ": " + n).join(", ") || "–"],
          ], s.groups, { empty: "No consumer group." })));
      }
    }
    ns.addEventListener("change", () => { setHash("streams", { ns: ns.value }); refresh().catch(showError); });
    await refresh();
    return { refresh, every: 3000 };
  }

  // --- Actions ---------------------------------------------------------------------------------------

  async function pageActions(root, params, alive) {
    const ns = await nsSelect(params.ns || "", { all: true });
    const acts = h("div"), workers = h("div"), runs = h("div");
    put(root, section("Actions", toolbar(h("label", null, "namespace ", ns)), acts),
      h("div", { class: "cols" }, section("Workers", workers), section("Recent runs", runs)));
    const n = (r, k) => count(r.runs[k] || 0, k === "failed" || k === "timed_out");
    async function refresh() {
      const d = await api.get("/actions", { ns: ns.value });
      if (!alive()) return;
      put(clear(acts), table([
        ["namespace", (a) => a.ns], ["action", (a) => h("code", null, a.name)],
        ["timeout", (a) => (a.timeout_ms ? fmt.dur(a.timeout_ms / 1000) : "none")],
        ["attempts", (a) => a.max_attempts, { class: "num" }],
        ["pending", (a) => n(a, "pending"), { class: "num" }], ["running", (a) => n(a, "running"), { class: "num" }],
        ["completed", (a) => n(a, "completed"), { class: "num" }], ["failed", (a) => n(a, "failed"), { class: "num" }],
        ["timed out", (a) => n(a, "timed_out"), { class: "num" }],
        ["cancelled", (a) => n(a, "cancelled"), { class: "num" }],
      ], d.actions, { empty: "No action registered." }));
      put(clear(workers), table([
        ["worker", (w) => h("code", null, w.id)], ["status", (w) => badge(w.status)],
        ["load", (w) => w.load + " / " + w.max_concurrency, { class: "num" }],
        ["actions", (w) => w.actions.join(", ")],
        ["done / failed", (w) => w.completed + " / " + w.failed, { class: "num" }],
        ["heartbeat", (w) => fmt.ago(w.last_heartbeat_ms)],
      ], d.workers, { empty: "No worker registered." }));
      put(clear(runs), table([
        ["run", (r) => h("code", { title: r.run_id }, r.run_id.slice(0, 12))], ["action", (r) => r.action],
        ["status", (r) => badge(r.status)], ["attempt", (r) => r.attempt + " / " + r.max_attempts, { class: "num" }],
        ["worker", (r) => r.worker || "–"], ["created", (r) => fmt.time(r.created_at_ms)],
        ["error", (r) => (r.error ? h("span", { class: "error-text" }, r.error) : "–")],
      ], d.recent_runs, { empty: "No run yet." }));
    }
    ns.addEventListener("change", () => { setHash("actions", { ns: ns.value }); refresh().catch(showError); });
    await refresh();
    return { refresh, every: 3000 };
  }

  // --- flamepy ---------------------------------------------------------------------------------------

  async function pageFlame(root, params, alive) {
    const apps = h("div"), sessions = h("div"), errors = h("div"), detail = h("div");
    let chosen = params.session || null;
    put(root, section("Applications", apps), section("Sessions", sessions), detail,
      section("Tasks with errors", errors));
    const c = (s, k) => count(s.counters[k], k === "failed");
    async function refresh() {
      const d = await api.get("/flame");
      if (!alive()) return;
      put(clear(apps), table([
        ["application", (a) => h("code", null, a.name)], ["state", (a) => badge(a.state)],
        ["command", (a) => h("code", { class: "wrap" }, [a.command || ""].concat(a.arguments || []).join(" "))],
        ["working directory", (a) => (a.working_directory ? h("code", null, a.working_directory) : "–")],
        ["max instances", (a) => fmt.num(a.max_instances), { class: "num" }],
        ["registered", (a) => fmt.time(a.created_ms)],
      ], d.applications, { empty: "No application registered (flmctl register)." }));
      put(clear(sessions),
        h("p", { class: "hint" },
          `${d.open_sessions}${d.more_open_sessions ? "+" : ""} open; closed sessions follow, newest first.`),
        table([
          ["session", (s) => h("code", null, s.id)], ["application", (s) => s.app], ["state", (s) => badge(s.state)],
          ["pending", (s) => c(s, "pending"), { class: "num" }], ["running", (s) => c(s, "running"), { class: "num" }],
          ["succeeded", (s) => c(s, "succeed"), { class: "num" }], ["failed", (s) => c(s, "failed"), { class: "num" }],
          ["cancelled", (s) => c(s, "cancelled"), { class: "num" }], ["created", (s) => fmt.time(s.created_ms)],
          ["last event", (s) => (s.events.length ? s.events[s.events.length - 1].message : "–")],
        ], d.sessions, {
          empty: "No session.",
          rowClass: (s) => (s.id === chosen ? "selected" : null),
          onclick: (s) => { chosen = s.id; setHash("flame", { session: s.id }); refresh().catch(showError); },
        }));
      put(clear(errors), table([
        ["session", (t) => h("code", null, t.session)], ["task", (t) => t.id, { class: "num" }],
        ["state", (t) => badge(t.state)], ["instance", (t) => t.instance || "–"],
        ["finished", (t) => fmt.time(t.completed_ms)],
        ["error", (t) => h("span", { class: "error-text" }, t.message || "")],
      ], d.task_errors, { empty: "No failed task in the sessions shown." }));
      if (!chosen) { clear(detail); return; }
      let s;
      try {
        s = await api.get("/flame/session", { id: chosen, limit: 200 });
      } catch (e) {
        if (e.status === 404) { chosen = null; clear(detail); return; }
        throw e;
      }
      if (!alive()) return;
      put(clear(detail), section(null, h("h2", null, "Session ", h("code", null, s.session.id)),
        table([
          ["task", (t) => t.id, { class: "num" }], ["state", (t) => badge(t.state)],
          ["created", (t) => fmt.time(t.created_ms)], ["finished", (t) => fmt.time(t.completed_ms)],
          ["instance", (t) => t.instance || "–"],
          ["last event", (t) => (t.message ? h("span", { class: "error-text" }, t.message)
            : (t.last_event ? t.last_event.message : "–"))],
        ], s.tasks, { empty: "No task yet." }),
        s.more_tasks ? h("p", { class: "hint" }, "The first 200 tasks are shown.") : null));
    }
    await refresh();
    return { refresh, every: 3000 };
  }

  const PAGES = {
    overview: pageOverview, connections: pageConnections, kv: pageKv, queues: pageQueues, streams: pageStreams,
    actions: pageActions, flame: pageFlame,
  };

  // --- start -----------------------------------------------------------------------------------------

  async function start() {
    try {
      session = await api.get("/session");
      const who = document.getElementById("who");
      who.textContent = session.auth_required ? "signed in as " + session.user : "no authentication";
      who.title = session.server_admin ? "admin of the whole server" : "";
    } catch (e) {
      showError(e);
    }
    window.addEventListener("hashchange", route);
    await route();
  }

  start();
})();
