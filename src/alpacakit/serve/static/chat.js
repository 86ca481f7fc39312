// The chat page of `alpacakit serve`: plain JavaScript, no libraries, no external requests.
// It talks to the same server's OpenAI-compatible API: POST /v1/chat/completions with
// "stream": true, read with fetch() as server-sent events, so tokens appear as they are made.
// The whole conversation is sent with every request (the server keeps no state).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const messagesEl = $("messages"), promptEl = $("prompt"), sendBtn = $("send"), stopBtn = $("stop");
  const statusEl = $("status"), modelEl = $("model"), keyEl = $("api-key");
  const KEY_STORE = "alpacakit.apiKey";

  let history = [];          // [{role, content}] of finished turns
  let modelId = "";
  let controller = null;     // AbortController of the request in flight

  keyEl.value = sessionStorage.getItem(KEY_STORE) || "";
  keyEl.addEventListener("change", () => { sessionStorage.setItem(KEY_STORE, keyEl.value.trim()); loadModel(); });

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = keyEl.value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function setState(state, text) {
    document.body.dataset.state = state;
    statusEl.textContent = text || "";
    const busy = state === "streaming" || state === "waiting";
    sendBtn.disabled = busy;
    stopBtn.hidden = !busy;
  }

  function bubble(role, text) {
    const el = document.createElement("div");
    el.className = "msg " + role;
    el.textContent = text;
    messagesEl.appendChild(el);
    el.scrollIntoView({ block: "end" });
    return el;
  }

  function note(el, text) {
    const n = document.createElement("span");
    n.className = "note";
    n.textContent = text;
    el.appendChild(n);
  }

  async function errorText(res) {
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) { /* not JSON */ }
    return "HTTP " + res.status;
  }

  async function loadModel() {
    try {
      const res = await fetch("/v1/models", { headers: headers() });
      if (res.status === 401) {
        modelEl.textContent = "(API key needed)";
        $("settings").open = true;
        setState("idle", "This server needs an API key: enter it under Settings.");
        return;
      }
      if (!res.ok) throw new Error(await errorText(res));
      const body = await res.json();
      modelId = body.data && body.data[0] ? body.data[0].id : "";
      modelEl.textContent = modelId;
      setState("idle", "");
    } catch (e) {
      setState("idle", "Cannot reach the server: " + e.message);
    }
  }

  // Server-sent events: "data: {...}" lines, events separated by a blank line.
  async function readEvents(res, onData) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          onData(JSON.parse(data));
        }
      }
    }
  }

  async function send(text) {
    const system = $("system").value.trim();
    const turn = { role: "user", content: text };
    const messages = (system ? [{ role: "system", content: system }] : []).concat(history, [turn]);
    bubble("user", text);
    const out = bubble("assistant streaming", "");
    out.dataset.chunks = "0";
    let answer = "", finish = null;
    controller = new AbortController();
    setState("waiting", "Waiting for the model…");
    try {
      const res = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers(),
        signal: controller.signal,
        body: JSON.stringify({
          model: modelId || "default",
          messages,
          stream: true,
          max_tokens: parseInt($("max-tokens").value, 10) || 256,
          temperature: parseFloat($("temperature").value) || 0,
        }),
      });
      if (!res.ok) throw new Error(await errorText(res));
      setState("streaming", "Generating…");
      await readEvents(res, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) return;
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          answer += piece;
          out.textContent = answer;
          out.dataset.chunks = String(parseInt(out.dataset.chunks, 10) + 1);
          out.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      });
      history.push(turn, { role: "assistant", content: answer });
      if (finish === "length") note(out, "(cut at the max tokens limit)");
      if (finish === "content_filter") note(out, "(stopped by the server's safety filter)");
      setState("idle", "");
    } catch (e) {
      if (e.name === "AbortError") {
        history.push(turn, { role: "assistant", content: answer });
        note(out, "(stopped)");
        setState("idle", "");
      } else {
        out.classList.add("error");
        out.textContent = answer ? answer + "\n" : "";
        note(out, "Error: " + e.message);
        setState("idle", "The request failed; the message was not added to the conversation.");
      }
    } finally {
      out.classList.remove("streaming");
      out.dataset.done = "true";
      controller = null;
    }
  }

  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = promptEl.value.trim();
    if (!text || controller) return;
    promptEl.value = "";
    send(text);
  });
  promptEl.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  stopBtn.addEventListener("click", () => { if (controller) controller.abort(); });
  $("reset").addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    for (const el of Array.from(messagesEl.querySelectorAll(".msg"))) el.remove();
    setState("idle", "New conversation.");
    promptEl.focus();
  });

  loadModel();
})();
