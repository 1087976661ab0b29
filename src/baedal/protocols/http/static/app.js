/*
 * Baedal web console: a single page over the RabbitMQ-compatible management API.
 *
 * Theory of operation
 * - Plain browser JavaScript, no build step and no third-party code: everything the
 *   console needs is served by the broker from /console/.
 * - Credentials live in sessionStorage (gone when the tab closes) and go out as an
 *   HTTP basic Authorization header on every fetch(); a 401 brings the login form back.
 *   Every fetch uses credentials: "omit": a 401 carries WWW-Authenticate (as RabbitMQ's
 *   does), and the Fetch standard lets the browser pop its own password dialog only
 *   when credentials are included; with "omit" the 401 simply reaches our code.
 * - Hash routing (#/queues, #/queues/%2F/orders, ...).  Each page is an object with
 *   mount(root) once and refresh() on every poll tick; refresh only rebuilds the data
 *   parts (tables, totals), never the forms, so typing is not lost while polling.
 * - One poll timer (POLL_MS).  /api/overview is sampled on every tick whatever the page,
 *   so the charts already have history when the Overview is opened.
 * - The DOM is built with h(), which sets text through text nodes: names of queues and
 *   message payloads are never parsed as HTML.
 * - Stable ids and data-testid attributes are part of the contract with the browser
 *   tests (tests/http/test_console_browser.py): rename them only together.
 */
"use strict";

(() => {
  const AUTH_KEY = "baedal.auth";
  const USER_KEY = "baedal.user";
  const VHOST_KEY = "baedal.vhost";
  const POLL_MS = 3000;
  const HISTORY_SAMPLES = 100; // 5 minutes at POLL_MS
  // The default exchange has the empty name; the API spells it amq.default in paths.
  const DEFAULT_EXCHANGE_IN_PATH = "amq.default";
  const DEFAULT_EXCHANGE_LABEL = "(AMQP default)";

  const state = {
    auth: sessionStorage.getItem(AUTH_KEY),
    user: sessionStorage.getItem(USER_KEY) || "",
    vhost: sessionStorage.getItem(VHOST_KEY) || "",
    vhosts: [],
    page: null,
    timer: null,
    history: [],
    lastOverview: null,
  };

  // --- DOM helpers -------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "class") {
        el.className = value;
      } else if (key === "value" || key === "checked" || key === "selected") {
        el[key] = value;
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function replace(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  const $ = (selector, root = document) => root.querySelector(selector);

  // --- formatting ----------------------------------------------------------------------

  function fmtNum(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : "–";
  }

  function fmtRate(value) {
    if (typeof value !== "number") return "–";
    return (value >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(1)) + "/s";
  }

  function fmtBytes(value) {
    if (typeof value !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = value;
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) {
      n /= 1024;
      unit += 1;
    }
    return `${unit ? n.toFixed(1) : n} ${units[unit]}`;
  }

  function rate(stats, name) {
    const details = stats && stats[`${name}_details`];
    return details && typeof details.rate === "number" ? details.rate : undefined;
  }

  function vhostLabel(vhost) {
    return vhost === "/" ? "/" : vhost;
  }

  function exchangeLabel(name) {
    return name === "" ? DEFAULT_EXCHANGE_LABEL : name;
  }

  // --- API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const enc = encodeURIComponent; // vhost "/" becomes %2F, as the API expects
  const exchangeSegment = (name) => enc(name === "" ? DEFAULT_EXCHANGE_IN_PATH : name);

  async function api(method, path, body, extraHeaders) {
    const headers = { Authorization: `Basic ${state.auth}`, ...(extraHeaders || {}) };
    const options = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      options.body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (error) {
      throw new ApiError(0, `cannot reach the broker (${error.message})`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = text;
      }
    }
    if (response.status === 401) {
      showLogin("Your session is no longer accepted; please log in again.");
      throw new ApiError(401, "not authorised");
    }
    if (!response.ok) {
      throw new ApiError(response.status, errorText(response, data));
    }
    return data;
  }

  // RabbitMQ's error shape: {"error": "not_found", "reason": "no queue 'x' in vhost '/'"}.
  function errorText(response, data) {
    if (data && typeof data === "object") {
      const reason = typeof data.reason === "string" ? data.reason : JSON.stringify(data.reason);
      return [data.error, reason].filter(Boolean).join(": ") || `HTTP ${response.status}`;
    }
    return `HTTP ${response.status} ${response.statusText || ""}`.trim();
  }

  const get = (path) => api("GET", path);

  function listPath(kind) {
    return state.vhost ? `/api/${kind}/${enc(state.vhost)}` : `/api/${kind}`;
  }

  // "key=value" lines (or a JSON object) -> object; values read as JSON when they parse.
  function parseKeyValues(text, what) {
    const trimmed = (text || "").trim();
    if (!trimmed) return {};
    if (trimmed.startsWith("{")) {
      const value = JSON.parse(trimmed);
      if (typeof value !== "object" || Array.isArray(value)) throw new Error(`${what}: expected a JSON object`);
      return value;
    }
    const result = {};
    for (const line of trimmed.split(/\n/)) {
      if (!line.trim()) continue;
      const at = line.indexOf("=");
      if (at <= 0) throw new Error(`${what}: "${line.trim()}" is not key=value`);
      const key = line.slice(0, at).trim();
      const raw = line.slice(at + 1).trim();
      let value = raw;
      try {
        value = JSON.parse(raw);
      } catch (_) {
        /* plain text */
      }
      result[key] = value;
    }
    return result;
  }

  // --- toast and results -----------------------------------------------------------

  let toastTimer = null;
  function toast(message, kind = "ok") {
    const el = $("#toast");
    el.textContent = message;
    el.className = `toast ${kind}`;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      el.hidden = true;
    }, 4000);
  }

  function showResult(el, message, kind) {
    el.textContent = message;
    el.className = `result ${kind}`;
    el.dataset.state = kind;
  }

  async function runAction(button, resultEl, action) {
    button.disabled = true;
    try {
      const message = await action();
      if (resultEl && message) showResult(resultEl, message, "ok");
      else if (message) toast(message);
      await refreshNow();
    } catch (error) {
      if (error.status === 401) return;
      if (resultEl) showResult(resultEl, error.message, "error");
      else toast(error.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  // --- tables -------------------------------------------------------------------------

  /**
   * columns: [{title, num, field, cell(row) -> node|string}]
   * options: {testid, rowId(row) -> test id suffix, rowName(row), empty}
   */
  function dataTable(columns, rows, options) {
    const head = h("tr", null, columns.map((c) => h("th", { class: c.num ? "num" : null }, c.title)));
    const body = h("tbody");
    if (!rows.length) {
      body.append(h("tr", null, h("td", { class: "empty", colspan: columns.length }, options.empty || "Nothing here yet.")));
    }
    for (const row of rows) {
      const tr = h("tr", {
        "data-testid": `${options.rowTestid}-${options.rowId(row)}`,
        "data-name": options.rowId(row),
        class: options.rowClass,
      });
      for (const column of columns) {
        tr.append(h("td", { class: column.num ? "num" : column.class, "data-field": column.field }, column.cell(row)));
      }
      body.append(tr);
    }
    return h("div", { class: "table-wrap" }, h("table", { "data-testid": options.testid }, h("thead", null, head), body));
  }

  function badges(row, extra) {
    const list = [];
    if (row.durable) list.push(["D", "durable"]);
    if (row.auto_delete) list.push(["AD", "auto-delete"]);
    if (row.exclusive) list.push(["Excl", "exclusive"]);
    if (row.internal) list.push(["I", "internal"]);
    for (const key of Object.keys(row.arguments || {})) list.push([shortArgument(key), `${key}: ${JSON.stringify(row.arguments[key])}`]);
    for (const item of extra || []) list.push(item);
    return list.map(([label, title]) => h("span", { class: "badge", title }, label));
  }

  function shortArgument(key) {
    const names = {
      "x-message-ttl": "TTL",
      "x-expires": "Exp",
      "x-max-length": "Lim",
      "x-max-length-bytes": "Lim B",
      "x-dead-letter-exchange": "DLX",
      "x-dead-letter-routing-key": "DLK",
      "x-max-priority": "Pri",
      "x-queue-type": null,
      "x-overflow": "Ovfl",
      "x-single-active-consumer": "SAC",
      "x-queue-mode": "Mode",
    };
    return names[key] === undefined ? key : names[key] || key;
  }

  function card(title, ...children) {
    return h("section", { class: "card" }, title ? h("h2", null, title) : null, children);
  }

  function vhostSelect(id, selected) {
    const vhosts = state.vhosts.length ? state.vhosts : ["/"];
    const current = selected || state.vhost || vhosts[0];
    return h(
      "select",
      { id, "data-testid": id, name: "vhost" },
      vhosts.map((name) => h("option", { value: name, selected: name === current }, vhostLabel(name)))
    );
  }

  function field(labelText, control) {
    return h("label", null, labelText, control);
  }

  function check(labelText, id, checked) {
    return h("label", { class: "check" }, h("input", { type: "checkbox", id, "data-testid": id, checked }), labelText);
  }

  function confirmAction(text) {
    return window.confirm(text);
  }

  // --- charts ---------------------------------------------------------------------------

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 4, 5, 10]) {
      if (value <= step * magnitude) return step * magnitude;
    }
    return 10 * magnitude;
  }

  /** A line chart of the last samples; series: [{label, color, values}] aligned with times. */
  function drawChart(canvas, times, series, formatValue, minimumTop = 1) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 220;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const pad = { left: 56, right: 12, top: 10, bottom: 24 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const all = series.flatMap((s) => s.values.filter((v) => typeof v === "number"));
    const top = niceMax(Math.max(minimumTop, ...all));
    const span = POLL_MS * (HISTORY_SAMPLES - 1);
    const now = times.length ? times[times.length - 1] : Date.now();
    const x = (t) => pad.left + plotW * (1 - (now - t) / span);
    const y = (v) => pad.top + plotH * (1 - v / top);

    ctx.font = `11px ${getComputedStyle(document.body).fontFamily}`;
    ctx.lineWidth = 1;
    ctx.strokeStyle = cssVar("--line");
    ctx.fillStyle = cssVar("--muted");
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const value = (top * i) / 4;
      const gy = Math.round(y(value)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, gy);
      ctx.lineTo(pad.left + plotW, gy);
      ctx.stroke();
      ctx.fillText(formatValue(value), pad.left - 6, gy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const minutesAgo of [5, 4, 3, 2, 1, 0]) {
      const t = now - minutesAgo * 60000;
      if (now - t > span) continue;
      ctx.fillText(minutesAgo ? `-${minutesAgo} min` : "now", Math.min(x(t), pad.left + plotW - 14), pad.top + plotH + 6);
    }
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      let started = false;
      s.values.forEach((value, i) => {
        if (typeof value !== "number") {
          started = false;
          return;
        }
        const px = x(times[i]);
        const py = y(value);
        if (started) ctx.lineTo(px, py);
        else ctx.moveTo(px, py);
        started = true;
      });
      ctx.stroke();
    }
    canvas.dataset.samples = String(times.length);
  }

  function legend(series, current) {
    return h(
      "div",
      { class: "legend" },
      series.map((s) =>
        h("span", { "data-series": s.key }, h("span", { class: "swatch", style: `background:${s.color}` }), `${s.label} `, h("strong", null, current(s)))
      )
    );
  }

  // --- overview sampling ----------------------------------------------------------------

  function sample(overview) {
    const stats = overview.message_stats || {};
    const totals = overview.queue_totals || {};
    const now = Date.now();
    const previous = state.history[state.history.length - 1];
    // Prefer the broker's own rate; otherwise derive it from the counters between polls.
    const derived = (name) => {
      const given = rate(stats, name);
      if (given !== undefined) return given;
      if (!previous || typeof stats[name] !== "number" || typeof previous.counters[name] !== "number") return undefined;
      const seconds = (now - previous.t) / 1000;
      return seconds > 0 ? Math.max(0, (stats[name] - previous.counters[name]) / seconds) : undefined;
    };
    state.history.push({
      t: now,
      counters: { publish: stats.publish, deliver_get: stats.deliver_get, ack: stats.ack },
      ready: totals.messages_ready,
      unacked: totals.messages_unacknowledged,
      publish: derived("publish"),
      deliver_get: derived("deliver_get"),
      ack: derived("ack"),
    });
    if (state.history.length > HISTORY_SAMPLES) state.history.shift();
    state.lastOverview = overview;
  }

  // --- pages ----------------------------------------------------------------------------

  function OverviewPage() {
    let tiles;
    let alarms;
    let about;
    let queuedCanvas;
    let ratesCanvas;
    let queuedLegend;
    let ratesLegend;
    const queuedSeries = [
      { key: "ready", label: "Ready", color: cssVar("--series-1") },
      { key: "unacked", label: "Unacked", color: cssVar("--series-3") },
    ];
    const rateSeries = [
      { key: "publish", label: "Publish", color: cssVar("--series-1") },
      { key: "deliver_get", label: "Deliver / get", color: cssVar("--series-2") },
      { key: "ack", label: "Ack", color: cssVar("--series-4") },
    ];
    const onResize = () => draw();

    function draw() {
      const times = state.history.map((s) => s.t);
      const latest = state.history[state.history.length - 1] || {};
      drawChart(queuedCanvas, times, queuedSeries.map((s) => ({ ...s, values: state.history.map((p) => p[s.key]) })), (v) => (Number.isInteger(v) ? fmtNum(v) : v.toFixed(1)), 4);
      drawChart(ratesCanvas, times, rateSeries.map((s) => ({ ...s, values: state.history.map((p) => p[s.key]) })), (v) => (v >= 10 ? Math.round(v) : v >= 1 ? v.toFixed(1) : v.toFixed(2)) + "/s");
      replace(queuedLegend, legend(queuedSeries, (s) => fmtNum(latest[s.key])));
      replace(ratesLegend, legend(rateSeries, (s) => fmtRate(latest[s.key])));
    }

    return {
      title: "Overview",
      nav: "overview",
      mount(root) {
        tiles = h("div", { class: "tiles", "data-testid": "overview-totals" });
        queuedCanvas = h("canvas", { class: "chart", id: "chart-queued", "data-testid": "chart-queued", role: "img", "aria-label": "Queued messages over time" });
        ratesCanvas = h("canvas", { class: "chart", id: "chart-rates", "data-testid": "chart-rates", role: "img", "aria-label": "Message rates over time" });
        queuedLegend = h("div");
        ratesLegend = h("div");
        alarms = h("ul", { class: "alarms", "data-testid": "alarms" });
        about = h("dl", { class: "kv", "data-testid": "node-info" });
        append(root, [
          h("div", { class: "page-head" }, h("h1", null, "Overview")),
          tiles,
          h(
            "div",
            { class: "grid two" },
            card("Queued messages", queuedCanvas, queuedLegend),
            card("Message rates", ratesCanvas, ratesLegend)
          ),
          h("div", { class: "grid two" }, card("Alarms", alarms), card("Node", about)),
        ]);
        window.addEventListener("resize", onResize);
      },
      destroy() {
        window.removeEventListener("resize", onResize);
      },
      async refresh() {
        const overview = state.lastOverview || (await get("/api/overview"));
        const nodes = await get("/api/nodes").catch(() => []);
        const totals = overview.queue_totals || {};
        const objects = overview.object_totals || {};
        const stats = overview.message_stats || {};
        const latest = state.history[state.history.length - 1] || {};
        const tile = (key, label, value) =>
          h("div", { class: "tile", "data-testid": `total-${key}` }, h("div", { class: "label" }, label), h("div", { class: "value", "data-value": value ?? "" }, value));
        replace(
          tiles,
          tile("messages", "Messages", fmtNum(totals.messages)),
          tile("ready", "Ready", fmtNum(totals.messages_ready)),
          tile("unacked", "Unacked", fmtNum(totals.messages_unacknowledged)),
          tile("publish-rate", "Publish", fmtRate(latest.publish ?? rate(stats, "publish"))),
          tile("deliver-rate", "Deliver / get", fmtRate(latest.deliver_get ?? rate(stats, "deliver_get"))),
          tile("queues", "Queues", fmtNum(objects.queues)),
          tile("exchanges", "Exchanges", fmtNum(objects.exchanges)),
          tile("connections", "Connections", fmtNum(objects.connections)),
          tile("channels", "Channels", fmtNum(objects.channels)),
          tile("consumers", "Consumers", fmtNum(objects.consumers))
        );
        draw();
        renderAlarms(alarms, overview, nodes);
        const node = (Array.isArray(nodes) && nodes[0]) || {};
        const product = overview.product_name || "Baedal";
        const version = overview.product_version || overview.rabbitmq_version || "";
        replace(
          about,
          [
            ["Product", `${product} ${version}`.trim()],
            ["Node", overview.node || node.name || "–"],
            ["Cluster", overview.cluster_name || "–"],
            ["Uptime", node.uptime ? `${Math.round(node.uptime / 60000)} min` : "–"],
            ["Memory", fmtBytes(node.mem_used)],
            ["Disk free", fmtBytes(node.disk_free)],
          ].map(([k, v]) => [h("dt", null, k), h("dd", null, v)])
        );
      },
    };
  }

  // Baedal lists alarms on /api/overview; RabbitMQ reports them per node.  Accept both:
  // overview.alarms as ["memory"], [{resource, ...}] or {memory: true}, nodes' mem_alarm.
  function renderAlarms(list, overview, nodes) {
    const active = new Set();
    const alarmsField = overview.alarms;
    if (Array.isArray(alarmsField)) {
      for (const alarm of alarmsField) {
        if (typeof alarm === "string") active.add(alarm);
        else if (alarm && (alarm.resource || alarm.name)) active.add(alarm.resource || alarm.name);
      }
    } else if (alarmsField && typeof alarmsField === "object") {
      for (const [name, on] of Object.entries(alarmsField)) if (on) active.add(name);
    }
    for (const node of Array.isArray(nodes) ? nodes : []) {
      if (node.mem_alarm) active.add("memory");
      if (node.disk_free_alarm) active.add("disk");
    }
    const items = [...active].sort().map((name) =>
      h("li", { class: "alarm-on", "data-testid": `alarm-${name}` }, `${name} alarm: publishers are blocked`)
    );
    if (!items.length) items.push(h("li", { class: "alarm-off", "data-testid": "alarm-none" }, "No alarms: memory and disk are within limits."));
    replace(list, items);
  }

  function queueRoute(vhost, name) {
    return `#/queues/${enc(vhost)}/${enc(name)}`;
  }

  function queueType(q) {
    return q.type || (q.arguments && q.arguments["x-queue-type"]) || "classic";
  }

  function QueuesPage() {
    let tableHolder;
    let count;
    return {
      title: "Queues",
      nav: "queues",
      mount(root) {
        tableHolder = h("div", { "data-testid": "queues-table-holder" }, h("p", { class: "muted" }, "Loading…"));
        count = h("span", { class: "muted", "data-testid": "queues-count" });
        const result = h("p", { class: "result", id: "declare-queue-result", "data-testid": "declare-queue-result" });
        const name = h("input", { id: "declare-queue-name", "data-testid": "declare-queue-name", required: true, placeholder: "orders" });
        const type = h(
          "select",
          { id: "declare-queue-type", "data-testid": "declare-queue-type" },
          ["classic", "quorum", "stream"].map((t) => h("option", { value: t }, t))
        );
        const args = h("textarea", {
          id: "declare-queue-arguments",
          "data-testid": "declare-queue-arguments",
          rows: 2,
          placeholder: "x-max-length=1000\nx-message-ttl=60000",
        });
        const vhost = vhostSelect("declare-queue-vhost");
        const submit = h("button", { type: "submit", class: "primary", id: "declare-queue-submit", "data-testid": "declare-queue-submit" }, "Add queue");
        const form = h(
          "form",
          {
            class: "inline",
            id: "declare-queue-form",
            "data-testid": "declare-queue-form",
            onsubmit: (event) => {
              event.preventDefault();
              runAction(submit, result, async () => {
                const queueName = name.value.trim();
                const argumentsObject = parseKeyValues(args.value, "arguments");
                if (type.value !== "classic") argumentsObject["x-queue-type"] = type.value;
                await api("PUT", `/api/queues/${enc(vhost.value)}/${enc(queueName)}`, {
                  durable: $("#declare-queue-durable").checked,
                  auto_delete: $("#declare-queue-auto-delete").checked,
                  arguments: argumentsObject,
                });
                name.value = "";
                return `Queue ${queueName} declared.`;
              });
            },
          },
          field("Virtual host", vhost),
          field("Name", name),
          field("Type", type),
          check("Durable", "declare-queue-durable", true),
          check("Auto-delete", "declare-queue-auto-delete", false),
          field("Arguments (key=value per line)", args),
          submit
        );
        append(root, [
          h("div", { class: "page-head" }, h("h1", null, "Queues ", count)),
          card(null, tableHolder),
          card("Add a queue", form, result),
        ]);
      },
      async refresh() {
        const queues = (await get(listPath("queues"))) || [];
        queues.sort((a, b) => a.vhost.localeCompare(b.vhost) || a.name.localeCompare(b.name));
        count.textContent = `(${queues.length})`;
        const columns = [
          { title: "Name", field: "name", cell: (q) => h("a", { href: queueRoute(q.vhost, q.name), "data-testid": `queue-link-${q.name}` }, q.name) },
          state.vhost ? null : { title: "Vhost", field: "vhost", cell: (q) => vhostLabel(q.vhost) },
          { title: "Type", field: "type", cell: queueType },
          { title: "Features", field: "features", cell: (q) => badges(q) },
          { title: "State", field: "state", cell: (q) => h("span", { class: `state-${q.state || "running"}` }, q.state || "running") },
          { title: "Ready", num: true, field: "messages_ready", cell: (q) => fmtNum(q.messages_ready) },
          { title: "Unacked", num: true, field: "messages_unacknowledged", cell: (q) => fmtNum(q.messages_unacknowledged) },
          { title: "Total", num: true, field: "messages", cell: (q) => fmtNum(q.messages) },
          { title: "Incoming", num: true, field: "publish_rate", cell: (q) => fmtRate(rate(q.message_stats, "publish")) },
          { title: "Deliver / get", num: true, field: "deliver_rate", cell: (q) => fmtRate(rate(q.message_stats, "deliver_get")) },
          { title: "Ack", num: true, field: "ack_rate", cell: (q) => fmtRate(rate(q.message_stats, "ack")) },
          { title: "Consumers", num: true, field: "consumers", cell: (q) => fmtNum(q.consumers) },
          {
            title: "",
            class: "actions",
            field: "actions",
            cell: (q) => [
              h("button", { type: "button", class: "small", "data-testid": `queue-purge-${q.name}`, onclick: (e) => purgeQueue(e.currentTarget, q.vhost, q.name) }, "Purge"),
              " ",
              h("button", { type: "button", class: "small danger", "data-testid": `queue-delete-${q.name}`, onclick: (e) => deleteQueue(e.currentTarget, q.vhost, q.name) }, "Delete"),
            ],
          },
        ].filter(Boolean);
        replace(
          tableHolder,
          dataTable(columns, queues, {
            testid: "queues-table",
            rowTestid: "queue-row",
            rowId: (q) => q.name,
            empty: "No queues yet. Declare one below, or let a client declare it.",
          })
        );
      },
    };
  }

  function purgeQueue(button, vhost, name) {
    if (!confirmAction(`Purge every ready message from queue "${name}"?`)) return Promise.resolve();
    return runAction(button, null, async () => {
      await api("DELETE", `/api/queues/${enc(vhost)}/${enc(name)}/contents`);
      return `Queue ${name} purged.`;
    });
  }

  function deleteQueue(button, vhost, name, afterwards) {
    if (!confirmAction(`Delete queue "${name}" and its messages?`)) return Promise.resolve();
    return runAction(button, null, async () => {
      await api("DELETE", `/api/queues/${enc(vhost)}/${enc(name)}`);
      if (afterwards) afterwards();
      return `Queue ${name} deleted.`;
    });
  }

  function publishFields(prefix) {
    const routingKey = h("input", { id: `${prefix}-routing-key`, "data-testid": `${prefix}-routing-key`, placeholder: "routing key" });
    const deliveryMode = h(
      "select",
      { id: `${prefix}-delivery-mode`, "data-testid": `${prefix}-delivery-mode` },
      h("option", { value: "1" }, "1 – non-persistent"),
      h("option", { value: "2" }, "2 – persistent")
    );
    const headers = h("textarea", { id: `${prefix}-headers`, "data-testid": `${prefix}-headers`, rows: 2, placeholder: "key=value per line" });
    const properties = h("textarea", {
      id: `${prefix}-properties`,
      "data-testid": `${prefix}-properties`,
      rows: 2,
      placeholder: "content_type=text/plain\ncorrelation_id=42",
    });
    const payload = h("textarea", { id: `${prefix}-payload`, "data-testid": `${prefix}-payload`, rows: 4, placeholder: "message body" });
    const encoding = h(
      "select",
      { id: `${prefix}-payload-encoding`, "data-testid": `${prefix}-payload-encoding` },
      h("option", { value: "string" }, "string"),
      h("option", { value: "base64" }, "base64")
    );
    const body = () => {
      const props = parseKeyValues(properties.value, "properties");
      props.delivery_mode = Number(deliveryMode.value);
      const headerObject = parseKeyValues(headers.value, "headers");
      if (Object.keys(headerObject).length) props.headers = headerObject;
      return { properties: props, routing_key: routingKey.value, payload: payload.value, payload_encoding: encoding.value };
    };
    return { routingKey, deliveryMode, headers, properties, payload, encoding, body };
  }

  async function publish(vhost, exchange, body) {
    const answer = await api("POST", `/api/exchanges/${enc(vhost)}/${exchangeSegment(exchange)}/publish`, body);
    return Boolean(answer && answer.routed);
  }

  function publishOutcome(resultEl, routed) {
    if (routed) showResult(resultEl, "Message published and routed.", "ok");
    else showResult(resultEl, "Message published, but not routed: no queue is bound for that routing key.", "warn");
  }

  function QueueDetailPage(vhost, name) {
    let info;
    let consumersHolder;
    let bindingsHolder;
    return {
      title: `Queue ${name}`,
      nav: "queues",
      mount(root) {
        info = h("dl", { class: "kv", "data-testid": "queue-detail" }, h("dd", null, "Loading…"));
        consumersHolder = h("div");
        bindingsHolder = h("div");

        const getResult = h("p", { class: "result", id: "get-result", "data-testid": "get-result" });
        const messages = h("div", { id: "get-messages", "data-testid": "get-messages" });
        const countInput = h("input", { id: "get-count", "data-testid": "get-count", type: "number", min: 1, value: "1", style: "width:6rem" });
        const ackmode = h(
          "select",
          { id: "get-ackmode", "data-testid": "get-ackmode" },
          [
            ["ack_requeue_true", "Nack, requeue (keep the message)"],
            ["ack_requeue_false", "Ack (remove the message)"],
            ["reject_requeue_true", "Reject, requeue"],
            ["reject_requeue_false", "Reject, drop"],
          ].map(([value, label]) => h("option", { value }, label))
        );
        const getEncoding = h(
          "select",
          { id: "get-encoding", "data-testid": "get-encoding" },
          h("option", { value: "auto" }, "auto (string if UTF-8)"),
          h("option", { value: "base64" }, "base64")
        );
        const truncate = h("input", { id: "get-truncate", "data-testid": "get-truncate", type: "number", min: 1, value: "50000", style: "width:7rem" });
        const getSubmit = h("button", { type: "submit", class: "primary", id: "get-submit", "data-testid": "get-submit" }, "Get messages");
        const getForm = h(
          "form",
          {
            class: "inline",
            id: "get-form",
            "data-testid": "get-form",
            onsubmit: (event) => {
              event.preventDefault();
              runAction(getSubmit, getResult, async () => {
                const got = await api("POST", `/api/queues/${enc(vhost)}/${enc(name)}/get`, {
                  count: Number(countInput.value) || 1,
                  ackmode: ackmode.value,
                  encoding: getEncoding.value,
                  truncate: Number(truncate.value) || 50000,
                });
                renderMessages(messages, got || []);
                return got && got.length ? `Got ${got.length} message${got.length === 1 ? "" : "s"}.` : "The queue is empty.";
              });
            },
          },
          field("Messages", countInput),
          field("Ack mode", ackmode),
          field("Encoding", getEncoding),
          field("Truncate at (bytes)", truncate),
          getSubmit
        );

        const fields = publishFields("queue-publish");
        fields.routingKey.value = name;
        fields.routingKey.readOnly = true;
        const publishResult = h("p", { class: "result", id: "queue-publish-result", "data-testid": "queue-publish-result" });
        const publishSubmit = h("button", { type: "submit", class: "primary", id: "queue-publish-submit", "data-testid": "queue-publish-submit" }, "Publish message");
        const publishForm = h(
          "form",
          {
            class: "stack",
            id: "queue-publish-form",
            "data-testid": "queue-publish-form",
            onsubmit: (event) => {
              event.preventDefault();
              runAction(publishSubmit, null, async () => {
                publishOutcome(publishResult, await publish(vhost, "", fields.body()));
              }).catch(() => {});
            },
          },
          h("p", { class: "muted" }, "Published through the default exchange with the queue's name as routing key."),
          h("div", { class: "inline" }, field("Routing key", fields.routingKey), field("Delivery mode", fields.deliveryMode), field("Payload encoding", fields.encoding)),
          h("div", { class: "grid two" }, field("Headers", fields.headers), field("Properties", fields.properties)),
          field("Payload", fields.payload),
          h("div", null, publishSubmit)
        );

        append(root, [
          h(
            "div",
            { class: "page-head" },
            h("h1", null, h("a", { href: "#/queues" }, "Queues"), " / ", h("span", { "data-testid": "queue-detail-name" }, name), h("span", { class: "muted" }, ` on ${vhostLabel(vhost)}`)),
            h(
              "div",
              null,
              h("button", { type: "button", id: "queue-detail-purge", "data-testid": "queue-detail-purge", onclick: (e) => purgeQueue(e.currentTarget, vhost, name) }, "Purge"),
              " ",
              h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  id: "queue-detail-delete",
                  "data-testid": "queue-detail-delete",
                  onclick: (e) => deleteQueue(e.currentTarget, vhost, name, () => (location.hash = "#/queues")),
                },
                "Delete"
              )
            )
          ),
          h("div", { class: "grid two" }, card("Details", info), h("div", null, card("Consumers", consumersHolder), card("Bindings", bindingsHolder))),
          card("Get messages", getForm, getResult, messages),
          card("Publish message", publishForm, publishResult),
        ]);
      },
      async refresh() {
        let queue;
        try {
          queue = await get(`/api/queues/${enc(vhost)}/${enc(name)}`);
        } catch (error) {
          if (error.status === 404) {
            replace(info, h("dd", { class: "error", "data-testid": "queue-missing" }, `Queue ${name} does not exist (any more).`));
            return;
          }
          throw error;
        }
        const stats = queue.message_stats || {};
        const rows = [
          ["Type", queueType(queue), "type"],
          ["Features", badges(queue), "features"],
          ["State", queue.state || "running", "state"],
          ["Messages", fmtNum(queue.messages), "messages"],
          ["Ready", fmtNum(queue.messages_ready), "messages_ready"],
          ["Unacked", fmtNum(queue.messages_unacknowledged), "messages_unacknowledged"],
          ["Consumers", fmtNum(queue.consumers), "consumers"],
          ["Incoming", fmtRate(rate(stats, "publish")), "publish_rate"],
          ["Deliver / get", fmtRate(rate(stats, "deliver_get")), "deliver_rate"],
          ["Ack", fmtRate(rate(stats, "ack")), "ack_rate"],
          ["Arguments", Object.keys(queue.arguments || {}).length ? JSON.stringify(queue.arguments) : "–", "arguments"],
          ["Policy", queue.policy || "–", "policy"],
          ["Operator policy", queue.operator_policy || "–", "operator_policy"],
          ["Effective policy", Object.keys(queue.effective_policy_definition || {}).length ? JSON.stringify(queue.effective_policy_definition) : "–", "effective_policy_definition"],
        ];
        const stream = queue.stream;
        if (stream) {
          // A stream: offsets, size on disk and retention instead of a ready backlog.
          rows.splice(
            4,
            2,
            ["First offset", fmtNum(stream.first_offset), "first_offset"],
            ["Last offset", stream.last_offset < 0 ? "–" : fmtNum(stream.last_offset), "last_offset"],
            ["Committed offset", fmtNum(stream.committed_offset), "committed_offset"],
            ["Bytes on disk", fmtNum(stream.bytes_on_disk), "bytes_on_disk"],
            ["Segments", fmtNum(stream.segments), "segments"],
            ["Max length (bytes)", stream.max_length_bytes == null ? "–" : fmtNum(stream.max_length_bytes), "max_length_bytes"],
            ["Max age", stream.max_age || "–", "max_age"],
            ["Segment size (bytes)", fmtNum(stream.max_segment_size_bytes), "max_segment_size_bytes"],
            ["Readers", fmtNum(stream.readers), "readers"]
          );
        }
        replace(info, rows.map(([k, v, key]) => [h("dt", null, k), h("dd", { "data-testid": `queue-detail-${key}` }, v)]));

        let consumers = queue.consumer_details;
        if (!Array.isArray(consumers)) {
          consumers = ((await get(`/api/consumers/${enc(vhost)}`).catch(() => [])) || []).filter((c) => c.queue && c.queue.name === name);
        }
        replace(
          consumersHolder,
          dataTable(
            [
              { title: "Tag", field: "consumer_tag", cell: (c) => c.consumer_tag },
              { title: "Channel", field: "channel", cell: (c) => (c.channel_details && c.channel_details.name) || "–" },
              { title: "Ack", field: "ack_required", cell: (c) => (c.ack_required ? "manual" : "auto") },
              { title: "Prefetch", num: true, field: "prefetch_count", cell: (c) => fmtNum(c.prefetch_count) },
            ],
            consumers,
            { testid: "queue-consumers", rowTestid: "queue-consumer", rowId: (c) => c.consumer_tag, empty: "No consumers." }
          )
        );
        const bindings = ((await get(`/api/bindings/${enc(vhost)}`)) || []).filter((b) => b.destination_type === "queue" && b.destination === name);
        replace(
          bindingsHolder,
          dataTable(
            [
              { title: "From exchange", field: "source", cell: (b) => exchangeLabel(b.source) },
              { title: "Routing key", field: "routing_key", cell: (b) => h("code", null, b.routing_key) },
            ],
            bindings,
            { testid: "queue-bindings", rowTestid: "queue-binding", rowId: (b) => `${b.source}:${b.routing_key}`, empty: "No bindings." }
          )
        );
      },
    };
  }

  function renderMessages(container, messages) {
    replace(
      container,
      messages.map((m, i) =>
        h(
          "div",
          { class: "message", "data-testid": "message", "data-index": i },
          h(
            "dl",
            { class: "kv" },
            [
              ["Exchange", exchangeLabel(m.exchange || "")],
              ["Routing key", m.routing_key],
              ["Redelivered", m.redelivered ? "yes" : "no"],
              ["Left in queue", fmtNum(m.message_count)],
              ["Properties", JSON.stringify(m.properties || {})],
              ["Payload", `${fmtNum(m.payload_bytes)} bytes, encoding ${m.payload_encoding}`],
            ].map(([k, v]) => [h("dt", null, k), h("dd", null, v)])
          ),
          h("pre", { class: "payload", "data-testid": "message-payload" }, m.payload)
        )
      )
    );
  }

  function ExchangesPage() {
    let tableHolder;
    let count;
    let publishExchange;
    let publishVhost;
    let exchanges = [];

    function fillExchangeOptions() {
      const vhost = publishVhost.value;
      const names = exchanges.filter((x) => x.vhost === vhost && !x.internal).map((x) => x.name);
      if (!names.includes("")) names.unshift("");
      const current = publishExchange.value;
      const signature = names.join("\u0000");
      if (publishExchange.dataset.signature === signature) return;
      publishExchange.dataset.signature = signature;
      replace(publishExchange, names.map((n) => h("option", { value: n, selected: n === current }, exchangeLabel(n))));
    }

    return {
      title: "Exchanges",
      nav: "exchanges",
      mount(root) {
        tableHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        count = h("span", { class: "muted", "data-testid": "exchanges-count" });

        const declareResult = h("p", { class: "result", id: "declare-exchange-result", "data-testid": "declare-exchange-result" });
        const name = h("input", { id: "declare-exchange-name", "data-testid": "declare-exchange-name", required: true, placeholder: "events" });
        const type = h(
          "select",
          { id: "declare-exchange-type", "data-testid": "declare-exchange-type" },
          ["direct", "fanout", "topic", "headers"].map((t) => h("option", { value: t }, t))
        );
        const args = h("textarea", { id: "declare-exchange-arguments", "data-testid": "declare-exchange-arguments", rows: 2, placeholder: "alternate-exchange=unrouted" });
        const vhost = vhostSelect("declare-exchange-vhost");
        const declareSubmit = h("button", { type: "submit", class: "primary", id: "declare-exchange-submit", "data-testid": "declare-exchange-submit" }, "Add exchange");
        const declareForm = h(
          "form",
          {
            class: "inline",
            id: "declare-exchange-form",
            "data-testid": "declare-exchange-form",
            onsubmit: (event) => {
              event.preventDefault();
              runAction(declareSubmit, declareResult, async () => {
                const exchangeName = name.value.trim();
                await api("PUT", `/api/exchanges/${enc(vhost.value)}/${enc(exchangeName)}`, {
                  type: type.value,
                  durable: $("#declare-exchange-durable").checked,
                  auto_delete: $("#declare-exchange-auto-delete").checked,
                  internal: $("#declare-exchange-internal").checked,
                  arguments: parseKeyValues(args.value, "arguments"),
                });
                name.value = "";
                return `Exchange ${exchangeName} declared.`;
              });
            },
          },
          field("Virtual host", vhost),
          field("Name", name),
          field("Type", type),
          check("Durable", "declare-exchange-durable", true),
          check("Auto-delete", "declare-exchange-auto-delete", false),
          check("Internal", "declare-exchange-internal", false),
          field("Arguments (key=value per line)", args),
          declareSubmit
        );

        const fields = publishFields("publish");
        publishVhost = vhostSelect("publish-vhost");
        publishExchange = h("select", { id: "publish-exchange", "data-testid": "publish-exchange" }, h("option", { value: "" }, DEFAULT_EXCHANGE_LABEL));
        publishVhost.addEventListener("change", fillExchangeOptions);
        const publishResult = h("p", { class: "result", id: "publish-result", "data-testid": "publish-result" });
        const publishSubmit = h("button", { type: "submit", class: "primary", id: "publish-submit", "data-testid": "publish-submit" }, "Publish message");
        const publishForm = h(
          "form",
          {
            class: "stack",
            id: "publish-form",
            "data-testid": "publish-form",
            onsubmit: (event) => {
              event.preventDefault();
              runAction(publishSubmit, null, async () => {
                publishOutcome(publishResult, await publish(publishVhost.value, publishExchange.value, fields.body()));
              }).catch(() => {});
            },
          },
          h(
            "div",
            { class: "inline" },
            field("Virtual host", publishVhost),
            field("Exchange", publishExchange),
            field("Routing key", fields.routingKey),
            field("Delivery mode", fields.deliveryMode),
            field("Payload encoding", fields.encoding)
          ),
          h("div", { class: "grid two" }, field("Headers", fields.headers), field("Properties", fields.properties)),
          field("Payload", fields.payload),
          h("div", null, publishSubmit)
        );
        append(root, [
          h("div", { class: "page-head" }, h("h1", null, "Exchanges ", count)),
          card(null, tableHolder),
          h("div", { class: "grid two" }, card("Publish a message", h("div", { id: "publish-card" }, publishForm, publishResult)), card("Add an exchange", declareForm, declareResult)),
        ]);
      },
      async refresh() {
        exchanges = (await get(listPath("exchanges"))) || [];
        exchanges.sort((a, b) => a.vhost.localeCompare(b.vhost) || a.name.localeCompare(b.name));
        count.textContent = `(${exchanges.length})`;
        fillExchangeOptions();
        const builtIn = (x) => x.name === "" || x.name.startsWith("amq.");
        const columns = [
          { title: "Name", field: "name", cell: (x) => exchangeLabel(x.name) },
          state.vhost ? null : { title: "Vhost", field: "vhost", cell: (x) => vhostLabel(x.vhost) },
          { title: "Type", field: "type", cell: (x) => x.type },
          { title: "Features", field: "features", cell: (x) => badges(x) },
          { title: "In", num: true, field: "publish_in_rate", cell: (x) => fmtRate(rate(x.message_stats, "publish_in")) },
          { title: "Out", num: true, field: "publish_out_rate", cell: (x) => fmtRate(rate(x.message_stats, "publish_out")) },
          {
            title: "",
            class: "actions",
            field: "actions",
            cell: (x) => [
              x.internal
                ? null
                : h(
                    "button",
                    {
                      type: "button",
                      class: "small",
                      "data-testid": `exchange-publish-${x.name || DEFAULT_EXCHANGE_IN_PATH}`,
                      onclick: () => {
                        publishVhost.value = x.vhost;
                        fillExchangeOptions();
                        publishExchange.value = x.name;
                        $("#publish-routing-key").focus();
                        $("#publish-card").scrollIntoView({ behavior: "smooth", block: "center" });
                      },
                    },
                    "Publish…"
                  ),
              " ",
              builtIn(x)
                ? null
                : h(
                    "button",
                    {
                      type: "button",
                      class: "small danger",
                      "data-testid": `exchange-delete-${x.name}`,
                      onclick: (e) => {
                        if (!confirmAction(`Delete exchange "${x.name}" and its bindings?`)) return;
                        runAction(e.currentTarget, null, async () => {
                          await api("DELETE", `/api/exchanges/${enc(x.vhost)}/${enc(x.name)}`);
                          return `Exchange ${x.name} deleted.`;
                        });
                      },
                    },
                    "Delete"
                  ),
            ],
          },
        ].filter(Boolean);
        replace(
          tableHolder,
          dataTable(columns, exchanges, { testid: "exchanges-table", rowTestid: "exchange-row", rowId: (x) => x.name || DEFAULT_EXCHANGE_IN_PATH })
        );
      },
    };
  }

  function BindingsPage() {
    let tableHolder;
    return {
      title: "Bindings",
      nav: "bindings",
      mount(root) {
        tableHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        const result = h("p", { class: "result", id: "bind-result", "data-testid": "bind-result" });
        const vhost = vhostSelect("bind-vhost");
        const source = h("input", { id: "bind-source", "data-testid": "bind-source", required: true, placeholder: "amq.topic" });
        const destinationType = h(
          "select",
          { id: "bind-destination-type", "data-testid": "bind-destination-type" },
          h("option", { value: "q" }, "queue"),
          h("option", { value: "e" }, "exchange")
        );
        const destination = h("input", { id: "bind-destination", "data-testid": "bind-destination", required: true, placeholder: "orders" });
        const routingKey = h("input", { id: "bind-routing-key", "data-testid": "bind-routing-key", placeholder: "orders.#" });
        const args = h("textarea", { id: "bind-arguments", "data-testid": "bind-arguments", rows: 1, placeholder: "x-match=all" });
        const submit = h("button", { type: "submit", class: "primary", id: "bind-submit", "data-testid": "bind-submit" }, "Bind");
        const form = h(
          "form",
          {
            class: "inline",
            id: "bind-form",
            "data-testid": "bind-form",
            onsubmit: (event) => {
              event.preventDefault();
              runAction(submit, result, async () => {
                await api("POST", `/api/bindings/${enc(vhost.value)}/e/${enc(source.value.trim())}/${destinationType.value}/${enc(destination.value.trim())}`, {
                  routing_key: routingKey.value,
                  arguments: parseKeyValues(args.value, "arguments"),
                });
                return `Bound ${destination.value.trim()} to ${source.value.trim()}.`;
              });
            },
          },
          field("Virtual host", vhost),
          field("From exchange", source),
          field("To", destinationType),
          field("Name", destination),
          field("Routing key", routingKey),
          field("Arguments", args),
          submit
        );
        append(root, [h("div", { class: "page-head" }, h("h1", null, "Bindings")), card(null, tableHolder), card("Add a binding", form, result)]);
      },
      async refresh() {
        const bindings = (await get(listPath("bindings"))) || [];
        const columns = [
          state.vhost ? null : { title: "Vhost", field: "vhost", cell: (b) => vhostLabel(b.vhost) },
          { title: "Source", field: "source", cell: (b) => exchangeLabel(b.source) },
          {
            title: "Destination",
            field: "destination",
            cell: (b) => (b.destination_type === "queue" ? h("a", { href: queueRoute(b.vhost, b.destination) }, b.destination) : b.destination),
          },
          { title: "Type", field: "destination_type", cell: (b) => b.destination_type },
          { title: "Routing key", field: "routing_key", cell: (b) => h("code", null, b.routing_key) },
          { title: "Arguments", field: "arguments", cell: (b) => (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : "") },
          {
            title: "",
            class: "actions",
            field: "actions",
            cell: (b) =>
              b.source === ""
                ? null
                : h(
                    "button",
                    {
                      type: "button",
                      class: "small danger",
                      "data-testid": "unbind",
                      onclick: (e) => {
                        const kind = b.destination_type === "queue" ? "q" : "e";
                        const key = b.properties_key ?? enc(b.routing_key || "~");
                        runAction(e.currentTarget, null, async () => {
                          await api("DELETE", `/api/bindings/${enc(b.vhost)}/e/${enc(b.source)}/${kind}/${enc(b.destination)}/${enc(key)}`);
                          return `Unbound ${b.destination} from ${b.source}.`;
                        });
                      },
                    },
                    "Unbind"
                  ),
          },
        ].filter(Boolean);
        replace(
          tableHolder,
          dataTable(columns, bindings, {
            testid: "bindings-table",
            rowTestid: "binding-row",
            rowId: (b) => `${b.source}:${b.destination}:${b.routing_key}`,
          })
        );
      },
    };
  }

  // Policies and operator policies: one table each, one form for both (kind select).
  function PoliciesPage() {
    let policiesHolder;
    let operatorHolder;
    const kinds = { policy: "policies", operator: "operator-policies" };
    function policyTable(list, kind, testid) {
      const columns = [
        state.vhost ? null : { title: "Vhost", field: "vhost", cell: (p) => vhostLabel(p.vhost) },
        { title: "Name", field: "name", cell: (p) => p.name },
        { title: "Pattern", field: "pattern", cell: (p) => h("code", null, p.pattern) },
        { title: "Apply to", field: "apply-to", cell: (p) => p["apply-to"] },
        {
          title: "Definition",
          field: "definition",
          cell: (p) => Object.keys(p.definition || {}).map((k) => h("span", { class: "badge", title: `${k}: ${JSON.stringify(p.definition[k])}` }, `${k}: ${JSON.stringify(p.definition[k])}`)),
        },
        { title: "Priority", num: true, field: "priority", cell: (p) => fmtNum(p.priority) },
        {
          title: "",
          class: "actions",
          field: "actions",
          cell: (p) =>
            h(
              "button",
              {
                type: "button",
                class: "small danger",
                "data-testid": "delete-policy",
                onclick: (e) => {
                  if (!confirmAction(`Clear ${kind === "operator" ? "operator policy" : "policy"} ${p.name}?`)) return;
                  runAction(e.currentTarget, null, async () => {
                    await api("DELETE", `/api/${kinds[kind]}/${enc(p.vhost)}/${enc(p.name)}`);
                    return `Cleared ${p.name}.`;
                  });
                },
              },
              "Clear"
            ),
        },
      ].filter(Boolean);
      return dataTable(columns, list, {
        testid,
        rowTestid: kind === "operator" ? "operator-policy-row" : "policy-row",
        rowId: (p) => `${p.vhost}:${p.name}`,
        empty: kind === "operator" ? "No operator policies." : "No policies.",
      });
    }
    return {
      title: "Policies",
      nav: "policies",
      mount(root) {
        policiesHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        operatorHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        const result = h("p", { class: "result", id: "policy-result", "data-testid": "policy-result" });
        const kind = h(
          "select",
          { id: "policy-kind", "data-testid": "policy-kind" },
          h("option", { value: "policy" }, "policy"),
          h("option", { value: "operator" }, "operator policy")
        );
        const vhost = vhostSelect("policy-vhost");
        const name = h("input", { id: "policy-name", "data-testid": "policy-name", required: true, placeholder: "ttl" });
        const pattern = h("input", { id: "policy-pattern", "data-testid": "policy-pattern", required: true, placeholder: "^orders\\." });
        const applyTo = h(
          "select",
          { id: "policy-apply-to", "data-testid": "policy-apply-to" },
          ["all", "queues", "exchanges"].map((v) => h("option", { value: v }, v))
        );
        const priority = h("input", { id: "policy-priority", "data-testid": "policy-priority", type: "number", value: "0", step: "1" });
        const definition = h("textarea", {
          id: "policy-definition",
          "data-testid": "policy-definition",
          rows: 2,
          required: true,
          placeholder: "max-length=1000\nmessage-ttl=60000",
        });
        const submit = h("button", { type: "submit", class: "primary", id: "policy-submit", "data-testid": "policy-submit" }, "Set policy");
        const form = h(
          "form",
          {
            class: "inline",
            id: "policy-form",
            "data-testid": "policy-form",
            onsubmit: (event) => {
              event.preventDefault();
              runAction(submit, result, async () => {
                const body = {
                  pattern: pattern.value,
                  "apply-to": applyTo.value,
                  priority: Number.parseInt(priority.value || "0", 10),
                  definition: parseKeyValues(definition.value, "definition"),
                };
                await api("PUT", `/api/${kinds[kind.value]}/${enc(vhost.value)}/${enc(name.value.trim())}`, body);
                return `Set ${kind.value === "operator" ? "operator policy" : "policy"} ${name.value.trim()}.`;
              });
            },
          },
          field("Kind", kind),
          field("Virtual host", vhost),
          field("Name", name),
          field("Pattern", pattern),
          field("Apply to", applyTo),
          field("Priority", priority),
          field("Definition", definition),
          submit
        );
        append(root, [
          h("div", { class: "page-head" }, h("h1", null, "Policies")),
          card("Policies", policiesHolder),
          card("Operator policies", operatorHolder),
          card(
            "Set a policy",
            h(
              "p",
              { class: "muted" },
              "Keys: message-ttl, expires, max-length, max-length-bytes, overflow, dead-letter-exchange, dead-letter-routing-key, delivery-limit, alternate-exchange (exchanges); queue-mode is accepted without effect. Operator policies take the numeric limits only, and the lower value wins."
            ),
            form,
            result
          ),
        ]);
      },
      async refresh() {
        const policies = (await get(listPath("policies"))) || [];
        replace(policiesHolder, policyTable(policies, "policy", "policies-table"));
        let operator;
        try {
          operator = policyTable((await get(listPath("operator-policies"))) || [], "operator", "operator-policies-table");
        } catch (error) {
          if (error.status === 401) throw error;
          operator = h("p", { class: "muted" }, `Operator policies are not visible: ${error.message}`);
        }
        replace(operatorHolder, operator);
      },
    };
  }

  // Bytes per second when the broker reports a rate, else the running total.
  function traffic(connection, counter) {
    const perSecond = rate(connection, counter);
    if (perSecond !== undefined) return `${fmtBytes(perSecond)}/s`;
    return typeof connection[counter] === "number" ? h("span", { title: "total since connected" }, fmtBytes(connection[counter])) : "–";
  }

  // The protocol family of a connection ("MQTT 5.0" -> "mqtt"), for the filter.
  function protocolFamily(c) {
    const text = (c.protocol || "AMQP 0-9-1").toLowerCase();
    return ["amqp", "stomp", "mqtt", "inproc"].find((f) => text.includes(f)) || text;
  }

  function ConnectionsPage() {
    let tableHolder;
    let count;
    let protocolFilter;
    return {
      title: "Connections",
      nav: "connections",
      mount(root) {
        tableHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        count = h("span", { class: "muted", "data-testid": "connections-count" });
        // Every protocol's connections are listed; the filter narrows to one family.
        protocolFilter = h(
          "select",
          { id: "connections-protocol", "data-testid": "connections-protocol", onchange: () => refreshNow() },
          [
            ["", "All protocols"],
            ["amqp", "AMQP"],
            ["stomp", "STOMP"],
            ["mqtt", "MQTT"],
            ["inproc", "In-process"],
          ].map(([value, label]) => h("option", { value }, label))
        );
        append(root, [
          h("div", { class: "page-head" }, h("h1", null, "Connections ", count), field("Protocol ", protocolFilter)),
          card(null, tableHolder),
        ]);
      },
      async refresh() {
        let connections = (await get("/api/connections")) || [];
        if (state.vhost) connections = connections.filter((c) => c.vhost === state.vhost);
        if (protocolFilter.value) connections = connections.filter((c) => protocolFamily(c) === protocolFilter.value);
        count.textContent = `(${connections.length})`;
        const client = (c) => {
          if (c.client_id) return c.client_id; // MQTT: the client identifier
          const props = c.client_properties || {};
          return [props.product, props.version].filter(Boolean).join(" ") || "–";
        };
        const columns = [
          { title: "Name", field: "name", cell: (c) => h("span", { class: "mono" }, c.name) },
          { title: "User", field: "user", cell: (c) => c.user },
          { title: "Vhost", field: "vhost", cell: (c) => vhostLabel(c.vhost) },
          { title: "Client", field: "client", cell: client },
          { title: "Protocol", field: "protocol", cell: (c) => c.protocol || "AMQP 0-9-1" },
          { title: "Channels", num: true, field: "channels", cell: (c) => fmtNum(c.channels) },
          { title: "State", field: "state", cell: (c) => h("span", { class: `state-${c.state}` }, c.state || "–") },
          { title: "From client", num: true, field: "recv", cell: (c) => traffic(c, "recv_oct") },
          { title: "To client", num: true, field: "send", cell: (c) => traffic(c, "send_oct") },
          {
            title: "",
            class: "actions",
            field: "actions",
            cell: (c) =>
              h(
                "button",
                {
                  type: "button",
                  class: "small danger",
                  "data-testid": "connection-close",
                  onclick: (e) => {
                    if (!confirmAction(`Close connection ${c.name}?`)) return;
                    runAction(e.currentTarget, null, async () => {
                      await api("DELETE", `/api/connections/${enc(c.name)}`, undefined, { "X-Reason": "Closed via the Baedal console" });
                      return `Connection ${c.name} closed.`;
                    });
                  },
                },
                "Close"
              ),
          },
        ];
        replace(
          tableHolder,
          dataTable(columns, connections, { testid: "connections-table", rowTestid: "connection-row", rowId: (c) => c.name, empty: "No client is connected." })
        );
      },
    };
  }

  function ChannelsPage() {
    let channelsHolder;
    let consumersHolder;
    return {
      title: "Channels",
      nav: "channels",
      mount(root) {
        channelsHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        consumersHolder = h("div");
        append(root, [h("div", { class: "page-head" }, h("h1", null, "Channels")), card(null, channelsHolder), card("Consumers", consumersHolder)]);
      },
      async refresh() {
        let channels = (await get("/api/channels")) || [];
        if (state.vhost) channels = channels.filter((c) => c.vhost === state.vhost);
        const mode = (c) => [c.confirm ? "confirm" : null, c.transactional ? "tx" : null].filter(Boolean).join(", ") || "–";
        replace(
          channelsHolder,
          dataTable(
            [
              { title: "Channel", field: "name", cell: (c) => h("span", { class: "mono" }, c.name) },
              { title: "User", field: "user", cell: (c) => c.user },
              { title: "Vhost", field: "vhost", cell: (c) => vhostLabel(c.vhost) },
              { title: "Mode", field: "mode", cell: mode },
              { title: "Consumers", num: true, field: "consumer_count", cell: (c) => fmtNum(c.consumer_count) },
              { title: "Prefetch", num: true, field: "prefetch_count", cell: (c) => fmtNum(c.prefetch_count) },
              { title: "Unacked", num: true, field: "messages_unacknowledged", cell: (c) => fmtNum(c.messages_unacknowledged) },
              { title: "Publish", num: true, field: "publish_rate", cell: (c) => fmtRate(rate(c.message_stats, "publish")) },
              { title: "Deliver / get", num: true, field: "deliver_rate", cell: (c) => fmtRate(rate(c.message_stats, "deliver_get")) },
              { title: "State", field: "state", cell: (c) => h("span", { class: `state-${c.state}` }, c.state || "–") },
            ],
            channels,
            { testid: "channels-table", rowTestid: "channel-row", rowId: (c) => c.name, empty: "No open channels." }
          )
        );
        const consumers = (await get(listPath("consumers"))) || [];
        replace(
          consumersHolder,
          dataTable(
            [
              { title: "Queue", field: "queue", cell: (c) => (c.queue ? h("a", { href: queueRoute(c.queue.vhost, c.queue.name) }, c.queue.name) : "–") },
              { title: "Tag", field: "consumer_tag", cell: (c) => h("span", { class: "mono" }, c.consumer_tag) },
              { title: "Channel", field: "channel", cell: (c) => (c.channel_details && c.channel_details.name) || "–" },
              { title: "Ack", field: "ack_required", cell: (c) => (c.ack_required ? "manual" : "auto") },
              { title: "Prefetch", num: true, field: "prefetch_count", cell: (c) => fmtNum(c.prefetch_count) },
            ],
            consumers,
            { testid: "consumers-table", rowTestid: "consumer-row", rowId: (c) => c.consumer_tag, empty: "No consumers." }
          )
        );
      },
    };
  }

  // Scheduled messages (AMQ_SCHEDULED_* headers and x-delay on x-delayed-message
  // exchanges): /api/scheduled, in due order, a page at a time; Cancel deletes a job.
  function ScheduledPage() {
    const PAGE_SIZE = 50;
    let tableHolder;
    let count;
    let pager;
    let page = 1;
    return {
      title: "Scheduled",
      nav: "scheduled",
      mount(root) {
        tableHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        count = h("span", { class: "muted", "data-testid": "scheduled-count" });
        pager = h("div", { class: "pager", "data-testid": "scheduled-pager" });
        append(root, [h("div", { class: "page-head" }, h("h1", null, "Scheduled messages ", count)), card(null, tableHolder), pager]);
      },
      async refresh() {
        const base = state.vhost ? `/api/scheduled/${enc(state.vhost)}` : "/api/scheduled";
        let answer = await get(`${base}?page=${page}&page_size=${PAGE_SIZE}`);
        if (answer && page > answer.page_count) {
          page = answer.page_count;
          answer = await get(`${base}?page=${page}&page_size=${PAGE_SIZE}`);
        }
        const jobs = (answer && answer.items) || [];
        count.textContent = `(${answer ? answer.total_count : 0})`;
        const repeatState = (j) => {
          const parts = [];
          if (j.cron) parts.push(`cron ${j.cron}`);
          if (j.repeat < 0) parts.push(`every ${fmtNum(j.period)} ms until cancelled`);
          else if (j.repeat > 0) parts.push(`${j.repeat_left} of ${j.repeat} repeats left, every ${fmtNum(j.period)} ms`);
          return parts.join(", ") || "once";
        };
        const columns = [
          { title: "Due", field: "due", cell: (j) => new Date(j.due).toLocaleString() },
          { title: "Vhost", field: "vhost", cell: (j) => vhostLabel(j.vhost) },
          { title: "Exchange", field: "exchange", cell: (j) => exchangeLabel(j.exchange) },
          { title: "Routing key", field: "routing_key", cell: (j) => h("span", { class: "mono" }, j.routing_key) },
          { title: "Size", num: true, field: "size", cell: (j) => fmtNum(j.size) },
          { title: "Repeat", field: "repeat", cell: repeatState },
          { title: "Id", field: "id", cell: (j) => h("span", { class: "mono" }, j.id) },
          {
            title: "",
            class: "actions",
            field: "actions",
            cell: (j) =>
              h(
                "button",
                {
                  type: "button",
                  class: "small danger",
                  "data-testid": "scheduled-cancel",
                  onclick: (e) => {
                    if (!confirmAction(`Cancel scheduled message ${j.id}?`)) return;
                    runAction(e.currentTarget, null, async () => {
                      await api("DELETE", `/api/scheduled/${enc(j.vhost)}/${enc(j.id)}`);
                      return `Scheduled message ${j.id} cancelled.`;
                    });
                  },
                },
                "Cancel"
              ),
          },
        ];
        replace(
          tableHolder,
          dataTable(columns, jobs, { testid: "scheduled-table", rowTestid: "scheduled-row", rowId: (j) => j.id, empty: "No scheduled messages." })
        );
        const pages = answer ? answer.page_count : 1;
        const go = (to) => {
          page = to;
          refreshNow();
        };
        replace(pager, [
          h("button", { type: "button", class: "small", "data-testid": "scheduled-prev", disabled: page <= 1, onclick: () => go(page - 1) }, "‹ Prev"),
          h("span", { class: "muted" }, ` page ${page} of ${pages} `),
          h("button", { type: "button", class: "small", "data-testid": "scheduled-next", disabled: page >= pages, onclick: () => go(page + 1) }, "Next ›"),
        ]);
      },
    };
  }

  // MQTT: sessions (connected or not, with the core queue each subscription maps to)
  // from /api/mqtt/sessions, and retained messages from /api/mqtt/retained a page at a
  // time; a disconnected session and a retained message can be deleted.
  function MqttPage() {
    const PAGE_SIZE = 50;
    let sessionsHolder;
    let retainedHolder;
    let sessionCount;
    let retainedCount;
    let pager;
    let page = 1;
    return {
      title: "MQTT",
      nav: "mqtt",
      mount(root) {
        sessionsHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        retainedHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        sessionCount = h("span", { class: "muted", "data-testid": "mqtt-session-count" });
        retainedCount = h("span", { class: "muted", "data-testid": "mqtt-retained-count" });
        pager = h("div", { class: "pager", "data-testid": "mqtt-retained-pager" });
        append(root, [
          h("div", { class: "page-head" }, h("h1", null, "MQTT")),
          card(null, h("h2", null, "Sessions ", sessionCount), sessionsHolder),
          card(null, h("h2", null, "Retained messages ", retainedCount), retainedHolder, pager),
        ]);
      },
      async refresh() {
        const sessions = (await get("/api/mqtt/sessions").catch(() => null)) || [];
        let answer = await get(`/api/mqtt/retained?page=${page}&page_size=${PAGE_SIZE}`).catch(() => null);
        if (answer && page > answer.page_count) {
          page = answer.page_count;
          answer = await get(`/api/mqtt/retained?page=${page}&page_size=${PAGE_SIZE}`);
        }
        sessionCount.textContent = `(${sessions.length})`;
        const deleteButton = (testid, what, path, done) =>
          h(
            "button",
            {
              type: "button",
              class: "small danger",
              "data-testid": testid,
              onclick: (e) => {
                if (!confirmAction(`Delete ${what}?`)) return;
                runAction(e.currentTarget, null, async () => {
                  await api("DELETE", path);
                  return done;
                });
              },
            },
            "Delete"
          );
        const subscriptions = (s) =>
          s.subscriptions.length
            ? h(
                "ul",
                { class: "plain" },
                s.subscriptions.map((sub) => h("li", { class: "mono" }, `${sub.filter} (QoS ${sub.qos}) → ${sub.queue}`))
              )
            : "–";
        replace(
          sessionsHolder,
          dataTable(
            [
              { title: "Client id", field: "client_id", cell: (s) => h("span", { class: "mono" }, s.client_id) },
              { title: "Connected", field: "connected", cell: (s) => (s.connected ? s.protocol || "yes" : "no") },
              { title: "Session", field: "persistent", cell: (s) => (s.persistent ? "persistent" : "clean") },
              { title: "Expiry", field: "expiry", cell: (s) => (s.persistent && s.expiry === null ? "never" : `${fmtNum(s.expiry || 0)} s`) },
              { title: "Subscriptions", field: "subscriptions", cell: subscriptions },
              { title: "In flight", num: true, field: "inflight", cell: (s) => fmtNum(s.inflight || 0) },
              {
                title: "",
                class: "actions",
                field: "actions",
                cell: (s) =>
                  s.connected
                    ? ""
                    : deleteButton("mqtt-session-delete", `MQTT session ${s.client_id}`, `/api/mqtt/sessions/${enc(s.client_id)}`, `MQTT session ${s.client_id} deleted.`),
              },
            ],
            sessions,
            { testid: "mqtt-sessions-table", rowTestid: "mqtt-session-row", rowId: (s) => s.client_id, empty: "No MQTT session." }
          )
        );
        const retained = (answer && answer.items) || [];
        retainedCount.textContent = `(${answer ? answer.total_count : 0})`;
        replace(
          retainedHolder,
          dataTable(
            [
              { title: "Topic", field: "topic", cell: (m) => h("span", { class: "mono" }, m.topic) },
              { title: "Size", num: true, field: "size", cell: (m) => fmtNum(m.size) },
              { title: "QoS", num: true, field: "qos", cell: (m) => String(m.qos) },
              { title: "Stored", field: "stored_at", cell: (m) => new Date(m.stored_at).toLocaleString() },
              {
                title: "",
                class: "actions",
                field: "actions",
                cell: (m) => deleteButton("mqtt-retained-delete", `the retained message on ${m.topic}`, `/api/mqtt/retained/${enc(m.topic)}`, `Retained message on ${m.topic} deleted.`),
              },
            ],
            retained,
            { testid: "mqtt-retained-table", rowTestid: "mqtt-retained-row", rowId: (m) => m.topic, empty: "No retained message." }
          )
        );
        const pages = answer ? answer.page_count : 1;
        const go = (to) => {
          page = to;
          refreshNow();
        };
        replace(pager, [
          h("button", { type: "button", class: "small", "data-testid": "mqtt-retained-prev", disabled: page <= 1, onclick: () => go(page - 1) }, "‹ Prev"),
          h("span", { class: "muted" }, ` page ${page} of ${pages} `),
          h("button", { type: "button", class: "small", "data-testid": "mqtt-retained-next", disabled: page >= pages, onclick: () => go(page + 1) }, "Next ›"),
        ]);
      },
    };
  }

  function KafkaPage() {
    let topicsHolder;
    let groupsHolder;
    return {
      title: "Kafka",
      nav: "kafka",
      mount(root) {
        topicsHolder = h("div", null, h("p", { class: "muted" }, "Loading…"));
        groupsHolder = h("div");
        append(root, [h("div", { class: "page-head" }, h("h1", null, "Kafka")), card("Topic partitions", topicsHolder), card("Consumer groups", groupsHolder)]);
      },
      async refresh() {
        const topics = (await get("/api/kafka/topics")) || [];
        const partitions = [];
        for (const t of topics) for (const p of t.partitions) partitions.push(Object.assign({ topic: t.name, vhost: t.vhost }, p));
        replace(
          topicsHolder,
          dataTable(
            [
              { title: "Topic", field: "topic", cell: (p) => p.topic },
              { title: "Partition", num: true, field: "partition", cell: (p) => fmtNum(p.partition) },
              { title: "Stream", field: "stream", cell: (p) => h("a", { href: queueRoute(p.vhost, p.stream) }, p.stream) },
              { title: "First offset", num: true, field: "first_offset", cell: (p) => fmtNum(p.first_offset) },
              { title: "High watermark", num: true, field: "high_watermark", cell: (p) => fmtNum(p.high_watermark) },
              { title: "On disk", num: true, field: "bytes_on_disk", cell: (p) => fmtBytes(p.bytes_on_disk) },
              { title: "Records in", num: true, field: "records_in", cell: (p) => fmtNum(p.records_in) },
              { title: "Bytes in", num: true, field: "bytes_in", cell: (p) => fmtBytes(p.bytes_in) },
              { title: "Bytes out", num: true, field: "bytes_out", cell: (p) => fmtBytes(p.bytes_out) },
            ],
            partitions,
            { testid: "kafka-partitions-table", rowTestid: "kafka-partition-row", rowId: (p) => `${p.topic}-${p.partition}`, empty: "No Kafka topics." }
          )
        );
        const groups = (await get("/api/kafka/groups")) || [];
        const rows = [];
        for (const g of groups) {
          const owner = {};
          for (const m of g.members) for (const a of m.assignment) for (const n of a.partitions) owner[`${a.topic}/${n}`] = m.client_id || m.member_id;
          if (!g.offsets.length) rows.push({ group: g.group_id, state: g.state, members: g.members.length, topic: "–", partition: null, committed: null, lag: null, member: "–" });
          for (const o of g.offsets) rows.push({ group: g.group_id, state: g.state, members: g.members.length, topic: o.topic, partition: o.partition, committed: o.committed_offset, lag: o.lag, member: owner[`${o.topic}/${o.partition}`] || "–" });
        }
        replace(
          groupsHolder,
          dataTable(
            [
              { title: "Group", field: "group", cell: (r) => r.group },
              { title: "State", field: "state", cell: (r) => r.state },
              { title: "Members", num: true, field: "members", cell: (r) => fmtNum(r.members) },
              { title: "Topic", field: "topic", cell: (r) => r.topic },
              { title: "Partition", num: true, field: "partition", cell: (r) => (r.partition === null ? "–" : fmtNum(r.partition)) },
              { title: "Assigned to", field: "member", cell: (r) => h("span", { class: "mono" }, r.member) },
              { title: "Committed", num: true, field: "committed", cell: (r) => (r.committed === null ? "–" : fmtNum(r.committed)) },
              { title: "Lag", num: true, field: "lag", cell: (r) => (r.lag === null ? "–" : fmtNum(r.lag)) },
            ],
            rows,
            { testid: "kafka-groups-table", rowTestid: "kafka-group-row", rowId: (r) => `${r.group}-${r.topic}-${r.partition}`, empty: "No consumer groups." }
          )
        );
      },
    };
  }

  // --- routing and polling ---------------------------------------------------------

  const ROUTES = [
    [/^#\/overview$/, () => OverviewPage()],
    [/^#\/queues$/, () => QueuesPage()],
    [/^#\/queues\/([^/]+)\/([^/]+)$/, (vhost, name) => QueueDetailPage(decodeURIComponent(vhost), decodeURIComponent(name))],
    [/^#\/exchanges$/, () => ExchangesPage()],
    [/^#\/bindings$/, () => BindingsPage()],
    [/^#\/policies$/, () => PoliciesPage()],
    [/^#\/connections$/, () => ConnectionsPage()],
    [/^#\/channels$/, () => ChannelsPage()],
    [/^#\/scheduled$/, () => ScheduledPage()],
    [/^#\/mqtt$/, () => MqttPage()],
    [/^#\/kafka$/, () => KafkaPage()],
  ];

  function route() {
    if (!state.auth) return;
    const hash = location.hash || "#/overview";
    let page = null;
    for (const [pattern, make] of ROUTES) {
      const match = pattern.exec(hash);
      if (match) {
        page = make(...match.slice(1));
        break;
      }
    }
    if (!page) {
      location.replace("#/overview");
      return;
    }
    if (state.page && state.page.destroy) state.page.destroy();
    state.page = page;
    const view = $("#view");
    view.replaceChildren();
    view.dataset.page = page.nav;
    page.mount(view);
    document.title = `${page.title} · Baedal`;
    for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === page.nav);
    refreshNow();
  }

  let refreshing = null;
  async function refreshNow() {
    clearTimeout(state.timer);
    if (refreshing) await refreshing.catch(() => {});
    refreshing = tick();
    try {
      await refreshing;
    } finally {
      refreshing = null;
      if (state.auth) state.timer = setTimeout(refreshNow, POLL_MS);
    }
  }

  async function tick() {
    const indicator = $("#refresh-state");
    const page = state.page;
    try {
      const overview = await get("/api/overview");
      sample(overview);
      if (page && page === state.page) await page.refresh();
      indicator.textContent = `updated ${new Date().toLocaleTimeString()}`;
      indicator.classList.remove("error");
      $("#view").dataset.loaded = "true";
    } catch (error) {
      if (error.status === 401) return;
      indicator.textContent = `refresh failed: ${error.message}`;
      indicator.classList.add("error");
    }
  }

  async function loadVhosts() {
    try {
      const vhosts = (await get("/api/vhosts")) || [];
      state.vhosts = vhosts.map((v) => v.name).sort();
    } catch (error) {
      if (error.status === 401) throw error;
      state.vhosts = ["/"];
    }
    const select = $("#vhost-filter");
    if (state.vhost && !state.vhosts.includes(state.vhost)) state.vhost = "";
    replace(select, h("option", { value: "" }, "all"), state.vhosts.map((v) => h("option", { value: v, selected: v === state.vhost }, vhostLabel(v))));
  }

  // --- login ----------------------------------------------------------------------------

  function showLogin(message) {
    clearTimeout(state.timer);
    state.auth = null;
    sessionStorage.removeItem(AUTH_KEY);
    if (state.page && state.page.destroy) state.page.destroy();
    state.page = null;
    $("#topbar").hidden = true;
    $("#view").replaceChildren();
    $("#login").hidden = false;
    const error = $("#login-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("#login-user").value = $("#login-user").value || state.user || "guest";
    $("#login-password").focus();
  }

  async function startSession() {
    $("#login").hidden = true;
    $("#topbar").hidden = false;
    $("#current-user").textContent = state.user;
    await loadVhosts();
    if (!location.hash) location.replace("#/overview");
    route();
  }

  async function login(event) {
    event.preventDefault();
    const user = $("#login-user").value.trim();
    const password = $("#login-password").value;
    const submit = $("#login-submit");
    const error = $("#login-error");
    submit.disabled = true;
    error.hidden = true;
    // btoa needs Latin-1; encode UTF-8 first so non-ASCII passwords work.
    const token = btoa(String.fromCharCode(...new TextEncoder().encode(`${user}:${password}`)));
    try {
      const response = await fetch("/api/overview", { headers: { Authorization: `Basic ${token}` }, cache: "no-store", credentials: "omit" });
      if (response.status === 401 || response.status === 403) {
        error.textContent = "Login failed: wrong user or password, or this user may not use the management API.";
        error.hidden = false;
        return;
      }
      if (!response.ok) {
        error.textContent = `The broker answered HTTP ${response.status}.`;
        error.hidden = false;
        return;
      }
      state.auth = token;
      state.user = user;
      sessionStorage.setItem(AUTH_KEY, token);
      sessionStorage.setItem(USER_KEY, user);
      $("#login-password").value = "";
      await startSession();
    } catch (failure) {
      error.textContent = `Cannot reach the broker: ${failure.message}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  }

  function logout() {
    sessionStorage.removeItem(AUTH_KEY);
    state.history = [];
    state.lastOverview = null;
    showLogin("");
  }

  function init() {
    $("#login-form").addEventListener("submit", login);
    $("#logout").addEventListener("click", logout);
    $("#vhost-filter").addEventListener("change", (event) => {
      state.vhost = event.target.value;
      sessionStorage.setItem(VHOST_KEY, state.vhost);
      route();
    });
    window.addEventListener("hashchange", route);
    if (state.auth) {
      startSession().catch(() => {});
    } else {
      showLogin("");
    }
  }

  init();
})();
