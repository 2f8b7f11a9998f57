// The dashboard: plain script, no build step. Everything it shows comes from this
// service's own routes; the keys it is given stay in this tab (sessionStorage) and go
// out only as an Authorization header to this host. Text from the service is always
// set as text, never parsed as HTML.
"use strict";

(function () {
  const OVERVIEW_EVERY_MS = 2000;
  const LISTS_EVERY_MS = 5000;
  const HOUR = 3600;

  const keys = {
    api: sessionStorage.getItem("dashboard.api-key") || "",
    admin: sessionStorage.getItem("dashboard.admin-key") || "",
  };
  let timer = null;
  let page = "overview";
  let shown = 0; // raised at each page shown: a load under way for an older one stops there

  // ---- talking to the service -------------------------------------------------------

  const banner = document.getElementById("banner");
  function say(message) {
    banner.textContent = message;
    banner.hidden = !message;
  }

  // Answers {status, body}; null when the service did not answer at all.
  async function call(path, options) {
    const opts = options || {};
    const key = opts.admin ? keys.admin : keys.api;
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    let response;
    try {
      response = await fetch(path, { method: opts.method || "GET", headers: headers, credentials: "omit", cache: "no-store" });
    } catch (err) {
      say("The service does not answer (" + err.message + "); trying again.");
      return null;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = { error: "not JSON (HTTP " + response.status + ")" };
    }
    if (response.status === 503) {
      say("Redis (or the service) is unavailable: " + ((body && body.error) || "503") + " Trying again.");
    } else if (response.status === 401 && !opts.admin) {
      askForKey(keys.api ? "That key was refused; try another." : "This service needs a key.");
    } else if (response.status < 500) {
      say("");
    }
    return { status: response.status, body: body };
  }

  const keysForm = document.getElementById("keys");
  function askForKey(why) {
    document.getElementById("keys-why").textContent = why + " It is kept in this tab only and sent as a header.";
    keysForm.hidden = false;
  }
  document.getElementById("change-key").addEventListener("click", function () {
    askForKey("Another key?");
  });
  keysForm.addEventListener("submit", function (event) {
    event.preventDefault();
    keys.api = document.getElementById("api-key").value.trim();
    sessionStorage.setItem("dashboard.api-key", keys.api);
    keysForm.hidden = true;
    series.clear();
    show(page);
  });

  // ---- small helpers ------------------------------------------------------------------

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function setText(id, text) {
    document.getElementById(id).textContent = text;
  }
  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return Math.round(value * 1000) + " ms";
    if (value < 120) return value.toFixed(1) + " s";
    if (value < 7200) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }
  function rate(value) {
    return value === undefined ? "–" : value < 10 ? value.toFixed(2) : value.toFixed(0);
  }
  function when(unix) {
    return unix ? new Date(unix * 1000).toLocaleString() : "–";
  }
  // A table from a header row and rows of cells (text, or a node).
  function fill(table, head, rows, empty) {
    table.replaceChildren();
    const top = el("tr");
    head.forEach(function (h) { top.appendChild(el("th", h)); });
    table.appendChild(top);
    rows.forEach(function (cells) {
      const tr = el("tr");
      cells.forEach(function (cell) {
        if (cell instanceof Node) {
          const td = el("td");
          td.appendChild(cell);
          tr.appendChild(td);
        } else {
          tr.appendChild(el("td", cell));
        }
      });
      table.appendChild(tr);
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", empty || "None.", "muted");
      td.colSpan = head.length;
      tr.appendChild(td);
      table.appendChild(tr);
    }
  }
  function jobLink(id) {
    const a = el("a", id, "job-link");
    a.href = "#jobs";
    a.addEventListener("click", function () { lookUp(id); });
    return a;
  }

  // ---- overview -----------------------------------------------------------------------

  const series = new Map(); // bucket start -> point
  let charts = null;

  function makeCharts() {
    const width = Math.max(320, document.querySelector(".charts figure").clientWidth - 16);
    const axes = [{}, { size: 50 }];
    const rates = new uPlot({
      width: width, height: 220, axes: axes,
      series: [
        {},
        { label: "submitted", stroke: "#2f6fdf", width: 1.5 },
        { label: "done", stroke: "#2b8a3e", width: 1.5 },
        { label: "failed", stroke: "#c23a3a", width: 1.5 },
      ],
    }, [[], [], [], []], document.getElementById("chart-rates"));
    const latency = new uPlot({
      width: width, height: 220, axes: axes,
      series: [
        {},
        { label: "wait p50", stroke: "#8aa9e6", width: 1.5, spanGaps: false },
        { label: "wait p99", stroke: "#2f6fdf", width: 1.5, spanGaps: false },
        { label: "run p50", stroke: "#e6b38a", width: 1.5, spanGaps: false },
        { label: "run p99", stroke: "#d9822b", width: 1.5, spanGaps: false },
      ],
    }, [[], [], [], [], []], document.getElementById("chart-latency"));
    return { rates: rates, latency: latency };
  }

  function drawCharts(now) {
    for (const t of series.keys()) if (t < now - HOUR) series.delete(t);
    const points = Array.from(series.values()).sort(function (a, b) { return a.t - b.t; });
    const pick = function (name) { return points.map(function (p) { return p[name]; }); };
    if (!charts) charts = makeCharts();
    const xs = pick("t");
    charts.rates.setData([xs, pick("submitted"), pick("done"), pick("failed")]);
    charts.latency.setData([xs, pick("wait_p50"), pick("wait_p99"), pick("run_p50"), pick("run_p99")]);
  }

  async function overview() {
    const last = series.size ? Math.max.apply(null, Array.from(series.keys())) : 0;
    const since = last ? last - 20 : 0; // the last buckets again: they may still be filling
    const got = await call("/dashboard/api/overview?since=" + since);
    if (!got || got.status !== 200) return;
    const o = got.body;
    setText("scope", "Showing: " + (o.scope === "all" ? "everything" : "tenant " + o.scope));
    setText("updated", "updated " + new Date(o.now * 1000).toLocaleTimeString());
    setText("q-total", o.queue.total);
    setText("q-split", o.queue.queued + " queued, " + o.queue.running + " running");
    setText("q-oldest", o.queue.total ? seconds(o.queue.oldest_seconds) : "–");
    setText("r-submitted", rate(o.rates.submitted));
    setText("r-done", rate(o.rates.done));
    setText("r-failed", rate(o.rates.failed));
    setText("l-wait", seconds(o.latency.wait_p50) + " / " + seconds(o.latency.wait_p99));
    setText("l-run", seconds(o.latency.run_p50) + " / " + seconds(o.latency.run_p99));
    setText("alive", o.replicas_alive + " / " + o.workers);
    const pairs = function (obj) { return Object.keys(obj).map(function (k) { return [k, obj[k]]; }); };
    fill(document.getElementById("t-priority"), ["priority", "jobs"], pairs(o.queue.by_priority));
    document.getElementById("by-tenant-box").hidden = !o.queue.by_tenant;
    document.getElementById("by-model-box").hidden = !o.queue.by_model;
    if (o.queue.by_tenant) fill(document.getElementById("t-tenant"), ["tenant", "jobs"], pairs(o.queue.by_tenant));
    if (o.queue.by_model) fill(document.getElementById("t-model"), ["model", "jobs"], pairs(o.queue.by_model), "Nothing queued.");
    document.getElementById("replicas-box").hidden = o.scope !== "all";
    fill(document.getElementById("t-replicas"), ["replica", "workers", "models", "seen"],
      o.replicas.map(function (r) {
        return [r.name, r.workers, (r.models || []).join(", "), seconds(r.seen_seconds_ago) + " ago"];
      }), "No replica alive.");
    o.series.forEach(function (p) { series.set(p.t, p); });
    drawCharts(o.now);
  }

  // ---- jobs ---------------------------------------------------------------------------

  const jobBox = document.getElementById("job");

  async function lookUp(id) {
    id = id.trim();
    document.getElementById("lookup-id").value = id;
    jobBox.hidden = false;
    jobBox.replaceChildren(el("p", "Looking up " + id + "...", "muted"));
    const got = await call("/dashboard/api/jobs/" + encodeURIComponent(id));
    if (!got) return;
    if (got.status === 404) {
      jobBox.replaceChildren(el("p", "Not found: no job " + id + " here (unknown, expired, or not yours).", "notfound"));
      return;
    }
    if (got.status !== 200) {
      jobBox.replaceChildren(el("p", (got.body && got.body.error) || "HTTP " + got.status, "notfound"));
      return;
    }
    const j = got.body;
    const nodes = [el("h3", "Job " + j.id)];
    const facts = el("table");
    fill(facts, ["status", "model", "tenant", "priority", "attempts", "created", "started", "finished"], [[
      el("span", j.status, "status-" + j.status), j.model, j.tenant, j.priority, j.attempts,
      when(j.created_at), when(j.started_at), when(j.finished_at),
    ]]);
    nodes.push(facts);
    if (j.error) nodes.push(el("p", "Error: " + j.error, "status-failed"));
    if (j.webhook) nodes.push(el("p", "Webhook: " + j.webhook + (j.webhook_status ? " (" + j.webhook_status + ")" : " (not delivered yet)")));
    nodes.push(el("h2", "Timeline"));
    const timeline = el("table");
    fill(timeline, ["when", "what"], j.timeline.map(function (t) { return [when(t.at), t.event]; }));
    nodes.push(timeline);
    nodes.push(el("h2", "Input"), el("pre", j.input));
    if (j.result !== null && j.result !== "null") nodes.push(el("h2", "Result"), el("pre", j.result));
    jobBox.replaceChildren.apply(jobBox, nodes);
  }

  function jobRows(items) {
    return items.map(function (j) {
      return [jobLink(j.id), el("span", j.status, "status-" + j.status), j.model, j.tenant || "default", j.mode, when(j.at), j.error || ""];
    });
  }

  async function jobs() {
    const status = document.getElementById("filter-status").value;
    const model = document.getElementById("filter-model").value.trim();
    const query = "?status=" + encodeURIComponent(status) + "&model=" + encodeURIComponent(model);
    const got = await call("/dashboard/api/jobs" + query);
    if (got && got.status === 200) {
      setText("jobs-title", status ? "Jobs " + status : "Latest jobs ended");
      fill(document.getElementById("t-jobs"), ["id", "status", "model", "tenant", "mode", "at", "error"], jobRows(got.body.items), "No such jobs lately.");
    }
    const failed = await call("/dashboard/api/jobs?status=failed");
    if (failed && failed.status === 200) {
      fill(document.getElementById("t-failures"), ["id", "status", "model", "tenant", "mode", "at", "error"], jobRows(failed.body.items), "No failures lately.");
    }
  }

  document.getElementById("lookup").addEventListener("submit", function (event) {
    event.preventDefault();
    const id = document.getElementById("lookup-id").value;
    if (id.trim()) lookUp(id);
  });
  document.getElementById("filter").addEventListener("submit", function (event) {
    event.preventDefault();
    jobs();
  });

  // ---- dead letters -------------------------------------------------------------------

  const deadTable = document.getElementById("t-dead");

  function adminRefused(got, what) {
    if (!got) return true;
    if (got.status === 401) { say(what + " refused: the admin key is wrong or missing."); return true; }
    if (got.status === 403) { say(what + " refused: the admin routes are off (set ADMIN_API_KEY)."); return true; }
    if (got.status !== 200) { say(what + " failed: " + ((got.body && got.body.error) || got.status)); return true; }
    return false;
  }

  async function act(what, method, path) {
    if (!confirm(what + "?")) return;
    const got = await call(path, { method: method, admin: true });
    if (adminRefused(got, what)) return;
    say("");
    setText("dead-total", what + ": " + JSON.stringify(got.body));
    deadLetters(true);
  }

  async function deadLetters(keepMessage) {
    if (!keys.admin) {
      setText("dead-total", "Enter the admin key to see the dead letters.");
      return;
    }
    const got = await call("/admin/dead-letters?limit=100", { admin: true });
    if (adminRefused(got, "Listing dead letters")) return;
    if (!keepMessage) setText("dead-total", got.body.total + " dead letters");
    fill(deadTable, ["id", "model", "reason", "dead at", "attempts", "status", ""],
      got.body.items.map(function (d) {
        const buttons = el("span");
        const replay = el("button", "Replay", "small");
        replay.type = "button";
        replay.addEventListener("click", function () {
          act("Replay " + d.prediction_id, "POST", "/admin/dead-letters/" + d.prediction_id + "/replay");
        });
        const purge = el("button", "Purge", "small danger");
        purge.type = "button";
        purge.addEventListener("click", function () {
          act("Purge " + d.prediction_id, "DELETE", "/admin/dead-letters/" + d.prediction_id + "?entry=" + encodeURIComponent(d.entry));
        });
        buttons.append(replay, " ", purge);
        return [jobLink(d.prediction_id), d.model || "", d.reason, when(d.dead_at), d.attempts, d.status || "expired", buttons];
      }), "No dead letters.");
  }

  document.getElementById("admin").addEventListener("submit", function (event) {
    event.preventDefault();
    keys.admin = document.getElementById("admin-key").value.trim();
    sessionStorage.setItem("dashboard.admin-key", keys.admin);
    deadLetters();
  });
  document.getElementById("replay-all").addEventListener("click", function () {
    act("Replay every dead letter", "POST", "/admin/dead-letters/replay");
  });
  document.getElementById("purge-all").addEventListener("click", function () {
    act("Purge every dead letter", "DELETE", "/admin/dead-letters");
  });

  // ---- models and tenants -------------------------------------------------------------

  async function models() {
    const got = await call("/dashboard/api/models");
    if (!got || got.status !== 200) return;
    const box = document.getElementById("models");
    const cards = got.body.items.map(function (m) {
      const card = el("div", null, "model");
      card.appendChild(el("h3", m.name + (m.default ? " (default)" : "")));
      const facts = el("table");
      fill(facts, ["kind", "version", "execution", "task", "max batch", "batch delay", "concurrency"], [[
        m.kind, m.version || "–", m.execution, m.task || "–", m.batch.max_batch_size,
        m.batch.max_batch_delay_ms + " ms", m.batch.concurrency || "–",
      ]]);
      card.appendChild(facts);
      [["input schema", m.input_schema], ["output schema", m.output_schema]].forEach(function (pair) {
        const details = el("details");
        details.appendChild(el("summary", pair[0]));
        details.appendChild(el("pre", JSON.stringify(pair[1], null, 2)));
        card.appendChild(details);
      });
      return card;
    });
    box.replaceChildren.apply(box, cards);
  }

  async function tenants() {
    const got = await call("/dashboard/api/tenants");
    if (!got || got.status !== 200) return;
    const items = got.body.items;
    document.getElementById("tenants-none").hidden = items.length > 0;
    fill(document.getElementById("t-tenants"),
      ["tenant", "rate /s", "burst", "allowed now", "submitted /s", "queued", "max queued", "weight"],
      items.map(function (t) {
        return [t.name, t.rate === null ? "no limit" : t.rate, t.burst === null ? "–" : t.burst,
          t.requests_allowed_now === null ? "–" : t.requests_allowed_now,
          rate(t.submitted_per_second), t.queued, t.max_queued === null ? "no limit" : t.max_queued, t.weight];
      }), "No tenants.");
  }

  // ---- pages --------------------------------------------------------------------------

  const refresh = {
    overview: [overview, OVERVIEW_EVERY_MS],
    jobs: [jobs, LISTS_EVERY_MS],
    "dead-letters": [deadLetters, LISTS_EVERY_MS],
    models: [models, 0],
    tenants: [tenants, LISTS_EVERY_MS],
  };

  function show(name) {
    if (!refresh[name]) name = "overview";
    page = name;
    document.querySelectorAll(".page").forEach(function (s) { s.hidden = s.id !== "page-" + name; });
    document.querySelectorAll("nav a").forEach(function (a) { a.classList.toggle("active", a.dataset.page === name); });
    if (timer) clearTimeout(timer);
    const mine = ++shown;
    const [load, every] = refresh[name];
    const tick = async function () {
      try {
        await load();
      } finally {
        if (every && shown === mine) timer = setTimeout(tick, every);
      }
    };
    tick();
  }

  window.addEventListener("hashchange", function () { show(location.hash.slice(1)); });
  document.getElementById("api-key").value = keys.api;
  document.getElementById("admin-key").value = keys.admin;
  show(location.hash.slice(1) || "overview");
})();
