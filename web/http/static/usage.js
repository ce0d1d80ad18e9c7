// /usage: a range (presets or custom dates, in the browser's time zone), model and key
// filters, tiles, four charts, the by-model, by-key and latest-requests tables, and a CSV
// export; polled from /usage/data. Needs console.js and charts.js (with uPlot).
"use strict";

const HOUR = 3600e3;
const DAY = 86400e3;
// Ranges up to this long are shown in hourly buckets, longer ones in daily buckets.
const HOURLY_UP_TO = 3 * DAY;
// Usage amounts are small: every money figure of this page shows this many decimals (the
// exact amount on hover).
const MONEY_DECIMALS = 6;

const usage = {
  preset: "24h",
  custom: null,       // {since, until} in epoch ms, from the custom dates
  model: "",
  key: "",
  seen: new Set(),
  timer: null,
  generation: 0,      // a poll answered after the range or a filter changed is dropped
};

// The range to ask for: {since, until, granularity}, epoch ms. Presets roll with the clock:
// each poll asks for the range ending with the current bucket.
function currentRange() {
  const now = Date.now();
  const endOfHour = Math.floor(now / HOUR) * HOUR + HOUR;
  const endOfDay = Math.floor(now / DAY) * DAY + DAY;  // the current UTC day's end
  switch (usage.preset) {
    case "24h": return { since: endOfHour - DAY, until: endOfHour, granularity: "hour" };
    case "7d": return { since: endOfDay - 7 * DAY, until: endOfDay, granularity: "day" };
    case "30d": return { since: endOfDay - 30 * DAY, until: endOfDay, granularity: "day" };
    case "month": {
      const d = new Date(now);
      const since = new Date(d.getFullYear(), d.getMonth(), 1).getTime();
      return endOfHour - since <= HOURLY_UP_TO
        ? { since, until: endOfHour, granularity: "hour" } : { since, until: endOfDay, granularity: "day" };
    }
    default: {
      // Daily buckets are UTC days: the last one chosen is taken whole.
      const { since, until } = usage.custom;
      return until - since <= HOURLY_UP_TO
        ? { since, until, granularity: "hour" } : { since, until: Math.ceil(until / DAY) * DAY, granularity: "day" };
    }
  }
}

function query(range, extra = {}) {
  const params = new URLSearchParams({
    granularity: range.granularity,
    since: new Date(range.since).toISOString(),
    until: new Date(range.until).toISOString(),
  });
  if (usage.model) params.set("model", usage.model);
  if (usage.key) params.set("key_id", usage.key);
  for (const [k, v] of Object.entries(extra)) params.set(k, v);
  return params.toString();
}

// A local date input's value ("2026-12-01") as that day's midnight in the browser's zone,
// or the midnight ``plusDays`` later (by the calendar: a DST change makes a day 23 or 25 hours).
function localMidnight(value, plusDays = 0) {
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).getTime();
}

function inputDate(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

// -- formatting -------------------------------------------------------------------------------

const money = (value) => moneyEl(value, MONEY_DECIMALS);
const ms = (v) => (v === null || v === undefined ? "–" : `${fmtInt(Math.round(v))} ms`);
const pair = (a, b) => (a === null || a === undefined ? "–" : `${fmtInt(a)} / ${fmtInt(b)} ms`);
const sigFmt = new Intl.NumberFormat("en-US", { maximumSignificantDigits: 4 });
const axisMoney = (v) => (v === 0 ? "$0" : `$${v < 1e-3 ? v.toFixed(Math.min(9, 2 - Math.floor(Math.log10(v)))) : sigFmt.format(v)}`);
const axisCount = (v) => (Math.abs(v) >= 1e6 ? `${sigFmt.format(v / 1e6)}M` : Math.abs(v) >= 1e4 ? `${sigFmt.format(v / 1e3)}k` : sigFmt.format(v));
const axisMs = (v) => `${sigFmt.format(v)} ms`;
const dayFmt = new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric", year: "numeric" });
const hourFmt = new Intl.DateTimeFormat("en-US", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short" });

// -- rendering --------------------------------------------------------------------------------

function bucketStarts(data) {
  const step = data.granularity === "hour" ? HOUR : DAY;
  const out = [];
  for (let t = Date.parse(data.since); t < Date.parse(data.until); t += step) out.push(t);
  return out;
}

function drawCharts(data) {
  const starts = bucketStarts(data);
  const step = data.granularity === "hour" ? HOUR : DAY;
  const at = new Map(data.buckets.map((b) => [Date.parse(b.start), b]));
  const pick = (f, none = 0) => starts.map((t) => (at.has(t) ? f(at.get(t)) : none));
  const timeLabel = (t) => `${hourFmt.format(new Date(t))} – ${hourFmt.format(new Date(t + step))}`;
  const empty = data.buckets.length === 0;
  document.querySelectorAll(".chart .empty").forEach((p) => { p.hidden = !empty; });

  // Cost, stacked by model: the tooltip shows each model's exact amount.
  const models = [...new Set(data.buckets_by_model.map((b) => b.model))].sort();
  const cell = new Map(data.buckets_by_model.map((b) => [`${Date.parse(b.start)} ${b.model}`, b.cost]));
  const costSeries = models.map((m) => {
    const texts = starts.map((t) => cell.get(`${t} ${m}`) || "0");
    return { label: m, values: texts.map(Number), texts: texts.map((v) => `$${v}`) };
  });
  drawChart($("#chart-cost"), {
    x: starts, kind: "bars", stacked: true, timeLabel, format: axisMoney, exact: (v) => `$${v}`,
    series: costSeries.length ? costSeries : [{ label: "cost", values: starts.map(() => 0) }],
  });

  const tokens = [
    { label: "prompt", values: pick((b) => b.prompt_tokens) },
    { label: "completion", values: pick((b) => b.completion_tokens) },
    { label: "cached (of prompt)", values: pick((b) => b.cached_tokens) },
    { label: "reasoning (of completion)", values: pick((b) => b.reasoning_tokens) },
  ].filter((s, i) => i < 2 || s.values.some((v) => v > 0));
  drawChart($("#chart-tokens"), { x: starts, kind: "lines", stacked: false, integer: true, timeLabel, format: axisCount, exact: fmtInt, series: tokens });

  drawChart($("#chart-requests"), {
    x: starts, kind: "bars", stacked: true, integer: true, timeLabel, format: axisCount, exact: fmtInt,
    series: [
      { label: "succeeded", values: pick((b) => b.requests - b.errors), color: "#1f9d55" },
      { label: "errors", values: pick((b) => b.errors), color: "#d23a3a" },
    ],
  });

  drawChart($("#chart-latency"), {
    x: starts, kind: "lines", stacked: false, timeLabel, format: axisMs, exact: ms,
    series: [
      { label: "p50", values: pick((b) => b.latency_ms_p50, null) },
      { label: "p95", values: pick((b) => b.latency_ms_p95, null) },
      { label: "time to first token (mean)", values: pick((b) => b.ttft_ms_mean, null) },
    ],
  });
}

function rangeText(data) {
  const since = Date.parse(data.since), until = Date.parse(data.until);
  const bucket = data.granularity === "hour" ? "hourly buckets" : "daily buckets (UTC days)";
  const fmt = data.granularity === "hour" ? (t) => hourFmt.format(new Date(t)) : (t) => dayFmt.format(new Date(t));
  const last = data.granularity === "hour" ? until : until - DAY;
  const shown = data.granularity === "hour" ? `${fmt(since)} to ${fmt(last)}` : `${fmt(since)} to ${fmt(last)}, UTC`;
  return `${shown}, in ${bucket}. Times in ${zoneLabel()}.`;
}

function fillSelect(select, options, chosen, all) {
  const values = options.map((o) => o.value);
  const current = [...select.options].map((o) => o.value).slice(1);
  if (current.join("\n") !== values.join("\n")) {
    select.replaceChildren(el("option", { value: "" }, all), ...options.map((o) => el("option", { value: o.value }, o.label)));
  }
  select.value = chosen;
}

function groupRow(name, row) {
  return el("tr", {},
    el("th", { scope: "row" }, name),
    el("td", { class: "num" }, fmtInt(row.requests)),
    el("td", { class: "num" }, fmtInt(row.errors)),
    el("td", { class: "num" }, fmtInt(row.prompt_tokens)),
    el("td", { class: "num" }, fmtInt(row.completion_tokens)),
    el("td", { class: "num" }, money(row.cost)),
    el("td", { class: "num" }, pair(row.latency_ms_p50, row.latency_ms_p95)));
}

function fillTable(selector, rows, render, emptyText, columns) {
  const body = $(`${selector} tbody`);
  body.replaceChildren(...(rows.length ? rows.map(render) : [el("tr", {}, el("td", { colspan: columns, class: "muted" }, emptyText))]));
}

function render(data) {
  $("#wallet-balance").replaceChildren(moneyEl(data.wallet.balance, 2));
  $("#wallet-locked").replaceChildren(moneyEl(data.wallet.locked_balance, 2));
  $("#wallet-available").replaceChildren(moneyEl(data.wallet.available, 2));
  const t = data.totals;
  $("#total-cost").replaceChildren(money(t.cost));
  $("#total-requests").textContent = fmtInt(t.requests);
  $("#total-errors").textContent = fmtInt(t.errors);
  $("#total-error-rate").textContent = `${(t.error_rate * 100).toFixed(1)}% of requests`;
  $("#total-tokens").textContent = fmtInt(t.total_tokens);
  $("#total-latency").textContent = pair(t.latency_ms_p50, t.latency_ms_p95);
  $("#total-ttft").textContent = ms(t.ttft_ms_mean);
  $("#range-label").textContent = rangeText(data);
  $("#chart-note").textContent = `Chart times are in ${zoneLabel()}; hover a chart for its exact values.`;

  fillSelect($("#filter-model"), data.model_options.map((m) => ({ value: m, label: m })), usage.model, "All models");
  fillSelect($("#filter-key"), data.key_options.map((k) => ({ value: k.id, label: `${k.prefix}…${k.revoked ? " (revoked)" : ""}` })), usage.key, "All keys");

  drawCharts(data);
  fillTable("#models-table", data.models, (m) => {
    const row = groupRow(el("code", {}, m.model), m);
    row.dataset.model = m.model;
    return row;
  }, "No requests in this range.", 7);
  fillTable("#keys-table", data.keys, (k) => {
    const row = groupRow(el("code", {}, k.prefix ? `${k.prefix}…` : k.key_id || "(no key)"), k);
    row.dataset.keyId = k.key_id;
    return row;
  }, "No requests in this range.", 7);
  $("#latest-time").textContent = `Time, ${zoneLabel()}`;
  const first = usage.seen.size === 0;
  fillTable("#latest-table", data.latest, (r) => el("tr", { "data-request-id": r.id, class: !first && !usage.seen.has(r.id) ? "fresh" : "" },
    el("td", {}, fmtTime(r.created_at)),
    el("td", {}, el("a", { href: `/requests/${encodeURIComponent(r.id)}` }, el("code", {}, r.id))),
    el("td", {}, r.model),
    el("td", {}, el("code", {}, r.key_prefix ? `${r.key_prefix}…` : "")),
    el("td", { class: r.status === "ok" ? "status-ok" : "status-err" }, r.status),
    el("td", { class: "num" }, fmtInt(r.total_tokens)),
    el("td", { class: "num" }, money(r.cost)),
    el("td", { class: "num" }, ms(r.latency_ms))), "No requests in this range.", 8);
  usage.seen = new Set(data.latest.map((r) => r.id));
}

async function refreshUsage() {
  const generation = usage.generation;
  const range = currentRange();
  $("#download-csv").href = `/usage/data/rollups.csv?${query(range)}`;
  const response = await fetch(`/usage/data?${query(range)}`, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/signin?next=/usage"; return; }
  if (generation !== usage.generation) return;
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    $("#updated").textContent = `Update failed: ${message}`;
    return;
  }
  const data = await response.json();
  if (generation !== usage.generation) return;
  render(data);
  $("#updated").textContent = `Updated ${new Date().toLocaleTimeString("en-US", { hourCycle: "h23", timeZoneName: "short" })}`;
}

// Polls now and then every poll period; a change of range or filter polls at once.
function poll() {
  clearTimeout(usage.timer);
  usage.generation += 1;
  usage.seen = new Set();  // another range or filter: its rows are not news
  const period = Number(document.body.dataset.pollSeconds) * 1000;
  const loop = async () => {
    try { await refreshUsage(); } catch (e) { $("#updated").textContent = "Offline; retrying"; }
    usage.timer = setTimeout(loop, period);
  };
  loop();
}

function initUsage() {
  const form = $("#custom-range");
  const today = Date.now();
  $("#range-from").value = inputDate(today - 6 * DAY);
  $("#range-to").value = inputDate(today);
  document.querySelectorAll("[data-range]").forEach((button) => {
    button.addEventListener("click", () => {
      document.querySelectorAll("[data-range]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      form.hidden = button.dataset.range !== "custom";
      if (button.dataset.range === "custom") { $("#range-from").focus(); return; }
      usage.preset = button.dataset.range;
      poll();
    });
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const since = localMidnight($("#range-from").value);
    const until = localMidnight($("#range-to").value, 1);  // "to" is included
    const error = $("#range-error");
    if (!(since < until)) { error.textContent = "“From” must not be after “To”."; return; }
    // Daily buckets are UTC days, whole: the span the server counts is the rounded one.
    if (Math.ceil(until / DAY) * DAY - Math.floor(since / DAY) * DAY > 366 * DAY) {
      error.textContent = "At most 366 days, counted in whole UTC days: pick a shorter range.";
      return;
    }
    error.textContent = "";
    usage.preset = "custom";
    usage.custom = { since, until };
    poll();
  });
  $("#filter-model").addEventListener("change", (e) => { usage.model = e.target.value; poll(); });
  $("#filter-key").addEventListener("change", (e) => { usage.key = e.target.value; poll(); });
  poll();
}

onPage("usage", initUsage);
