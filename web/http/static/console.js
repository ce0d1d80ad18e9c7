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
