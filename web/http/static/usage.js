// /usage: polling, charts and tables. Needs console.js.
"use strict";

function bucketStarts(since, until, granularity) {
  const step = granularity === "hour" ? 3600e3 : 86400e3;
  const out = [];
  for (let t = Date.parse(since); t < Date.parse(until); t += step) out.push(t);
  return out;
}

function label(t, granularity) {
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, "0");
  return granularity === "hour" ? `${pad(d.getUTCHours())}:00` : `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
}

// A bar chart: series = [{cls, values}] stacked bottom-up; values aligned with `starts`.
function barChart(container, starts, series, granularity, format) {
  const W = 600, H = 220, left = 64, bottom = 20, top = 10;
  const n = starts.length;
  const totals = starts.map((_, i) => series.reduce((s, ser) => s + ser.values[i], 0));
  const max = Math.max(...totals, 0);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const title = svg("title");
  const sum = totals.reduce((a, b) => a + b, 0);
  title.textContent = `Total ${format(sum)} over ${n} ${granularity === "hour" ? "hours" : "days"}`;
  root.append(title);
  root.append(svg("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, class: "axis" }));
  const scaleTop = svg("text", { x: 2, y: top + 8 }); scaleTop.textContent = format(max); root.append(scaleTop);
  const zero = svg("text", { x: 2, y: H - bottom }); zero.textContent = "0"; root.append(zero);
  const slot = (W - left) / Math.max(n, 1);
  const usable = H - bottom - top;
  starts.forEach((t, i) => {
    let y = H - bottom;
    for (const ser of series) {
      const v = ser.values[i];
      if (v > 0 && max > 0) {
        const h = Math.max(1, (v / max) * usable);
        y -= h;
        const rect = svg("rect", { x: left + i * slot + slot * 0.15, y, width: slot * 0.7, height: h, class: ser.cls });
        const tip = svg("title"); tip.textContent = `${label(t, granularity)}: ${format(v)}`; rect.append(tip);
        root.append(rect);
      }
    }
    const every = Math.ceil(n / 8);
    if (i % every === 0) {
      const text = svg("text", { x: left + i * slot + slot / 2, y: H - 4, "text-anchor": "middle" });
      text.textContent = label(t, granularity);
      root.append(text);
    }
  });
  container.replaceChildren(root);
}

function statusCell(status) {
  return el("td", { class: status === "ok" ? "status-ok" : "status-err" }, status);
}

let granularity = "hour";
let seenRequests = new Set();

async function refreshUsage() {
  const response = await fetch(`/usage/data?granularity=${granularity}`, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/signin?next=/usage"; return; }
  if (!response.ok) { $("#updated").textContent = `Update failed (HTTP ${response.status}); retrying`; return; }
  const data = await response.json();
  $("#wallet-balance").textContent = `$${data.wallet.balance}`;
  $("#wallet-locked").textContent = `$${data.wallet.locked_balance}`;
  $("#wallet-available").textContent = `$${data.wallet.available}`;
  $("#total-cost").textContent = `$${data.totals.cost}`;
  $("#total-requests").textContent = fmtInt(data.totals.requests);
  $("#total-error-rate").textContent = `${(data.totals.error_rate * 100).toFixed(1)}%`;
  $("#total-latency").textContent = data.totals.latency_ms_mean === null ? "–" : `${data.totals.latency_ms_mean} ms`;

  const starts = bucketStarts(data.since, data.until, data.granularity);
  const at = new Map(data.buckets.map((b) => [Date.parse(b.start), b]));
  const pick = (f) => starts.map((t) => (at.has(t) ? f(at.get(t)) : 0));
  barChart($("#chart-cost"), starts, [{ cls: "bar-a", values: pick((b) => Number(b.cost)) }], data.granularity,
           (v) => `$${v.toPrecision(3)}`);
  barChart($("#chart-tokens"), starts, [
    { cls: "bar-a", values: pick((b) => b.prompt_tokens) },
    { cls: "bar-b", values: pick((b) => b.completion_tokens) },
  ], data.granularity, fmtInt);
  barChart($("#chart-requests"), starts, [
    { cls: "bar-a", values: pick((b) => b.requests - b.errors) },
    { cls: "bar-err", values: pick((b) => b.errors) },
  ], data.granularity, fmtInt);

  const models = $("#models-table tbody");
  models.replaceChildren(...(data.models.length ? data.models.map((m) => el("tr", {},
    el("td", {}, el("code", {}, m.model)), el("td", { class: "num" }, fmtInt(m.requests)),
    el("td", { class: "num" }, fmtInt(m.errors)), el("td", { class: "num" }, fmtInt(m.prompt_tokens)),
    el("td", { class: "num" }, fmtInt(m.completion_tokens)), el("td", { class: "num" }, m.cost),
    el("td", { class: "num" }, m.latency_ms_p95_max === null ? "–" : `${m.latency_ms_p95_max} ms`),
  )) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No requests in this period."))]));

  const latest = $("#latest-table tbody");
  const first = seenRequests.size === 0;
  latest.replaceChildren(...(data.latest.length ? data.latest.map((r) => {
    const row = el("tr", { "data-request-id": r.id, class: !first && !seenRequests.has(r.id) ? "fresh" : "" },
      el("td", {}, new Date(r.created_at).toLocaleString()), el("td", {}, el("code", {}, r.id)),
      el("td", {}, r.model), statusCell(r.status), el("td", { class: "num" }, fmtInt(r.total_tokens)),
      el("td", { class: "num" }, r.cost), el("td", { class: "num" }, `${r.latency_ms} ms`));
    return row;
  }) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No requests yet."))]));
  seenRequests = new Set(data.latest.map((r) => r.id));
  $("#updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function initUsage() {
  const period = Number(document.body.dataset.pollSeconds) * 1000;
  document.querySelectorAll("[data-granularity]").forEach((button) => {
    button.addEventListener("click", () => {
      granularity = button.dataset.granularity;
      document.querySelectorAll("[data-granularity]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      refreshUsage();
    });
  });
  const loop = async () => {
    try { await refreshUsage(); } catch (e) { $("#updated").textContent = "Offline; retrying"; }
    setTimeout(loop, period);
  };
  loop();
}

onPage("usage", initUsage);
