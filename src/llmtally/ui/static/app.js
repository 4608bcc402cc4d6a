// llmtally ui: the page. Its whole state is its URL's query string (bookmarkable, shareable); every
// API call sends the same query string. Every value from the ledger is put in the page as text
// (textContent, never as markup) after shown(), which writes non-printable characters as escapes,
// as the report's table does.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const FILTERS = ["provider", "model", "scope", "endpoint", "currency"];
  const COLORS = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#9ca3af"];
  let chart = null;
  let stamp = null;
  let polling = null;
  let pollSeconds = 2;
  let loading = false;

  // Characters Python's str.isprintable() refuses (controls, format characters, odd spaces,
  // surrogates, private use), shown as Python-style escapes: what `llmtally report` prints.
  const HIDDEN = /[\u0000-\u001f\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ud800-\udfff\ue000-\uf8ff\ufeff\ufff9-\ufffb]/g;
  function shown(value) {
    if (value === null || value === undefined) return "";
    return String(value).replace(HIDDEN, (c) => {
      const n = c.charCodeAt(0);
      return n < 0x100 ? "\\x" + n.toString(16).padStart(2, "0") : "\\u" + n.toString(16).padStart(4, "0");
    });
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function text(id, value) { $(id).textContent = value; }

  function params() { return new URLSearchParams(location.search); }

  function go(p, replace) {
    const url = location.pathname + (p.toString() ? "?" + p.toString() : "");
    if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
    render();
  }

  // The view's query for the API: the page's, less what only the page uses.
  function apiQuery(p, extra) {
    const q = new URLSearchParams(p);
    for (const k of ["view", "id", "at"]) q.delete(k);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }

  async function getJSON(path, query) {
    const response = await fetch(path + (query ? "?" + query : ""), { headers: { accept: "application/json" } });
    const body = await response.json().catch(() => ({ error: "the dashboard answered " + response.status }));
    if (!response.ok) throw new Error(body.error || "error " + response.status);
    return body;
  }

  function showError(err) {
    const box = $("error");
    box.hidden = !err;
    box.textContent = err ? String(err.message || err) : "";
  }

  function number(n) { return n === null || n === undefined ? "" : Number(n).toLocaleString("en-US"); }
  function ms(v) { return v === null || v === undefined ? "–" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms"); }
  function pct(v) { return v === null || v === undefined ? "" : (v * 100).toFixed(1) + "%"; }

  // ---- the filter form ---------------------------------------------------------------------
  function fillForm(p) {
    const since = p.has("since") ? p.get("since") : "7d";
    const select = $("f-since");
    if (/^\d+[hdw]$/.test(since) && !p.get("until") && ![...select.options].some((o) => o.value === since)) {
      select.insertBefore(el("option", { value: since }, "last " + since), select.lastElementChild);
    }
    const preset = [...select.options].some((o) => o.value === since && o.value !== "custom") && !p.get("until");
    $("f-since").value = preset ? since : "custom";
    $("filters").classList.toggle("custom-window", !preset);
    $("f-from").value = preset ? "" : since;
    $("f-until").value = p.get("until") || "";
    for (const f of ["provider", "model", "scope"]) $("f-" + f).value = p.get(f) || "";
    $("f-tag").value = p.get("tag") || "";
    const chips = $("chips");
    chips.replaceChildren();
    for (const key of [...FILTERS, "tag"]) {
      for (const value of p.getAll(key)) {
        const drop = el("button", { type: "button", title: "remove this filter" }, "×");
        drop.addEventListener("click", () => {
          const q = params();
          const kept = q.getAll(key).filter((v) => v !== value);
          q.delete(key);
          kept.forEach((v) => q.append(key, v));
          go(q);
        });
        chips.append(el("span", { class: "chip", "data-key": key }, key + " = " + shown(value), drop));
      }
    }
  }

  function formParams() {
    const p = params();
    const choice = $("f-since").value;
    p.delete("until");
    if (choice === "custom") {
      p.set("since", $("f-from").value.trim() || "all");
      if ($("f-until").value.trim()) p.set("until", $("f-until").value.trim());
    } else p.set("since", choice);
    for (const f of ["provider", "model", "scope"]) {
      p.delete(f);
      if ($("f-" + f).value !== "") p.set(f, $("f-" + f).value);
    }
    p.delete("tag");
    if ($("f-tag").value.trim()) p.set("tag", $("f-tag").value.trim());
    p.set("stack", $("f-stack").value || "model");
    p.delete("before");
    return p;
  }

  // ---- drill-down --------------------------------------------------------------------------
  // The calls behind a row: this view, plus the row's group = its value.
  function drill(group, value, extra) {
    const p = params();
    p.set("view", "calls");
    p.delete("before");
    p.delete("only");
    if (group && value !== null && value !== undefined) {
      if (group.startsWith("tag:")) p.append("tag", group.slice(4) + "=" + value);
      else p.append(group, value);
    }
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    go(p);
  }

  function filterOn(group, value) {
    const p = params();
    if (group.startsWith("tag:")) p.append("tag", group.slice(4) + "=" + value);
    else p.append(group, value);
    go(p);
  }

  function iso(d) { return d.toISOString().slice(0, 16); }

  // A bar: the calls of its time bucket (and of its stack, unless it is the "others").
  function drillBar(bucket, label, stack, value) {
    const t = new Date(label.length > 10 ? label.replace(" ", "T") + ":00Z" : label + "T00:00:00Z");
    const end = new Date(t.getTime() + (bucket === "hour" ? 3600e3 : 86400e3));
    const p = params();
    const since = p.has("since") ? p.get("since") : "7d";
    p.set("view", "calls");
    p.set("since", iso(t));
    p.set("until", iso(end));
    p.set("window", since);  // where "back" returns to
    p.delete("before");
    p.delete("only");
    if (value !== null) {
      if (stack.startsWith("tag:")) p.append("tag", stack.slice(4) + "=" + value);
      else p.append(stack, value);
    }
    go(p);
  }

  // ---- the overview ------------------------------------------------------------------------
  function rowsTable(table, rows, group, opts) {
    const o = opts || {};
    const head = el("tr", {}, el("th", {}, o.title || group), el("th", { class: "num" }, "Requests"),
      el("th", { class: "num" }, "Cost"), o.latency ? el("th", { class: "num" }, "p50") : null,
      o.latency ? el("th", { class: "num" }, "p95") : null, el("th", { class: "num" }, "Failed"),
      el("th", { class: "num" }, "Unpriced"), el("th", {}, ""));
    const body = el("tbody");
    for (const r of rows) {
      const value = r[group];
      const add = el("button", { type: "button", class: "filter", title: "filter the dashboard on this" }, "⊕");
      add.addEventListener("click", (e) => { e.stopPropagation(); filterOn(group, value); });
      const tr = el("tr", { "data-value": value },
        el("td", { class: "name" }, shown(value)), el("td", { class: "num" }, number(r.requests)),
        el("td", { class: "num cost" }, r.shown), o.latency ? el("td", { class: "num" }, ms(r.latency_p50_ms)) : null,
        o.latency ? el("td", { class: "num" }, ms(r.latency_p95_ms)) : null,
        el("td", { class: "num" }, number(r.failed_requests)), el("td", { class: "num" }, number(r.unpriced_requests)),
        el("td", {}, add));
      tr.addEventListener("click", () => drill(group, value));
      body.append(tr);
    }
    if (!rows.length) body.append(el("tr", {}, el("td", { class: "muted" }, "no calls")));
    table.replaceChildren(el("thead", {}, head), body);
  }

  function callsTable(table, calls) {
    const head = el("tr", {}, el("th", {}, "Started (UTC)"), el("th", {}, "Provider"), el("th", {}, "Model"),
      el("th", {}, "Scope"), el("th", {}, "Status"), el("th", { class: "num" }, "Prompt"),
      el("th", { class: "num" }, "Completion"), el("th", { class: "num" }, "Cost"), el("th", { class: "num" }, "Latency"));
    const body = el("tbody");
    for (const c of calls) {
      const cost = c.cost === null ? "unknown" : "$" + c.cost + (c.currency && c.currency !== "USD" ? " " + shown(c.currency) : "");
      const tr = el("tr", { class: "call" + (c.ok ? "" : " failed"), "data-id": c.id },
        el("td", {}, (c.started_at_iso || "").replace("T", " ").slice(0, 19)), el("td", {}, shown(c.provider)),
        el("td", { class: "name" }, shown(c.model || c.requested_model)), el("td", { class: "name" }, shown(c.scope)),
        el("td", {}, c.ok ? String(c.status || "ok") : "failed " + shown(c.status || c.error || "")),
        el("td", { class: "num" }, number(c.prompt_tokens)), el("td", { class: "num" }, number(c.completion_tokens)),
        el("td", { class: "num" }, cost + (c.estimated ? " (est.)" : "")), el("td", { class: "num" }, ms(c.latency_ms)));
      tr.addEventListener("click", () => {
        const p = params();
        p.set("view", "call");
        p.set("id", c.id);
        p.set("at", String(c.started_at));
        go(p);
      });
      body.append(tr);
    }
    if (!calls.length) body.append(el("tr", {}, el("td", { class: "muted" }, "no calls")));
    table.replaceChildren(el("thead", {}, head), body);
  }

  function kpi(id, period) {
    const box = $(id);
    box.querySelector("h3").textContent = period.label;
    box.querySelector(".cost").textContent = period.shown;
    const change = box.querySelector(".change");
    change.className = "change";
    if (period.change === null) change.textContent = "before: " + period.previous.shown;
    else {
      const up = period.change > 0;
      change.classList.add(up ? "up" : "down");
      change.textContent = (up ? "▲ " : "▼ ") + Math.abs(period.change * 100).toFixed(0) + "% vs " + period.previous.shown;
    }
    box.querySelector(".requests").textContent = number(period.requests) + " requests";
  }

  function datalist(id, rows, group) {
    $(id).replaceChildren(...rows.map((r) => el("option", { value: r[group] })));
  }

  function drawChart(series) {
    const stack = series.stack;
    text("chart-title", "Spend per " + series.bucket + (series.stacks.length > 1 ? ", by " + stack : ""));
    const datasets = series.stacks.map((s, i) => ({
      label: shown(s.name) + (s.requests > s.unpriced ? "" : " (no price)"),
      data: s.costs.map(Number),
      backgroundColor: s.filter === null ? COLORS[COLORS.length - 1] : COLORS[i % (COLORS.length - 1)],
      filterValue: s.filter,
      stack: "spend",
    }));
    const unpriced = series.stacks.reduce((n, s) => n + s.unpriced, 0);
    text("chart-note", (unpriced ? number(unpriced) + " calls of unknown price are not drawn (they are not $0). " : "") +
      "Click a bar for the calls behind it.");
    const data = { labels: series.labels, datasets };
    if (!window.Chart) return;
    if (chart) {
      chart.data = data;
      chart.options.onClick = onBar(series);
      chart.update("none");
      return;
    }
    chart = new window.Chart($("chart"), {
      type: "bar",
      data,
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { x: { stacked: true }, y: { stacked: true, ticks: { callback: (v) => "$" + v } } },
        plugins: {
          legend: { position: "right" },
          tooltip: { callbacks: { label: (ctx) => ctx.dataset.label + ": $" + series.stacks[ctx.datasetIndex].costs[ctx.dataIndex] } },
        },
        onClick: onBar(series),
      },
    });
  }

  function onBar(series) {
    return (event, elements) => {
      if (!elements.length) return;
      const { datasetIndex, index } = elements[0];
      const s = chart.data.datasets[datasetIndex];
      drillBar(series.bucket, chart.data.labels[index], series.stack, s.filterValue);
    };
  }

  function apart(doc) {
    const list = $("apart");
    list.replaceChildren();
    const u = doc.unpriced;
    list.append(el("li", { id: "apart-unpriced" }, number(u.requests) + " calls of unknown price (not in the spend, never counted as $0)"));
    for (const m of u.models) list.append(el("li", { class: "muted" }, shown(m.model) + ": " + number(m.requests) + " — " + m.why));
    list.append(el("li", { id: "apart-estimated" }, number(doc.estimated.requests) + " calls with estimated tokens — " + doc.estimated.why));
  }

  function budgetsTable(budgets) {
    const head = el("tr", {}, el("th", {}, "Budget"), el("th", {}, "Period"), el("th", { class: "num" }, "Spent"),
      el("th", { class: "num" }, "Reserved (in flight)"), el("th", { class: "num" }, "Limit"), el("th", { class: "num" }, "Used"), el("th", {}, ""));
    const body = el("tbody");
    for (const b of budgets) {
      body.append(el("tr", { "data-name": b.name }, el("td", { class: "name" }, shown(b.name)),
        el("td", {}, b.period ? "per " + b.period : "no period"), el("td", { class: "num" }, b.shown.spent),
        el("td", { class: "num" }, b.shown.reserved), el("td", { class: "num" }, b.shown.limit),
        el("td", { class: "num" }, pct(b.used)), el("td", { class: b.full ? "full" : "" }, b.full ? "full" : "")));
    }
    if (!budgets.length) body.append(el("tr", {}, el("td", { class: "muted" }, "no shared budget in this ledger")));
    $("t-budgets").replaceChildren(el("thead", {}, head), body);
  }

  // Requests a limit stopped (or warn mode let through) in the window: every value as text, shown().
  function refusalsTable(r) {
    text("refusal-counts", number(r.refused) + " refused, " + number(r.warned) + " sent past a limit (warn mode) in this window");
    const head = el("tr", {}, el("th", {}, "Time (UTC)"), el("th", {}, "Scope"), el("th", {}, "Limit of"), el("th", {}, "Limit"),
      el("th", { class: "num" }, "Allowed"), el("th", { class: "num" }, "Spent"), el("th", {}, "Model"), el("th", {}, ""));
    const body = el("tbody");
    for (const x of r.rows) {
      const at = new Date(x.at * 1000).toISOString().slice(0, 19).replace("T", " ");
      body.append(el("tr", { "data-id": x.id }, el("td", {}, at), el("td", { class: "name" }, shown(x.scope)),
        el("td", { class: "name" }, shown(x.refused_by) + (x.by === "budget" ? " (budget)" : "")), el("td", {}, shown(x.limit)),
        el("td", { class: "num" }, shown(x.shown.allowed)), el("td", { class: "num" }, shown(x.shown.spent)),
        el("td", { class: "name" }, shown(x.model)), el("td", { class: x.action === "refused" ? "full" : "" }, shown(x.action))));
    }
    if (!r.rows.length) body.append(el("tr", {}, el("td", { class: "muted" }, "no request hit a limit in this view")));
    $("t-refusals").replaceChildren(el("thead", {}, head), body);
  }

  async function loadOverview(p) {
    const [doc, recent] = await Promise.all([
      getJSON("api/overview", apiQuery(p)),
      getJSON("api/calls", apiQuery(p, { limit: "10" })),
    ]);
    pollSeconds = doc.poll_seconds || 2;
    text("ledger", shown(doc.ledger));
    const stacks = ["model", "provider", "scope", "endpoint", ...doc.tags.keys.map((k) => "tag:" + k)];
    const current = p.get("stack") || "model";
    if (!stacks.includes(current)) stacks.push(current);
    $("f-stack").replaceChildren(...stacks.map((s) => el("option", { value: s }, shown(s))));
    $("f-stack").value = current;
    kpi("kpi-today", doc.periods[0]);
    kpi("kpi-7d", doc.periods[1]);
    kpi("kpi-30d", doc.periods[2]);
    const t = doc.totals;
    text("w-cost", t.shown);
    text("w-requests", number(t.requests));
    text("w-failed", number(t.failed_requests));
    text("w-rate", doc.failures.rate === null ? "" : "(" + pct(doc.failures.rate) + ")");
    text("w-unpriced", number(t.unpriced_requests));
    text("w-estimated", number(t.estimated_requests));
    text("w-p50", (doc.latency_exact === false ? "≈" : "") + ms(t.latency_p50_ms));
    text("w-p95", (doc.latency_exact === false ? "≈" : "") + ms(t.latency_p95_ms));
    text("command", doc.command);
    drawChart(doc.series);
    rowsTable($("t-models"), doc.models, "model", { latency: true });
    rowsTable($("t-scopes"), doc.scopes, "scope");
    rowsTable($("t-providers"), doc.providers, "provider");
    const key = doc.tags.key;
    $("tagkey").replaceChildren(...doc.tags.keys.map((k) => el("option", { value: k }, shown(k))));
    if (key) $("tagkey").value = key;
    rowsTable($("t-tags"), doc.tags.rows, key ? "tag:" + key : "tag", { title: key ? shown(key) : "tag" });
    const failures = el("tbody");
    for (const f of doc.failures.models) {
      const tr = el("tr", { "data-value": f.model }, el("td", { class: "name" }, shown(f.model)),
        el("td", { class: "num" }, number(f.failed) + " of " + number(f.requests)), el("td", { class: "num" }, pct(f.failed / f.requests)));
      tr.addEventListener("click", () => drill("model", f.model, { only: "failed" }));
      failures.append(tr);
    }
    if (!doc.failures.models.length) failures.append(el("tr", {}, el("td", { class: "muted" }, "no failed call")));
    $("t-failures").replaceChildren(failures);
    apart(doc);
    budgetsTable(doc.budgets);
    refusalsTable(doc.refusals);
    datalist("l-model", doc.models, "model");
    datalist("l-scope", doc.scopes, "scope");
    datalist("l-provider", doc.providers, "provider");
    callsTable($("t-recent"), recent.calls);
  }

  function describe(p) {
    const parts = [];
    for (const key of [...FILTERS, "tag"]) for (const v of p.getAll(key)) parts.push(key + " = " + shown(v));
    const only = p.get("only");
    const window = p.get("until") ? "from " + p.get("since") + " until " + p.get("until") : "since " + (p.get("since") || "7d");
    return (only ? only.charAt(0).toUpperCase() + only.slice(1) + " calls" : "Calls") + " " + window + (parts.length ? ", " + parts.join(", ") : "");
  }

  async function loadCalls(p, append) {
    const doc = await getJSON("api/calls", apiQuery(p));
    text("calls-title", describe(p));
    text("calls-command", doc.command);
    $("calls-export").href = "api/export.csv?" + apiQuery(p, { view: "calls" });
    if (append) {
      const holder = el("table");
      callsTable(holder, doc.calls);
      $("t-calls").querySelector("tbody").append(...holder.querySelector("tbody").children);
    } else callsTable($("t-calls"), doc.calls);
    const older = $("older");
    older.hidden = !doc.next;
    older.onclick = () => {
      const q = params();
      q.set("before", doc.next);
      history.replaceState(null, "", location.pathname + "?" + q.toString());
      loadCalls(q, true).catch(showError);
    };
  }

  async function loadCall(p) {
    const doc = await getJSON("api/call", new URLSearchParams({ id: p.get("id") || "", at: p.get("at") || "" }).toString());
    const list = $("record");
    list.replaceChildren();
    for (const [k, v] of Object.entries(doc)) {
      const value = v !== null && typeof v === "object" ? JSON.stringify(v) : v === null ? "null" : String(v);
      list.append(el("dt", {}, k), el("dd", { "data-key": k }, shown(value)));
    }
  }

  async function render(quiet) {
    const p = params();
    const view = p.get("view") || "overview";
    fillForm(p);
    $("export").href = "api/export.csv?" + apiQuery(p, view === "calls" ? { view: "calls" } : {});
    $("overview").hidden = view !== "overview";
    $("calls-view").hidden = view !== "calls";
    $("call-view").hidden = view !== "call";
    loading = true;
    try {
      if (view === "calls") await loadCalls(p, false);
      else if (view === "call") await loadCall(p);
      else await loadOverview(p);
      showError(null);
      text("updated", "updated " + new Date().toISOString().slice(11, 19) + " UTC");
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    } catch (err) {
      if (!quiet) showError(err);
    } finally {
      loading = false;
    }
  }

  // ---- live --------------------------------------------------------------------------------
  async function poll() {
    try {
      const doc = await getJSON("api/changed", "");
      const now = JSON.stringify(doc.stamp);
      $("live").classList.add("on");
      const view = params().get("view") || "overview";
      // A call's record does not change; a paged listing keeps the pages the person opened.
      if (stamp !== null && now !== stamp && !loading && view !== "call" && !params().get("before")) await render(true);
      stamp = now;
    } catch (err) {
      $("live").classList.remove("on");
    }
    polling = setTimeout(poll, pollSeconds * 1000);
  }

  function start() {
    $("filters").addEventListener("submit", (e) => { e.preventDefault(); const p = formParams(); p.delete("view"); go(p); });
    $("f-since").addEventListener("change", () => {
      $("filters").classList.toggle("custom-window", $("f-since").value === "custom");
      if ($("f-since").value !== "custom") go(formParams());
    });
    $("f-stack").addEventListener("change", () => go(formParams()));
    $("tagkey").addEventListener("change", () => { const p = params(); p.set("tagkey", $("tagkey").value); go(p); });
    $("clear").addEventListener("click", () => go(new URLSearchParams()));
    for (const id of ["w-failed", "w-unpriced", "w-estimated"]) {
      $(id).addEventListener("click", (e) => { e.preventDefault(); drill(null, null, { only: $(id).dataset.only }); });
    }
    $("all-calls").addEventListener("click", (e) => { e.preventDefault(); drill(null, null); });
    const back = (e) => {
      e.preventDefault();
      const p = params();
      const view = p.get("view");
      p.delete("id"); p.delete("at"); p.delete("before");
      if (view === "call") p.set("view", "calls");
      else {
        p.delete("view"); p.delete("only");
        if (p.has("window")) { p.set("since", p.get("window")); p.delete("until"); p.delete("window"); }
      }
      go(p);
    };
    $("back-overview").addEventListener("click", back);
    $("back-calls").addEventListener("click", back);
    window.addEventListener("popstate", () => render());
    render().then(() => { polling = setTimeout(poll, 0); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
