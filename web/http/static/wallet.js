// /wallet: the wallet's tiles and balance chart (polled from /wallet/data) and its
// transactions, paged (/wallet/data/transactions, the API's list). Needs console.js and
// charts.js (with the vendored uPlot).
"use strict";

const STEP_MS = { hour: 3600e3, day: 86400e3 };

function walletTime(iso) {
  return el("time", { datetime: iso }, fmtTime(iso));
}

async function walletFeed(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    location.href = "/signin?next=/wallet";
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

function drawBalance(data) {
  const points = data.balance_history;
  const exact = new Map(points.map((p) => [Number(p.balance), p.balance]));
  const container = $("#chart-balance");
  const hourly = data.granularity === "hour";
  drawChart(container, {
    x: points.map((p) => Date.parse(p.start) + STEP_MS[data.granularity]),
    series: [{ label: "Balance", values: points.map((p) => Number(p.balance)) }],
    kind: "lines",
    format: (v) => fmtMoney(v, v >= 100 ? 0 : 2),
    exact: (v) => `$${exact.has(v) ? exact.get(v) : v}`,
    timeLabel: (t) => (hourly ? fmtTime(new Date(t).toISOString()) : new Date(t).toLocaleDateString("en-US", { dateStyle: "medium" })),
  });
  container.dataset.lastBalance = points.length ? points[points.length - 1].balance : "";
  container.dataset.points = String(points.length);
  $("#chart-step").textContent = hourly ? "hour" : "day";
}

function initWallet() {
  document.querySelectorAll(".zone").forEach((node) => { node.textContent = `(${zoneLabel()})`; });
  let granularity = "hour";
  const cursors = [null];
  let current = 0;

  async function refresh() {
    const data = await walletFeed(`/wallet/data?granularity=${granularity}`);
    for (const [id, value] of [["#wallet-balance", data.wallet.balance], ["#wallet-locked", data.wallet.locked_balance],
                               ["#wallet-available", data.wallet.available]]) {
      $(id).replaceChildren(moneyEl(value, 2));
    }
    drawBalance(data);
    $("#wallet-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  const row = (t) => el("tr", { "data-transaction": t.id },
    el("td", {}, walletTime(t.created_at)),
    el("td", {}, el("code", {}, t.id)),
    el("td", {}, t.type),
    el("td", { class: "num" }, moneyEl(t.amount, 6)),
    el("td", { class: "num" }, moneyEl(t.balance_after, 6)),
    el("td", {}, t.request_id ? el("a", { href: `/requests/${encodeURIComponent(t.request_id)}` }, el("code", {}, t.request_id)) : "–"));

  async function show(index) {
    const query = new URLSearchParams({ limit: "25" });
    if (cursors[index]) query.set("after", cursors[index]);
    $("#page-newer").disabled = true;
    $("#page-older").disabled = true;
    const page = await walletFeed(`/wallet/data/transactions?${query}`);
    current = index;
    $("#transactions-table tbody").replaceChildren(...(page.data.length ? page.data.map(row)
      : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No transactions yet."))]));
    if (page.has_more) cursors[index + 1] = page.last_id;
    $("#page-newer").disabled = index === 0;
    $("#page-older").disabled = !page.has_more;
    $("#page-label").textContent = `Page ${index + 1}`;
  }

  document.querySelectorAll("[data-granularity]").forEach((button) => {
    button.addEventListener("click", () => {
      granularity = button.dataset.granularity;
      document.querySelectorAll("[data-granularity]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      refresh().catch((error) => { $("#wallet-updated").textContent = `Update failed: ${error.message}`; });
    });
  });
  $("#page-newer").addEventListener("click", () => show(current - 1));
  $("#page-older").addEventListener("click", () => show(current + 1));

  // One submission per rendering of the form: its idempotency key makes a second one a
  // no-op anyway; disabling the button spares the round trip.
  const form = $("#top-up-form");
  if (form) form.addEventListener("submit", () => { $("#top-up-submit").disabled = true; });

  const period = Number(document.body.dataset.pollSeconds) * 1000;
  const loop = async () => {
    try {
      await refresh();
      if (current === 0) await show(0);
    } catch (error) {
      $("#wallet-updated").textContent = `Update failed (${error.message}); retrying`;
    }
    setTimeout(loop, period);
  };
  loop();
}

onPage("wallet", initWallet);
