// /admin: the deployments table (polled), the accounts list (search, pages) and the top-up
// form. Needs console.js. Money arrives as exact decimal strings and is shown with moneyEl.
"use strict";

const HEALTH = { closed: "closed (healthy)", cooling: "cooling down", half_open: "half open (probing)", open: "open (refusing)" };

const getJson = (url) => getFeed(url, "/admin/signin");

function showError(node, error) {
  node.textContent = error ? String(error.message || error) : "";
  node.hidden = !error;
}

function deploymentRow(d) {
  const windows = Object.entries(d.windows).map(([name, w]) =>
    `${name} ${fmtInt(Math.round(w.used))} / ${w.limit == null ? "∞" : fmtInt(w.limit)}`).join(" · ");
  return el("tr", { "data-deployment": d.name },
    el("td", {}, el("code", {}, d.name), d.enabled ? "" : el("span", { class: "muted small" }, " (disabled)")),
    el("td", {}, d.model),
    el("td", {}, d.region || "–"),
    el("td", { class: `health health-${d.health}` }, HEALTH[d.health] || d.health),
    el("td", { class: "num in-flight" }, fmtInt(d.in_flight)),
    el("td", { class: "num requests" }, fmtInt(d.requests)),
    el("td", { class: "num failures" }, fmtInt(d.failures)),
    el("td", { class: "windows" }, windows || "no limits"),
    el("td", { class: "num latency" }, d.latency_ms == null ? "–" : `${d.latency_ms} ms`),
    el("td", { class: "num cooldown" }, d.cooldown_seconds > 0 ? `${d.cooldown_seconds} s` : "–"),
    el("td", { class: "last-error" }, d.last_error || el("span", { class: "muted" }, "none")),
  );
}

async function refreshDeployments() {
  try {
    const body = await getJson("/admin/data/deployments");
    $("#deployments-table tbody").replaceChildren(...body.data.map(deploymentRow));
    $("#deployments-updated").textContent = `Updated ${fmtTime(new Date().toISOString())}`;
    showError($("#deployments-error"), null);
  } catch (error) {
    showError($("#deployments-error"), error);
  }
}

// Pages are keyset pages: the cursor of page n is the last account id of page n - 1.
const accounts = { q: "", cursors: [null], page: 0, hasMore: false };

function accountRow(a) {
  const button = el("button", { type: "button", class: "link top-up", "aria-label": `Top up ${a.email}` }, "Top up…");
  button.addEventListener("click", () => openTopUp(a));
  return el("tr", { "data-account-id": a.id },
    el("td", {}, a.email),
    el("td", {}, el("code", { class: "small" }, a.id)),
    el("td", {}, el("time", { datetime: a.created_at, title: a.created_at }, fmtTime(a.created_at))),
    el("td", { class: "num balance" }, moneyEl(a.balance, 2)),
    el("td", { class: "num locked" }, moneyEl(a.locked_balance, 2)),
    el("td", { class: "num available" }, moneyEl(a.available, 2)),
    el("td", {}, button),
  );
}

async function loadAccounts() {
  const params = new URLSearchParams({ q: accounts.q });
  const after = accounts.cursors[accounts.page];
  if (after) params.set("after", after);
  try {
    const body = await getJson(`/admin/data/accounts?${params}`);
    $("#accounts-table tbody").replaceChildren(...body.data.map(accountRow));
    $("#accounts-empty").hidden = body.data.length > 0;
    accounts.hasMore = body.has_more;
    accounts.cursors[accounts.page + 1] = body.data.length ? body.data[body.data.length - 1].id : null;
    $("#accounts-prev").disabled = accounts.page === 0;
    $("#accounts-next").disabled = !body.has_more;
    $("#accounts-page").textContent = `Page ${accounts.page + 1}`;
    showError($("#accounts-error"), null);
  } catch (error) {
    showError($("#accounts-error"), error);
  }
}

// getRandomValues, not randomUUID: the latter exists only on HTTPS or localhost, and /admin
// may be reached over plain HTTP inside a private network.
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  $("#top-up-key").value = `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function openTopUp(account) {
  $("#top-up").hidden = false;
  $("#top-up-email").textContent = account.email;
  $("#top-up-account").value = account.id;
  $("#top-up-result").textContent = "";
  newIdempotencyKey();
  changeTopUp();
}

// Credit asks once more, naming the amount and the account: a typo credits real money.
function askTopUp(event) {
  event.preventDefault();
  if (!$("#top-up-form").reportValidity()) return;
  $("#top-up-confirm-text").textContent =
    `Credit $${$("#top-up-amount").value.trim()} to ${$("#top-up-email").textContent}?`;
  $("#top-up-confirm").hidden = false;
  $("#top-up-submit").disabled = true;
  $("#top-up-confirm-yes").focus();
}

function changeTopUp() {
  $("#top-up-confirm").hidden = true;
  $("#top-up-submit").disabled = false;
  $("#top-up-amount").focus();
}

async function submitTopUp() {
  $("#top-up-confirm").hidden = true;
  const form = $("#top-up-form");
  const submit = $("#top-up-submit");
  submit.disabled = true;
  const result = $("#top-up-result");
  try {
    const response = await fetch("/admin/top-up", {
      method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401) { location.assign("/admin/signin"); return; }
    const body = await response.json();
    if (!response.ok) {
      result.className = "error";
      result.textContent = body.error.message;
      return;
    }
    const t = body.transaction;
    result.className = "";
    result.replaceChildren(
      body.replayed ? "Already credited (this form was sent before): " : "Credited ",
      moneyEl(t.amount, 2), ` as ${t.type} ${t.id}; balance now `, moneyEl(body.wallet.balance, 2),
      ", available ", moneyEl(body.wallet.available, 2), ".",
    );
    result.dataset.transaction = t.id;
    form.reset();
    newIdempotencyKey(); // the next credit is a new one
    await loadAccounts();
  } catch (error) {
    result.className = "error";
    result.textContent = `The top-up may not have arrived (${error.message}); send it again: it credits once.`;
  } finally {
    submit.disabled = false;
  }
}

onPage("admin", () => {
  for (const node of document.querySelectorAll(".zone-label")) node.textContent = zoneLabel();
  const every = Number(document.body.dataset.pollSeconds || 5) * 1000;
  refreshDeployments();
  setInterval(refreshDeployments, every);
  loadAccounts();
  $("#accounts-search").addEventListener("submit", (event) => {
    event.preventDefault();
    accounts.q = $("#accounts-q").value.trim();
    accounts.cursors = [null];
    accounts.page = 0;
    loadAccounts();
  });
  $("#accounts-next").addEventListener("click", () => { accounts.page += 1; loadAccounts(); });
  $("#accounts-prev").addEventListener("click", () => { accounts.page = Math.max(0, accounts.page - 1); loadAccounts(); });
  $("#top-up-form").addEventListener("submit", askTopUp);
  $("#top-up-confirm-yes").addEventListener("click", submitTopUp);
  $("#top-up-confirm-no").addEventListener("click", changeTopUp);
  $("#top-up-cancel").addEventListener("click", () => { changeTopUp(); $("#top-up").hidden = true; });
});
