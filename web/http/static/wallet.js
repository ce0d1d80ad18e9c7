// /wallet: the wallet's tiles and balance chart (polled from /wallet/data) and its
// transactions, paged (/wallet/data/transactions, the API's list). Needs console.js and
// charts.js (with the vendored uPlot).
"use strict";

const STEP_MS = { hour: 3600e3, day: 86400e3 };

const walletFeed = (url) => getFeed(url, "/signin?next=/wallet");

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
  showZones();
  let granularity = "hour";

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
    el("td", {}, timeEl(t.created_at)),
    el("td", {}, el("code", {}, t.id)),
    el("td", {}, t.type),
    el("td", { class: "num" }, moneyEl(t.amount, 6)),
    el("td", { class: "num" }, moneyEl(t.balance_after, 6)),
    el("td", {}, t.request_id ? el("a", { href: `/requests/${encodeURIComponent(t.request_id)}` }, el("code", {}, t.request_id)) : "–"));

  const pager = cursorPager(
    (after) => {
      const query = new URLSearchParams({ limit: "25" });
      if (after) query.set("after", after);
      return walletFeed(`/wallet/data/transactions?${query}`);
    },
    (page) => {
      $("#transactions-table tbody").replaceChildren(...(page.data.length ? page.data.map(row)
        : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No transactions yet."))]));
    },
    (error) => { $("#wallet-updated").textContent = `Update failed (${error.message}); retrying`; },
  );

  document.querySelectorAll("[data-granularity]").forEach((button) => {
    button.addEventListener("click", () => {
      granularity = button.dataset.granularity;
      document.querySelectorAll("[data-granularity]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      refresh().catch((error) => { $("#wallet-updated").textContent = `Update failed: ${error.message}`; });
    });
  });

  // One submission per rendering of the form: its idempotency key makes a second one a
  // no-op anyway; disabling the button spares the round trip.
  const form = $("#top-up-form");
  if (form) form.addEventListener("submit", () => { $("#top-up-submit").disabled = true; });

  const period = Number(document.body.dataset.pollSeconds) * 1000;
  const loop = async () => {
    try {
      await refresh();
      if (pager.shown() === 0) await pager.show(0);
    } catch (error) {
      $("#wallet-updated").textContent = `Update failed (${error.message}); retrying`;
    }
    setTimeout(loop, period);
  };
  loop();
}

onPage("wallet", initWallet);
