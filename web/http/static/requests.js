// /requests (the request log, filtered and paged) and /requests/<id> (one request and its
// wallet movements). Needs console.js. The rows are the API's (/api/v1/usage/requests) as
// the /requests/data feeds send them; filters are the page's query string, applied by the
// server.
"use strict";

const FILTER_NAMES = ["model", "key_id", "status", "stream"];

function statusEl(status) {
  return el("span", { class: status === "ok" ? "status-ok" : "status-err" }, status);
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${fmtInt(value)} ms`;
}

// A feed of this page; signed out, the sign-in form comes back to this page with its filters.
const feed = (url) => getFeed(url, `/signin?next=${encodeURIComponent(location.pathname + location.search)}`);

// -- the log ----------------------------------------------------------------------------------

function initLog() {
  showZones();
  const given = new URLSearchParams(location.search);
  const filters = new URLSearchParams();
  for (const name of FILTER_NAMES) if (given.get(name)) filters.set(name, given.get(name));
  const prefixes = new Map([...document.querySelectorAll("#filter-key option[data-prefix]")]
    .map((option) => [option.value, option.dataset.prefix]));
  const row = (r) => el("tr", { "data-request-id": r.id },
    el("td", {}, timeEl(r.created_at)),
    el("td", {}, el("a", { href: `/requests/${encodeURIComponent(r.id)}` }, el("code", {}, r.id))),
    el("td", {}, r.model),
    el("td", { title: r.key_id }, el("code", {}, prefixes.has(r.key_id) ? `${prefixes.get(r.key_id)}…` : r.key_id)),
    el("td", {}, statusEl(r.status)),
    el("td", {}, r.stream ? "yes" : "no"),
    el("td", { class: "num" }, fmtInt(r.total_tokens)),
    el("td", { class: "num" }, moneyEl(r.cost, 6)),
    el("td", { class: "num" }, ms(r.latency_ms)),
    el("td", { class: "num" }, ms(r.ttft_ms)));

  const pager = cursorPager(
    (after) => {
      const query = new URLSearchParams(filters);
      query.set("limit", "50");
      if (after) query.set("after", after);
      $("#log-status").textContent = "Loading…";
      return feed(`/requests/data?${query}`);
    },
    (page) => {
      $("#requests-table tbody").replaceChildren(...(page.data.length ? page.data.map(row)
        : [el("tr", {}, el("td", { colspan: 10, class: "muted" }, filters.toString() ? "No request matches these filters." : "No requests yet."))]));
      $("#log-status").textContent = `${fmtInt(page.data.length)} requests on this page${page.has_more ? "; older ones on the next" : ""}`;
    },
    (error) => { $("#log-status").textContent = `Could not load the log: ${error.message}`; },
  );
  pager.show(0);
}

// -- one request ------------------------------------------------------------------------------

async function initDetail(detail) {
  showZones();
  const id = detail.dataset.requestId;
  let data;
  try {
    data = await feed(`/requests/data/${encodeURIComponent(id)}`);
  } catch (error) {
    $("#detail-status").textContent = `Could not load the request: ${error.message}`;
    return;
  }
  const r = data.request;
  const set = (name, ...content) => { $(`#f-${name}`).replaceChildren(...content); };
  set("created_at", timeEl(r.created_at));
  set("status", statusEl(r.status));
  for (const name of ["model", "provider"]) set(name, r[name]);
  set("region", r.region === null ? "–" : r.region);
  const prefix = detail.dataset.keyPrefix;
  set("key_id", el("code", {}, r.key_id), prefix ? ` (${prefix}…)` : "");
  set("stream", r.stream ? "yes" : "no");
  for (const name of ["prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens"]) {
    set(name, fmtInt(r[name]));
  }
  set("cost", moneyEl(r.cost, 6));
  set("latency_ms", ms(r.latency_ms));
  set("ttft_ms", ms(r.ttft_ms));
  set("upstream_request_id", r.upstream_request_id === null ? "–" : el("code", {}, r.upstream_request_id));
  set("error_message", r.error_message === null ? "–" : r.error_message);
  $("#ledger-table tbody").replaceChildren(...(data.ledger.length ? data.ledger.map((t) => el("tr", { "data-transaction": t.id },
    el("td", {}, timeEl(t.created_at)), el("td", {}, el("code", {}, t.id)), el("td", {}, t.type),
    el("td", { class: "num" }, moneyEl(t.amount, 6)), el("td", { class: "num" }, moneyEl(t.balance_after, 6)),
    el("td", { class: "num" }, moneyEl(t.locked_after, 6))))
    : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No wallet movement: nothing was held for this request."))]));
  $("#detail-status").textContent = "";
  detail.dataset.loaded = "true";
}

onPage("requests", () => {
  const detail = $("#request-detail");
  if (detail) initDetail(detail);
  else if ($("#requests-table")) initLog();
});
