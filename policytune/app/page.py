"""The single HTML page of ``policytune serve`` (policytune/app/serve.py): base vs fine-tuned, side by side.

Self-contained (inline CSS and JS, no CDN, works offline). It asks one question to every model the
server lists in /v1/models, streams both answers at once (fetch + ReadableStream over the
server-sent events of /v1/chat/completions) and shows the retrieved chunks (title, link to the
source URL) under each answer. ``/?q=question&rag=1&max_tokens=64`` fills the form and asks at
once; when every answer is done, ``<body data-state="done">`` (headless tests wait for it).
Model output is only ever inserted as text (``textContent``), never as HTML.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>policytune — base vs fine-tuned</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f4f6f9; color: #1c2430; }
  header { background: #1f3a5f; color: #fff; padding: 14px 24px; }
  header h1 { font-size: 20px; margin: 0; }
  header p { margin: 4px 0 0; font-size: 13px; color: #c9d6e8; }
  form { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; padding: 16px 24px; }
  #q { flex: 1; min-width: 280px; padding: 9px 10px; font-size: 16px; border: 1px solid #aab4c3; border-radius: 4px; }
  #max_tokens { width: 5em; }
  button { padding: 9px 18px; font-size: 15px; background: #2d6cdf; color: #fff; border: 0; border-radius: 4px; cursor: pointer; }
  button:disabled { background: #8aa6d8; cursor: progress; }
  main { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; padding: 0 24px 24px; }
  @media (max-width: 800px) { main { grid-template-columns: 1fr; } }
  section { background: #fff; border: 1px solid #d3dae4; border-radius: 6px; padding: 12px 16px; }
  h2 { font-size: 17px; margin: 0 0 4px; }
  h3 { font-size: 14px; margin: 14px 0 4px; color: #4a5566; }
  .meta { font-size: 12px; color: #667085; min-height: 1.2em; }
  .meta.err { color: #b42318; }
  .answer { white-space: pre-wrap; min-height: 5em; line-height: 1.45; margin-top: 8px; }
  .sources { margin: 0; padding-left: 1.4em; font-size: 13px; }
  .sources li { margin: 4px 0; }
  .sources .snippet { display: block; color: #667085; font-size: 12px; }
</style>
</head>
<body data-state="idle">
<header>
  <h1>policytune — base vs fine-tuned</h1>
  <p>One question, both models, answers streamed as they are generated. Runs locally.</p>
</header>
<form id="ask">
  <input id="q" name="q" placeholder="Ask a question about the policies" autocomplete="off" required>
  <label><input type="checkbox" id="rag" name="rag"> ground in sources (RAG)</label>
  <label>max tokens <input type="number" id="max_tokens" name="max_tokens" value="128" min="1"></label>
  <button id="go" type="submit">Ask both</button>
</form>
<main>
  <section id="col-base">
    <h2>Base model</h2>
    <div class="meta" id="meta-base"></div>
    <div class="answer" id="answer-base"></div>
    <h3>Sources</h3>
    <ol class="sources" id="sources-base"></ol>
  </section>
  <section id="col-finetuned">
    <h2>Fine-tuned (LoRA)</h2>
    <div class="meta" id="meta-finetuned"></div>
    <div class="answer" id="answer-finetuned"></div>
    <h3>Sources</h3>
    <ol class="sources" id="sources-finetuned"></ol>
  </section>
</main>
<script>
"use strict";
const MODELS = ["base", "finetuned"];
const $ = (id) => document.getElementById(id);
let served = null;  // model id -> entry of /v1/models

async function loadModels() {
  if (served) return served;
  const r = await fetch("/v1/models");
  const j = await r.json();
  served = {};
  for (const m of j.data) served[m.id] = m;
  const rag = Object.values(served).some((m) => m.rag);
  $("rag").disabled = !rag;
  if (!rag) $("rag").parentElement.title = "this server has no encoder/chunks loaded";
  // the evaluate stage's best variant uses retrieval: the box starts ticked (a ?rag= in the URL wins)
  if (rag && !new URLSearchParams(location.search).has("rag") && Object.values(served).some((m) => m.default_rag))
    $("rag").checked = true;
  return served;
}

function setMeta(model, text, isError) {
  const meta = $("meta-" + model);
  meta.textContent = text;
  meta.className = isError ? "meta err" : "meta";
}

function showSources(model, sources) {
  const ol = $("sources-" + model);
  ol.textContent = "";
  for (const s of sources) {
    const li = document.createElement("li");
    const label = s.title || s.url || s.chunk_id;
    if (/^https?:\/\//i.test(s.url || "")) {
      const a = document.createElement("a");
      a.href = s.url;
      a.textContent = label;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      li.append(a);
    } else {
      li.append(label + (s.url && s.url !== label ? " (" + s.url + ")" : ""));
    }
    const snip = document.createElement("span");
    snip.className = "snippet";
    snip.textContent = (s.text || "").slice(0, 180) + ((s.text || "").length > 180 ? "…" : "");
    li.append(snip);
    ol.append(li);
  }
}

// Parse one server-sent event ("data: {...}" lines) and apply it to the model's column.
function applyEvent(model, event, st) {
  for (const line of event.split("\n")) {
    if (!line.startsWith("data: ")) continue;
    const data = line.slice(6);
    if (data === "[DONE]") { st.done = true; continue; }
    const c = JSON.parse(data);
    if (c.error) { st.error = c.error.message; continue; }
    if (c.sources) showSources(model, c.sources);
    if (c.usage) st.usage = c.usage;
    for (const ch of c.choices || []) {
      const piece = ch.delta && ch.delta.content;
      if (piece) {
        if (st.first === null) st.first = performance.now();
        $("answer-" + model).textContent += piece;
      }
      if (ch.finish_reason) st.finish = ch.finish_reason;
    }
  }
}

async function ask(model, question, rag, maxTokens) {
  $("answer-" + model).textContent = "";
  $("sources-" + model).textContent = "";
  if (!served[model]) { setMeta(model, "not loaded on this server (started with --base?)", true); return; }
  setMeta(model, "waiting for the first token…");
  const st = { t0: performance.now(), first: null, usage: null, finish: null, error: null, done: false };
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages: [{ role: "user", content: question }], max_tokens: maxTokens,
                             rag, stream: true, stream_options: { include_usage: true } }),
    });
    if (!resp.ok) {
      const e = await resp.json().catch(() => ({}));
      setMeta(model, "error " + resp.status + ": " + ((e.error && e.error.message) || resp.statusText), true);
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        applyEvent(model, buf.slice(0, cut), st);
        buf = buf.slice(cut + 2);
      }
    }
  } catch (err) {
    st.error = String(err);
  }
  if (st.error || !st.done) { setMeta(model, "error: " + (st.error || "the stream ended early"), true); return; }
  const secs = (t) => ((t - st.t0) / 1000).toFixed(2) + " s";
  const n = st.usage ? st.usage.completion_tokens : "?";
  setMeta(model, "first token " + (st.first === null ? "–" : secs(st.first)) + " · " + n + " tokens in "
          + secs(performance.now()) + " · " + (st.finish === "length" ? "cut at max tokens" : "finished"));
  if (!rag) $("sources-" + model).innerHTML = "<li><em>RAG off</em></li>";
}

async function submit(ev) {
  if (ev) ev.preventDefault();
  const question = $("q").value.trim();
  if (!question) return;
  const rag = $("rag").checked && !$("rag").disabled, maxTokens = parseInt($("max_tokens").value, 10) || 128;
  const url = new URL(location.href);
  url.searchParams.set("q", question);
  url.searchParams.set("rag", rag ? "1" : "0");
  url.searchParams.set("max_tokens", String(maxTokens));
  history.replaceState(null, "", url);
  document.body.dataset.state = "running";
  $("go").disabled = true;
  try {
    await loadModels();
    await Promise.all(MODELS.map((m) => ask(m, question, rag, maxTokens)));
  } catch (err) {
    for (const m of MODELS) setMeta(m, "error: " + err, true);
  } finally {
    $("go").disabled = false;
    document.body.dataset.state = "done";
  }
}

$("ask").addEventListener("submit", submit);
const params = new URLSearchParams(location.search);
if (params.get("rag") === "1") $("rag").checked = true;
if (params.get("max_tokens")) $("max_tokens").value = params.get("max_tokens");
loadModels().then(() => { if (params.get("q")) { $("q").value = params.get("q"); submit(); } })
            .catch((err) => { for (const m of MODELS) setMeta(m, "cannot reach the server: " + err, true); });
</script>
</body>
</html>
"""
