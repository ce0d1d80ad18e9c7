// /playground: a streamed chat through the session. Needs console.js.
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

function initPlayground() {
  const form = $("#pg-form"), model = $("#pg-model"), effort = $("#pg-effort"), verbosity = $("#pg-verbosity");
  const send = $("#pg-send"), stop = $("#pg-stop"), output = $("#pg-output"), meta = $("#pg-meta"), error = $("#pg-error");
  let controller = null;

  const syncOptions = () => {
    const option = model.selectedOptions[0];
    const efforts = option && option.dataset.efforts ? option.dataset.efforts.split(",") : [];
    $("#pg-effort-row").hidden = efforts.length === 0;
    effort.replaceChildren(el("option", { value: "" }, "Default"), ...efforts.map((e) => el("option", { value: e }, e)));
    $("#pg-verbosity-row").hidden = !(option && option.dataset.verbosity);
  };
  model.addEventListener("change", syncOptions);
  syncOptions();

  $("#pg-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  stop.addEventListener("click", () => controller && controller.abort());

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const messages = [];
    if ($("#pg-system").value.trim()) messages.push({ role: "system", content: $("#pg-system").value });
    messages.push({ role: "user", content: $("#pg-prompt").value });
    const body = { model: model.value, messages, stream: true, stream_options: { include_usage: true } };
    if (!$("#pg-effort-row").hidden && effort.value) body.reasoning_effort = effort.value;
    if (!$("#pg-verbosity-row").hidden && verbosity.value) body.verbosity = verbosity.value;

    controller = new AbortController();
    send.disabled = true; stop.disabled = false; error.hidden = true;
    output.textContent = ""; output.dataset.state = "streaming"; meta.textContent = "";
    let requestId = null, usage = null, stopped = false;
    try {
      const response = await fetch("/playground/chat/completions", {
        method: "POST", credentials: "same-origin", signal: controller.signal,
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify(body),
      });
      requestId = response.headers.get("x-request-id");
      if (!response.ok) {
        const payload = await response.json().catch(() => null);
        throw new Error(payload && payload.error ? payload.error.message : `HTTP ${response.status}`);
      }
      for await (const data of sseEvents(response.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) output.append(choice.delta.content);
        }
      }
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else { error.textContent = err.message; error.hidden = false; }
    } finally {
      output.dataset.state = stopped ? "stopped" : "done";
      send.disabled = false; stop.disabled = true; controller = null;
    }
    if (requestId) showCost(requestId, usage, stopped);
  });

  async function showCost(requestId, usage, stopped) {
    // The request's log is written within a second of its end; it holds the charged cost.
    for (let attempt = 0; attempt < 20; attempt++) {
      const response = await fetch(`/usage/data/requests/${requestId}`, { credentials: "same-origin" });
      if (response.ok) {
        const r = await response.json();
        meta.textContent = `${stopped ? "Stopped. " : ""}${fmtInt(r.prompt_tokens)} prompt + ${fmtInt(r.completion_tokens)} completion tokens · $${r.cost} · ${r.latency_ms} ms · ${r.id}`;
        meta.dataset.cost = r.cost;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    if (usage) meta.textContent = `${fmtInt(usage.prompt_tokens)} prompt + ${fmtInt(usage.completion_tokens)} completion tokens`;
  }
}

onPage("playground", initPlayground);
