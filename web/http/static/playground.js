// /playground: a multi-turn conversation streamed through the session. Needs console.js.
//
// Every turn posts the whole conversation (system prompt, then the user and assistant turns so
// far, then the new message) to /playground/chat/completions, the chat completions route
// behind the session, with stream: true. A turn joins the conversation once its answer has
// text (a stopped answer joins with the text shown); a refused or failed turn stays on screen,
// marked, but is not sent again, and its message goes back into the message box.
// A finished turn shows the request log's numbers (GET /usage/data/requests/<id>): tokens,
// the cost charged, latency, time to first token and the request id.
"use strict";

// Parse an SSE byte stream: yields the data of each event.
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

// An error the API answered (its envelope's fields), as opposed to a network failure.
class ApiError extends Error {
  constructor(error, status) {
    super(error.message || `HTTP ${status}`);
    this.code = error.code || null;
    this.param = error.param || null;
    this.requestId = error.request_id || null;
    this.status = status;
  }
}

const COST_DECIMALS = 6;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function initPlayground() {
  const form = $("#pg-form");
  if (!form) return; // no chat model enabled
  const model = $("#pg-model"), effort = $("#pg-effort"), verbosity = $("#pg-verbosity");
  const maxTokens = $("#pg-max-tokens"), temperature = $("#pg-temperature"), fast = $("#pg-fast");
  const system = $("#pg-system"), prompt = $("#pg-prompt"), transcript = $("#pg-transcript");
  const send = $("#pg-send"), stop = $("#pg-stop"), status = $("#pg-status");
  const conversation = []; // {role, content} of the turns that are sent again
  let controller = null;
  let generation = 0; // New conversation starts the next one; a turn of an earlier one is dropped

  const option = () => model.selectedOptions[0];

  function syncControls() {
    const o = option().dataset;
    const efforts = o.efforts ? o.efforts.split(",") : [];
    const keep = effort.value;
    effort.replaceChildren(el("option", { value: "" }, "Default"), ...efforts.map((e) => el("option", { value: e }, e)));
    effort.value = efforts.includes(keep) ? keep : "";
    $("#pg-effort-row").hidden = efforts.length === 0;
    $("#pg-verbosity-row").hidden = !o.verbosity;
    $("#pg-temperature-row").hidden = !o.temperature;
    $("#pg-temperature-off").hidden = Boolean(o.temperature);
    $("#pg-fast-row").hidden = !o.fast;
    if (!o.fast) fast.checked = false;
    $("#pg-fast-hint").textContent = o.fast
      ? `Priority processing (service_tier "priority"), billed at $${o.priorityInput} input and $${o.priorityOutput} output per 1M tokens.`
      : "";
    const limit = Number(o.maxOutput);
    maxTokens.max = String(limit);
    maxTokens.dataset.param = o.capParam;
    $("#pg-max-tokens-hint").replaceChildren(
      "Sent as ", el("code", {}, o.capParam),
      o.capParam === "max_completion_tokens" ? ", which also bounds the reasoning tokens" : "",
      `; at most ${fmtInt(limit)}. Empty: the model's limit.`,
    );
    $("#pg-model-hint").textContent = `$${o.input} input, $${o.output} output per 1M tokens.`;
  }
  model.addEventListener("change", syncControls);
  syncControls();

  function requestBody() {
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push(...conversation, { role: "user", content: prompt.value });
    const body = { model: model.value, messages, stream: true, stream_options: { include_usage: true } };
    if (maxTokens.value) body[maxTokens.dataset.param] = Number(maxTokens.value);
    if (!$("#pg-temperature-row").hidden && temperature.value !== "") body.temperature = Number(temperature.value);
    if (!$("#pg-effort-row").hidden && effort.value) body.reasoning_effort = effort.value;
    if (!$("#pg-verbosity-row").hidden && verbosity.value) body.verbosity = verbosity.value;
    if (!$("#pg-fast-row").hidden && fast.checked) body.service_tier = "priority";
    return body;
  }

  function syncEmpty() {
    $("#pg-empty").hidden = transcript.children.length > 0;
  }

  // Keep the newest text in view while the reader is at the bottom of the page.
  function follow() {
    const root = document.documentElement;
    if (window.innerHeight + window.scrollY >= root.scrollHeight - 120) window.scrollTo(0, root.scrollHeight);
  }

  function userTurn(text) {
    const turn = el("li", { class: "turn user", "data-role": "user" },
      el("div", { class: "turn-head" }, el("span", { class: "who" }, "You")),
      el("div", { class: "turn-text" }, text));
    transcript.append(turn);
    return turn;
  }

  function assistantTurn(body) {
    const head = el("div", { class: "turn-head" }, el("span", { class: "who" }, "Assistant"),
      el("span", { class: "turn-model" }, body.model));
    if (body.service_tier) head.append(el("span", { class: "badge", title: "Requested service_tier priority" }, "Fast"));
    const turn = el("li", { class: "turn assistant", "data-role": "assistant", "data-state": "streaming" },
      head, el("div", { class: "turn-text" }));
    transcript.append(turn);
    return turn;
  }

  function stat(label, value, name) {
    return el("div", { "data-stat": name }, el("dt", {}, label), el("dd", {}, value));
  }

  function requestLink(id) {
    return el("a", { href: `/requests/${encodeURIComponent(id)}`, class: "request-link" }, el("code", {}, id));
  }

  // The turn's numbers from its request log (written within a second or so of the end).
  // A refused request may have no log (it was turned away before anything was held): after
  // ``attempts`` polls, only its id is shown.
  async function showStats(turn, requestId, tier, attempts) {
    const stats = el("dl", { class: "turn-stats", "data-state": "pending" },
      stat("Request", el("code", {}, requestId), "request"), stat("Cost", "…", "cost"));
    turn.append(stats);
    turn.dataset.requestId = requestId;
    for (let attempt = 0; attempt < attempts; attempt++) {
      const response = await fetch(`/usage/data/requests/${encodeURIComponent(requestId)}`, { credentials: "same-origin" });
      if (response.status === 401) { window.location.assign(`/signin?next=${encodeURIComponent("/playground")}`); return; }
      if (response.ok) {
        const r = await response.json();
        const items = [
          stat("Prompt", fmtInt(r.prompt_tokens), "prompt"),
          stat("Completion", fmtInt(r.completion_tokens), "completion"),
        ];
        if (r.reasoning_tokens) items.push(stat("Reasoning", fmtInt(r.reasoning_tokens), "reasoning"));
        if (r.cached_tokens) items.push(stat("Cached", fmtInt(r.cached_tokens), "cached"));
        items.push(stat("Cost", moneyEl(r.cost, COST_DECIMALS), "cost"));
        items.push(stat("Latency", `${fmtInt(r.latency_ms)} ms`, "latency"));
        items.push(stat("TTFT", r.ttft_ms == null ? "–" : `${fmtInt(r.ttft_ms)} ms`, "ttft"));
        if (tier) items.push(stat("Tier", tier, "tier"));
        items.push(stat("Request", requestLink(r.id), "request"));
        stats.replaceChildren(...items);
        stats.dataset.state = "done";
        stats.dataset.cost = r.cost;
        stats.dataset.status = r.status;
        return;
      }
      await sleep(250);
    }
    stats.dataset.state = "missing";
    stats.replaceChildren(stat("Request", el("code", {}, requestId), "request"));
  }

  function showError(turn, err) {
    const box = el("div", { class: "turn-error", role: "alert" });
    if (err instanceof ApiError && err.code) box.append(el("code", { class: "error-code" }, err.code), " ");
    box.append(err.message);
    if (err.param) box.append(" ", el("span", { class: "muted" }, "(parameter "), el("code", {}, err.param), el("span", { class: "muted" }, ")"));
    if (err.code === "insufficient_balance") box.append(" ", el("a", { href: "/wallet" }, "Top up in Wallet"));
    if (err.status === 401) box.append(" ", el("a", { href: "/signin?next=%2Fplayground" }, "Sign in again"));
    turn.append(box);
  }

  async function runTurn() {
    const text = prompt.value;
    const body = requestBody();
    const mine = generation;
    const user = userTurn(text);
    const turn = assistantTurn(body);
    const output = turn.querySelector(".turn-text");
    syncEmpty();
    prompt.value = "";
    controller = new AbortController();
    send.disabled = true; stop.disabled = false;
    status.textContent = "Answer streaming.";
    follow();
    let requestId = null, tier = null, failure = null, stopped = false;
    try {
      const response = await fetch("/playground/chat/completions", {
        method: "POST", credentials: "same-origin", signal: controller.signal,
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify(body),
      });
      requestId = response.headers.get("x-request-id");
      if (!response.ok) {
        const payload = await response.json().catch(() => null);
        throw new ApiError((payload && payload.error) || {}, response.status);
      }
      for await (const data of sseEvents(response.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error, 200);
        if (chunk.service_tier && body.service_tier) tier = chunk.service_tier;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) { output.append(choice.delta.content); follow(); }
          if (choice.finish_reason === "length") turn.dataset.finish = "length";
        }
      }
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else failure = err;
    } finally {
      send.disabled = false; stop.disabled = true; controller = null;
    }
    if (mine !== generation) return; // cleared by New conversation while it streamed
    const answer = output.textContent;
    if (failure || !answer) {
      // Not part of the conversation: the next turn does not send it.
      turn.dataset.state = failure ? "error" : "stopped";
      user.dataset.excluded = turn.dataset.excluded = "true";
      if (failure) showError(turn, failure);
      turn.append(el("p", { class: "hint" }, "Not part of the conversation; your message is back in the box."));
      if (stopped && !requestId) {
        turn.append(el("p", { class: "hint" }, "Stopped before the gateway answered: what it charged, if anything, is in ",
          el("a", { href: "/usage" }, "Usage"), "."));
      }
      if (!prompt.value) prompt.value = text;
      status.textContent = failure ? `Request failed: ${failure.message}` : "Stopped before any text.";
    } else {
      conversation.push({ role: "user", content: text }, { role: "assistant", content: answer });
      turn.dataset.state = stopped ? "stopped" : "done";
      if (stopped) turn.querySelector(".turn-head").append(el("span", { class: "badge muted" }, "Stopped"));
      if (turn.dataset.finish === "length") turn.append(el("p", { class: "hint" }, "The answer reached the max tokens."));
      status.textContent = stopped ? "Stopped." : "Answer complete.";
    }
    prompt.focus();
    if (requestId) await showStats(turn, requestId, tier, failure ? 8 : 40);
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (controller || !prompt.value.trim()) return;
    runTurn();
  });
  const sendKeys = (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
  };
  prompt.addEventListener("keydown", sendKeys);
  system.addEventListener("keydown", sendKeys);
  form.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && controller) { e.preventDefault(); controller.abort(); }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  $("#pg-new").addEventListener("click", () => {
    generation += 1;
    if (controller) controller.abort();
    conversation.length = 0;
    transcript.replaceChildren();
    syncEmpty();
    status.textContent = "New conversation.";
    prompt.focus();
  });
}

onPage("playground", initPlayground);
