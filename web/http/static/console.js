// Omixa dashboard: what every page shares (DOM helpers, formatting). Each page has a script
// of its own that registers its init with onPage(name, init). Plain browser JavaScript. Every number shown comes from the server as
// text (money as exact decimal strings) and is displayed as received.
"use strict";

const csrf = () => document.body.dataset.csrf;
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const intFmt = new Intl.NumberFormat("en-US");
const fmtInt = (n) => intFmt.format(n);

// Money arrives as exact decimal strings ("0.000000060"). A view shows a fixed number of
// decimals (so columns line up) and keeps the exact amount for hover.
function fmtMoney(value, decimals = 2) {
  const n = Number(value);
  const shown = Math.abs(n).toLocaleString("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
  return `${n < 0 ? "-" : ""}$${shown}`;
}
function moneyEl(value, decimals = 2, tag = "span") {
  return el(tag, { class: "money", title: `$${value} exactly`, "data-exact": String(value) }, fmtMoney(value, decimals));
}

// The browser's time zone, for labels: "Europe/Paris (UTC+01:00)".
function zoneLabel() {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  const minutes = -new Date().getTimezoneOffset();
  const pad = (n) => String(Math.floor(Math.abs(n))).padStart(2, "0");
  return `${zone} (UTC${minutes >= 0 ? "+" : "-"}${pad(minutes / 60)}:${pad(minutes % 60)})`;
}

// A moment in the browser's zone, the zone named: "Dec 6, 2026, 14:03:05 GMT+1".
const timeFmt = new Intl.DateTimeFormat("en-US", {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  hourCycle: "h23", timeZoneName: "short",
});
const fmtTime = (iso) => timeFmt.format(new Date(iso));

// Runs init once the DOM is ready, on the page whose <body data-page> is name.
function onPage(name, init) {
  document.addEventListener("DOMContentLoaded", () => {
    if (document.body.dataset.page === name) init();
  });
}

// A moment as a <time> element, shown in the browser's zone (fmtTime).
function timeEl(iso) {
  return el("time", { datetime: iso }, fmtTime(iso));
}

// Every ".zone" element (a column heading's) says the browser's zone: "(Europe/Paris (UTC+01:00))".
function showZones() {
  document.querySelectorAll(".zone").forEach((node) => { node.textContent = `(${zoneLabel()})`; });
}

// A console feed's JSON. On 401 (the session is gone) the page goes to ``signedOut`` (the
// sign-in form, coming back here) and the call fails; another error fails with the
// envelope's message.
async function getFeed(url, signedOut) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    location.assign(signedOut);
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

// A list paged by the API's cursor, with the page's #page-newer and #page-older buttons and
// #page-label. ``fetchPage(after)`` reads one page ({data, has_more, last_id}; ``after``
// null for the first), ``render(page)`` draws it, ``onError(error)`` says a page could not be
// read (the page shown stays; only Newer can be tried). Returns ``{show(index), shown()}``:
// show(0) draws the first page; shown() is the index of the page shown.
function cursorPager(fetchPage, render, onError) {
  const newer = $("#page-newer"), older = $("#page-older");
  const cursors = [null];  // the `after` of each page shown so far: page n is cursors[n - 1]
  let current = 0;
  async function show(index) {
    newer.disabled = true;
    older.disabled = true;
    let page;
    try {
      page = await fetchPage(cursors[index]);
    } catch (error) {
      newer.disabled = index === 0;
      onError(error);
      return;
    }
    current = index;
    render(page);
    if (page.has_more) cursors[index + 1] = page.last_id;
    newer.disabled = index === 0;
    older.disabled = !page.has_more;
    $("#page-label").textContent = `Page ${index + 1}`;
  }
  newer.addEventListener("click", () => show(current - 1));
  older.addEventListener("click", () => show(current + 1));
  return { show, shown: () => current };
}
