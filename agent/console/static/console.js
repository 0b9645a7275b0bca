// The console's only script: the key in sessionStorage sent as the Authorization header of
// every request (htmx's and the playground's), sign-in, and the playground's live trace.
// Text from the service is always set with textContent, never parsed as HTML.
"use strict";

const KEY = "qqrag.key";
const ME = "qqrag.me";

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function me() {
  const raw = sessionStorage.getItem(ME);
  return raw ? JSON.parse(raw) : null;
}

function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ME);
  location.replace("/console/signin");
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `请求出错（HTTP ${response.status}）`;
  }
}

// A page without a signed-in key goes to sign-in before it asks for anything.
if (document.documentElement && location.pathname !== "/console/signin" && !me()) {
  location.replace("/console/signin");
}

document.addEventListener("htmx:configRequest", (event) => {
  Object.assign(event.detail.headers, authHeaders());
});
document.addEventListener("htmx:responseError", (event) => {
  if (event.detail.xhr.status === 401) signOut();
});

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

document.addEventListener("DOMContentLoaded", () => {
  if (window.htmx) {
    // Fragments answer refusals with a message worth showing: swap them in, except a 401.
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "401", swap: false, error: true },
      { code: "...", swap: true },
    ];
  }
  const who = me();
  const label = document.getElementById("who");
  if (label && who) {
    const role = who.role === "admin" ? "管理员" : "租户密钥";
    label.textContent = who.open ? "开放模式（未设密钥）" : `${role} · 租户 ${who.tenant}`;
  }
  document.getElementById("signout")?.addEventListener("click", signOut);
  showForRole(document);
  document.getElementById("signin-form")?.addEventListener("submit", signIn);
  if (document.getElementById("ask-form")) setUpPlayground(who);
});

// What only an admin may use is hidden from a tenant's key, in fragments swapped in later too;
// the API refuses it anyway.
function showForRole(root) {
  const who = me();
  for (const node of root.querySelectorAll("[data-admin-only]")) {
    node.hidden = !(who && who.role === "admin");
  }
}

document.addEventListener("htmx:load", (event) => {
  showForRole(event.detail.elt);
  const upload = event.detail.elt.querySelector("#upload-form");
  if (upload) upload.addEventListener("submit", uploadFiles);
});

async function signIn(event) {
  event.preventDefault();
  const key = event.target.key.value.trim();
  const shown = document.getElementById("signin-error");
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const response = await fetch("/v1/me", { headers });
  if (!response.ok) {
    shown.textContent = await errorMessage(response);
    shown.hidden = false;
    return;
  }
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(ME, JSON.stringify(await response.json()));
  location.replace("/console/");
}

// —— the playground ——

const NODE_FIELDS = {
  intent: "意图",
  query: "检索语句",
  question: "问题",
  draft: "模型草稿",
  draft_source: "草稿来源",
  feedback: "反馈",
  answer: "回答",
  degraded: "降级",
  attempts: "尝试次数",
  tool_rounds: "工具轮数",
  knowledge_error: "知识库错误",
};
const PASSAGE_LISTS = { candidates: "候选段落", ranked: "重排结果", evidence: "选用的证据" };
const VERDICTS = {
  supported: "有依据",
  repaired: "已修正引用",
  unsupported: "无依据",
  uncited: "未引用",
};

async function setUpPlayground(who) {
  const form = document.getElementById("ask-form");
  if (who) form.tenant.value = who.tenant;
  form.tenant.readOnly = !(who && who.role === "admin");
  if (who && who.role === "admin") {
    const response = await fetch("/v1/admin/profiles", { headers: authHeaders() });
    if (response.ok) {
      const book = await response.json();
      for (const profile of book.profiles) {
        const mark = profile.name === book.default ? "（默认）" : "";
        form.profile.append(el("option", { value: profile.name, text: profile.name + mark }));
      }
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ask(form);
  });
  document.getElementById("forget").addEventListener("click", forget);
}

let lastThread = null;

async function forget() {
  if (!lastThread) return;
  const response = await fetch(`/v1/threads/${encodeURIComponent(lastThread)}`, {
    method: "DELETE",
    headers: authHeaders(),
  });
  document.getElementById("answer-meta").textContent = response.ok
    ? "这段对话已清空，下一个问题从头开始。"
    : await errorMessage(response);
  document.getElementById("forget").hidden = true;
}

function requestBody(form) {
  const who = me();
  const admin = who && who.role === "admin";
  const body = {
    platform: "console",
    scene: form.scene.value,
    user_id: form.user_id.value,
    text: form.text.value,
    trace: admin && form.trace.checked,
  };
  if (body.scene === "group") body.group_id = form.group_id.value;
  if (admin && form.tenant.value && form.tenant.value !== who.tenant) body.tenant = form.tenant.value;
  if (admin && form.profile.value) body.profile = form.profile.value;
  return body;
}

async function ask(form) {
  const answer = document.getElementById("answer");
  const trace = document.getElementById("trace-list");
  const error = document.getElementById("ask-error");
  const button = document.getElementById("ask");
  for (const node of [answer, trace, document.getElementById("citations")]) node.replaceChildren();
  document.getElementById("answer-meta").textContent = "";
  error.hidden = true;
  button.disabled = true;
  button.textContent = "回答中…";
  try {
    const response = await fetch("/v1/chat/stream", {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify(requestBody(form)),
    });
    if (response.status === 401) return signOut();
    if (!response.ok) throw new Error(await errorMessage(response));
    const totals = { seconds: 0, prompt: 0, completion: 0 };
    for await (const [event, data] of serverEvents(response)) {
      if (event === "node") {
        totals.seconds += data.seconds || 0;
        totals.prompt += data.tokens?.prompt || 0;
        totals.completion += data.tokens?.completion || 0;
        trace.append(nodeItem(data));
      } else if (event === "token") {
        answer.append(data.text);
      } else if (event === "result") {
        showResult(data, totals);
      } else if (event === "error") {
        throw new Error(data.message);
      }
    }
  } catch (failure) {
    error.textContent = failure.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = "提问";
  }
}

// Server-sent events read from a fetch body: EventSource cannot POST, nor send a header.
async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value;
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      yield [event, JSON.parse(data)];
    }
  }
}

function showResult(result, totals) {
  const answer = document.getElementById("answer");
  answer.replaceChildren(el("p", { text: result.answer }));
  const citations = document.getElementById("citations");
  for (const c of result.citations) {
    citations.append(
      el(
        "li",
        {},
        el("strong", { text: `[${c.index}] ${c.title}` }),
        el("span", { class: "muted", text: ` ${c.source}` }),
        el("blockquote", { text: c.snippet }),
      ),
    );
  }
  const tokens = totals.prompt + totals.completion;
  const parts = [
    `意图 ${result.intent}`,
    result.degraded ? "降级回答" : null,
    `共 ${totals.seconds.toFixed(2)} 秒`,
    tokens ? `${tokens} tokens（提示 ${totals.prompt} + 生成 ${totals.completion}）` : null,
    `trace ${result.trace_id}`,
    `对话 ${result.thread_id}`,
  ];
  document.getElementById("answer-meta").textContent = parts.filter(Boolean).join(" · ");
  lastThread = result.thread_id;
  document.getElementById("forget").hidden = false;
}

function nodeItem(event) {
  const head = [`${(event.seconds || 0).toFixed(3)} 秒`];
  if (event.tokens) head.push(`${event.tokens.prompt} + ${event.tokens.completion} tokens`);
  const details = el(
    "details",
    { open: "" },
    el(
      "summary",
      {},
      el("strong", { text: event.node }),
      el("span", { class: "muted", text: ` ${head.join(" · ")}` }),
    ),
  );
  const facts = el("dl");
  for (const [key, name] of Object.entries(NODE_FIELDS)) {
    if (event[key] === undefined) continue;
    const value = typeof event[key] === "string" ? event[key] : JSON.stringify(event[key]);
    facts.append(el("dt", { text: name }), el("dd", {}, el("pre", { text: value })));
  }
  if (facts.childElementCount) details.append(facts);
  for (const [key, name] of Object.entries(PASSAGE_LISTS)) {
    if (event[key]) details.append(passages(name, event[key]));
  }
  if (event.verdict) details.append(verdict(event.verdict));
  for (const call of event.calls || []) details.append(modelCall(call));
  if (event.tool_calls?.length) {
    details.append(el("h4", { text: "工具调用" }), el("pre", { text: JSON.stringify(event.tool_calls, null, 2) }));
  }
  return el("li", { class: "node", "data-node": event.node }, details);
}

function passages(name, list) {
  const rows = list.map((p, i) =>
    el(
      "tr",
      {},
      el("td", { text: String(i + 1) }),
      el("td", {}, p.text ? el("details", {}, el("summary", { text: p.title }), el("p", { text: p.text })) : p.title),
      el("td", { class: "num", text: Number(p.score).toFixed(3) }),
    ),
  );
  const head = el("tr", {}, el("th", { text: "#" }), el("th", { text: "标题" }), el("th", { text: "分数" }));
  return el(
    "section",
    {},
    el("h4", { text: `${name}（${list.length}）` }),
    el("table", { class: "passages" }, el("thead", {}, head), el("tbody", {}, ...rows)),
  );
}

function verdict(v) {
  const ratio = v.supported_ratio == null ? "无断言" : `${Math.round(v.supported_ratio * 100)}%`;
  const box = el("section", {}, el("h4", { text: `引用核验：有依据 ${ratio}` }));
  if (v.sentences?.length) {
    const rows = v.sentences.map((s) =>
      el(
        "tr",
        { class: s.status },
        el("td", { text: s.text }),
        el("td", { text: s.cited.map((n) => `[${n}]`).join("") }),
        el("td", { text: VERDICTS[s.status] || s.status }),
        el("td", { class: "num", text: Number(s.score).toFixed(2) }),
      ),
    );
    const head = el("tr", {}, ...["句子", "引用", "判定", "分数"].map((t) => el("th", { text: t })));
    box.append(el("table", { class: "verdict" }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }
  for (const removed of v.removed || []) {
    box.append(el("p", { class: "removed", text: `删去：${removed.text}（${removed.reason}）` }));
  }
  return box;
}

function modelCall(call) {
  const tokens = call.tokens ? ` · ${call.tokens.prompt} + ${call.tokens.completion} tokens` : "";
  const box = el("details", { class: "call" }, el("summary", { text: `模型调用 ${call.model}${tokens}` }));
  box.append(el("h4", { text: "发送的提示词" }));
  for (const message of call.messages) {
    box.append(el("p", { class: "role", text: message.role }), el("pre", { text: message.content }));
  }
  if (call.thinking) box.append(el("h4", { text: "思考" }), el("pre", { text: call.thinking }));
  if (call.output !== undefined) box.append(el("h4", { text: "模型原始输出" }), el("pre", { text: call.output }));
  if (call.error) box.append(el("p", { class: "error", text: call.error }));
  return box;
}

// —— the knowledge base ——

// One file after another, each with its own progress bar and result: XHR, since fetch cannot
// report an upload's progress.
async function uploadFiles(event) {
  event.preventDefault();
  const form = event.target;
  const kb = document.getElementById("kb").value;
  const list = document.getElementById("uploads");
  const button = document.getElementById("upload");
  button.disabled = true;
  list.replaceChildren();
  for (const file of form.files.files) {
    const bar = el("progress", { max: "1", value: "0", "aria-label": `${file.name} 上传进度` });
    const result = el("span", { class: "muted", text: "上传中…" });
    list.append(el("li", { "data-testid": "upload" }, el("strong", { text: file.name }), bar, result));
    const [ok, text] = await uploadOne(kb, file, bar);
    result.textContent = text;
    result.className = ok ? "ok" : "error";
  }
  button.disabled = false;
  form.reset();
  document.body.dispatchEvent(new Event("kb-changed"));
}

const UPLOAD_RESULTS = { added: "已添加", replaced: "已替换", unchanged: "内容没变" };

function uploadOne(kb, file, bar) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/admin/kb/${encodeURIComponent(kb)}/documents`);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = e.loaded / e.total;
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 401) return signOut();
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {}
      if (xhr.status >= 400) {
        return resolve([false, body?.error?.message || `上传失败（HTTP ${xhr.status}）`]);
      }
      bar.value = 1;
      const vectors = body.vectors_error ? `；向量未生成：${body.vectors_error}` : "";
      const counts = `新增 ${body.passages_added} 段，删去 ${body.passages_removed} 段`;
      resolve([true, `${UPLOAD_RESULTS[body.result]}（${counts}）${vectors}`]);
    });
    xhr.addEventListener("error", () => resolve([false, "上传失败：连不上服务"]));
    const data = new FormData();
    data.append("file", file);
    xhr.send(data);
  });
}
