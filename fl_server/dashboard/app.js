// ModelMine dashboard: hash-routed pages over the REST API, live through Server-Sent Events.
"use strict";

const state = {
  runId: "",            // "" = follow the latest run
  lastEventId: 0,
  source: null,
  page: "overview",
  token: localStorage.getItem("modelmine-token") || "",
  renderTimer: null,
};
// pages are built in a detached element (state.root) and then swapped in: look there first
const $ = (sel) => (state.root && state.root.querySelector(sel)) || document.querySelector(sel);

// ---------------------------------------------------------------- helpers
function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function pct(v) { return v == null ? "–" : (v * 100).toFixed(2) + "%"; }
function num(v, digits = 3) { return v == null ? "–" : Number(v).toFixed(digits); }
function bytes(v) {
  if (v == null) return "–";
  const u = ["B", "kB", "MB", "GB"]; let i = 0; let x = Number(v);
  while (x >= 1000 && i < u.length - 1) { x /= 1000; i++; }
  return x.toFixed(i ? 1 : 0) + " " + u[i];
}
function eth(wei) {
  if (wei == null) return "–";
  const w = BigInt(wei); const whole = w / 10n ** 18n; const frac = (w % 10n ** 18n).toString().padStart(18, "0").slice(0, 6);
  return `${whole}.${frac} ETH`;
}
function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : "–"; }
function short(s, n = 10) { s = String(s ?? ""); return s.length > n + 4 ? s.slice(0, n) + "…" + s.slice(-4) : s; }
function badge(text) { return `<span class="badge ${esc(text)}">${esc(text ?? "–")}</span>`; }
function flash(message, kind = "ok") {
  const el = document.getElementById("flash"); el.textContent = message; el.title = message; el.className = "flash " + kind;
  clearTimeout(flash.t); flash.t = setTimeout(() => { el.textContent = ""; }, 8000);
}
function runQuery(extra = "") {
  const q = state.runId ? `run_id=${encodeURIComponent(state.runId)}` : "";
  return q && extra ? `?${q}&${extra}` : q ? `?${q}` : extra ? `?${extra}` : "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token && options.method && options.method !== "GET") headers.Authorization = "Bearer " + state.token;
  let response;
  try {
    response = await fetch(path, { method: options.method || "GET", headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = data && data.error ? data.error : `HTTP ${response.status}`;
    const error = new Error(message); error.status = response.status; error.data = data; throw error;
  }
  return data;
}

function csv(rows, columns) {
  const cell = (v) => { const s = v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
  return [columns.map((c) => cell(c.label)).join(","), ...rows.map((r) => columns.map((c) => cell(c.raw ? c.raw(r) : r[c.key])).join(","))].join("\n");
}
function download(name, text, type = "text/csv") {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name; document.body.appendChild(a); a.click(); a.remove();
}

// A table with a CSV export button; columns: [{key, label, fmt?, num?, raw?}]
function table(id, title, rows, columns, { empty = "Nothing recorded yet.", onClick = null, testid = id } = {}) {
  const head = `<div class="tools"><h2 style="margin:0">${esc(title)}</h2>` +
    (rows.length ? `<button class="secondary" data-csv="${esc(id)}">Export CSV</button>` : "") + `<span class="badge">${rows.length}</span></div>`;
  if (!rows.length) return `<section data-testid="${esc(testid)}">${head}<p class="empty">${esc(empty)}</p></section>`;
  tablesById[id] = { rows, columns, title };
  const th = columns.map((c) => `<th class="${c.num ? "num" : ""}">${esc(c.label)}</th>`).join("");
  const tr = rows.map((r, i) => `<tr class="${onClick ? "clickable" : ""}" data-row="${i}" data-table="${esc(id)}">` +
    columns.map((c) => `<td class="${c.num ? "num" : ""}">${c.fmt ? c.fmt(r[c.key], r) : esc(r[c.key] ?? "–")}</td>`).join("") + "</tr>").join("");
  if (onClick) rowHandlers[id] = onClick;
  return `<section data-testid="${esc(testid)}">${head}<div class="panel"><table><thead><tr>${th}</tr></thead><tbody>${tr}</tbody></table></div></section>`;
}
const tablesById = {}; const rowHandlers = {};
document.addEventListener("click", (ev) => {
  const btn = ev.target.closest("[data-csv]");
  if (btn) { const t = tablesById[btn.dataset.csv]; if (t) download(`${btn.dataset.csv}.csv`, csv(t.rows, t.columns)); return; }
  const png = ev.target.closest("[data-png]");
  if (png) { Charts.downloadPng(document.getElementById(png.dataset.png), png.dataset.png); return; }
  const tr = ev.target.closest("tr[data-table]");
  if (tr && rowHandlers[tr.dataset.table]) rowHandlers[tr.dataset.table](tablesById[tr.dataset.table].rows[Number(tr.dataset.row)]);
});

function chartBox(id, title) {
  return `<div class="chart"><header><span>${esc(title)}</span><button class="secondary" data-png="${id}">Export PNG</button></header>` +
    `<canvas id="${id}" data-testid="${id}" data-points="0"></canvas></div>`;
}

function errorBox(err) {
  return `<div class="error-box" data-testid="error">Could not load this page: ${esc(err.message)}</div>`;
}

// ---------------------------------------------------------------- pages
const pages = {};

pages.overview = async (root) => {
  const [status, metrics] = await Promise.all([api("/api/status" + runQuery()), api("/api/training/metrics" + runQuery())]);
  if (!status.run) {
    root.innerHTML = `<h1>Overview</h1><p class="empty" data-testid="empty-overview">No runs recorded yet. Start one from
      <a href="#/settings">Settings</a> or run <code>python -m fl_server dashboard=true</code>.</p>`;
    return;
  }
  const run = status.run;
  const total = status.rounds || run.rounds || 0;
  const done = status.finished_rounds || 0;
  root.innerHTML = `<h1>Overview</h1>
    <div class="cards">
      <div class="card"><div class="label">Run</div><div class="value mono" title="${esc(run.id)}">${esc(short(run.id, 16))}</div>${badge(run.status)}</div>
      <div class="card"><div class="label">Task</div><div class="value">${esc(run.dataset)} / ${esc(run.model)}</div>
        <div>${status.task ? `on-chain task #${esc(status.task.task_id)} ${badge(status.task.status)}` : "no chain task"}</div></div>
      <div class="card"><div class="label">Round progress</div><div class="value" data-testid="round-progress">${done} / ${total}</div>
        <div class="progress"><div style="width:${total ? (100 * done) / total : 0}%"></div></div></div>
      <div class="card"><div class="label">Accuracy</div><div class="value" data-testid="accuracy">${pct(status.accuracy)}</div></div>
      <div class="card"><div class="label">Loss</div><div class="value">${num(status.loss, 4)}</div></div>
      <div class="card"><div class="label">Nodes online</div><div class="value">${status.nodes.online} / ${status.nodes.total}</div></div>
    </div>
    ${run.error ? `<p class="error-box">Run error: ${esc(run.error)}</p>` : ""}
    <div class="charts">${chartBox("chart-accuracy", "Test accuracy")}${chartBox("chart-loss", "Loss")}</div>
    <div id="rounds-table"></div>`;
  const pts = (ys) => metrics.round.map((r, i) => [r, ys[i]]).filter((p) => p[1] != null);
  Charts.lineChart($("#chart-accuracy"), [{ name: "test accuracy", color: "#2f6fed", points: pts(metrics.accuracy) }],
    { percent: true, xLabel: "round", empty: "waiting for the first round…" });
  Charts.lineChart($("#chart-loss"), [
    { name: "test loss", color: "#d64545", points: pts(metrics.loss) },
    { name: "train loss", color: "#c98a0b", points: pts(metrics.train_loss) }],
    { xLabel: "round", empty: "waiting for the first round…" });
  const rounds = await api("/api/rounds" + runQuery());
  $("#rounds-table").innerHTML = table("rounds", "Rounds", rounds, [
    { key: "round", label: "round", num: true }, { key: "status", label: "status", fmt: badge },
    { key: "accuracy", label: "accuracy", num: true, fmt: pct }, { key: "loss", label: "loss", num: true, fmt: (v) => num(v, 4) },
    { key: "round_seconds", label: "seconds", num: true, fmt: (v) => num(v, 1) },
    { key: "upload_bytes_per_miner", label: "upload/miner", num: true, fmt: bytes },
    { key: "selected", label: "selected", num: true }, { key: "received", label: "received", num: true },
  ], { empty: "No round has started yet." });
};

pages.nodes = async (root) => {
  const [nodes, selections] = await Promise.all([api("/api/nodes" + runQuery()), api("/api/selections" + runQuery())]);
  const subs = await api("/api/submissions" + runQuery());
  const verdict = {};
  subs.forEach((s) => { verdict[`${s.node_id}/${s.round}`] = s.accepted ? "acc" : "rej"; });
  const rounds = [...new Set(selections.map((s) => s.round))].sort((a, b) => a - b);
  const history = (node) => `<span class="history" title="rounds ${rounds.join(", ")}">` + rounds.map((r) => {
    const sel = selections.find((s) => s.node_id === node && s.round === r);
    const v = verdict[`${node}/${r}`];
    const cls = v || (sel && sel.selected ? "sel" : "");
    return `<span class="${cls}" title="round ${r}: ${v === "acc" ? "accepted" : v === "rej" ? "rejected" : sel && sel.selected ? "selected" : "not selected"}"></span>`;
  }).join("") + "</span>";
  root.innerHTML = `<h1>Nodes</h1>` + table("nodes", "Miners", nodes, [
    { key: "node_id", label: "node", fmt: (v) => `<span class="mono" title="${esc(v)}">${esc(short(v, 8))}</span>` },
    { key: "address", label: "address", fmt: (v) => v ? `<span class="mono" title="${esc(v)}">${esc(short(v))}</span>` : "–" },
    { key: "status", label: "status", fmt: badge },
    { key: "latency_s", label: "latency (s)", num: true, fmt: (v) => num(v, 2) },
    { key: "reliability", label: "reliability", num: true, fmt: pct },
    { key: "reputation", label: "reputation", num: true, fmt: (v) => num(v, 2) },
    { key: "selections", label: "selected", num: true }, { key: "accepted", label: "accepted", num: true },
    { key: "rejected", label: "rejected", num: true }, { key: "bytes_total", label: "uploaded", num: true, fmt: bytes },
    { key: "node_id", label: "selection history", fmt: (v) => history(v), raw: (r) => selections.filter((s) => s.node_id === r.node_id && s.selected).map((s) => s.round).join(" ") },
  ], { empty: "No miner has connected yet.", onClick: (row) => showNode(row.node_id) }) +
    `<p class="tools"><span class="history"><span class="acc"></span></span> accepted <span class="history"><span class="rej"></span></span> rejected
     <span class="history"><span class="sel"></span></span> selected, no reply <span class="history"><span></span></span> not selected</p><div id="node-detail"></div>`;
};

async function showNode(nodeId) {
  const box = $("#node-detail");
  try {
    const node = await api(`/api/nodes/${encodeURIComponent(nodeId)}` + runQuery());
    box.innerHTML = table("node-submissions", `Submissions of node ${short(nodeId, 8)}`, node.submissions, [
      { key: "round", label: "round", num: true }, { key: "accepted", label: "verdict", fmt: (v) => badge(v ? "ok" : "rejected") },
      { key: "bytes", label: "bytes", num: true, fmt: bytes }, { key: "train_seconds", label: "train s", num: true, fmt: (v) => num(v, 2) },
      { key: "reason", label: "reason", fmt: (v) => esc(short(v || "", 80)) },
    ]);
  } catch (err) { box.innerHTML = errorBox(err); }
}

pages.chain = async (root) => {
  const q = runQuery();
  const [blocks, votes, reveals, rewards, balances, txs, tasks] = await Promise.all([
    api("/api/blocks" + q), api("/api/votes" + q), api("/api/reveals" + q), api("/api/rewards" + q),
    api("/api/balances"), api("/api/transactions" + q), api("/api/tasks")]);
  const runTasks = tasks.filter((t) => t.source === "chain" && (!state.runId || t.run_id === state.runId));
  const addr = (v) => v ? `<span class="mono" title="${esc(v)}">${esc(short(v))}</span>` : "–";
  root.innerHTML = `<h1>Chain</h1>` +
    (blocks.length || runTasks.length ? "" : `<p class="empty" data-testid="empty-chain">This run has no chain activity (chain=none, or no round reached the chain yet).</p>`) +
    table("chain-tasks", "Tasks", runTasks, [
      { key: "task_id", label: "task", num: true }, { key: "status", label: "status", fmt: badge },
      { key: "dataset", label: "dataset" }, { key: "rounds", label: "rounds", num: true },
      { key: "reward_pool_wei", label: "reward pool", num: true, fmt: eth }, { key: "contract", label: "contract", fmt: addr },
    ], { empty: "No task published on chain.", onClick: (t) => { location.hash = `#/task/${t.id}`; } }) +
    table("blocks", "Candidate blocks", blocks, [
      { key: "round", label: "round", num: true }, { key: "task_round", label: "task round", num: true },
      { key: "status", label: "status", fmt: badge }, { key: "model_hash", label: "model hash", fmt: addr },
      { key: "accepts", label: "accepts", num: true }, { key: "votes", label: "votes", num: true },
      { key: "participants", label: "participants", num: true, fmt: (v) => (v || []).length }, { key: "gas", label: "gas", num: true },
    ], { empty: "No candidate block proposed." }) +
    `<div class="row"><div>` + table("votes", "Votes", votes, [
      { key: "round", label: "round", num: true }, { key: "address", label: "voter", fmt: addr },
      { key: "accept", label: "vote", fmt: (v) => badge(v ? "ok" : "rejected") }, { key: "accuracy_bps", label: "accuracy", num: true, fmt: (v) => pct(v / 10000) },
    ], { empty: "No votes." }) + `</div><div>` + table("reveals", "Reveals", reveals, [
      { key: "round", label: "round", num: true }, { key: "address", label: "miner", fmt: addr }, { key: "ok", label: "verified", fmt: (v) => badge(v ? "ok" : "failed") },
    ], { empty: "No reveals." }) + `</div></div>` +
    table("rewards", "Rewards", rewards, [
      { key: "round", label: "round", num: true }, { key: "address", label: "address", fmt: addr },
      { key: "kind", label: "kind", fmt: badge }, { key: "amount_wei", label: "amount", num: true, fmt: eth },
    ], { empty: "No rewards paid." }) +
    table("balances", "Balances (all runs)", balances, [
      { key: "address", label: "address", fmt: addr }, { key: "stake_wei", label: "stake", num: true, fmt: eth },
      { key: "earned_wei", label: "earned", num: true, fmt: eth }, { key: "claimed_wei", label: "claimed", num: true, fmt: eth },
      { key: "claimable_wei", label: "claimable", num: true, fmt: eth },
    ], { empty: "No balances.", onClick: (b) => { location.hash = `#/miners/${b.address}`; } }) +
    table("transactions", "Transactions", txs, [
      { key: "round", label: "round", num: true }, { key: "function", label: "function" },
      { key: "status", label: "status", fmt: badge }, { key: "gas", label: "gas", num: true },
      { key: "tx_hash", label: "tx", fmt: addr },
    ], { empty: "No transactions." });
};

pages.tasks = async (root) => {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const status = params.get("status") || "", sort = params.get("sort") || "date", order = params.get("order") || "desc";
  const [tasks, options] = await Promise.all([
    api(`/api/tasks?sort=${sort}&order=${order}` + (status ? `&status=${encodeURIComponent(status)}` : "")), api("/api/options")]);
  const statuses = ["", "requested", "unpublished", "published", "running", "completed", "failed", "cancelled", "refunded"];
  const opt = (list, cur) => list.map((v) => `<option value="${esc(v)}" ${v === cur ? "selected" : ""}>${esc(v || "all")}</option>`).join("");
  root.innerHTML = `<h1>Tasks</h1>
    <div class="tools">
      <label>Status <select id="task-status" data-testid="task-status">${opt(statuses, status)}</select></label>
      <label>Sort by <select id="task-sort">${opt(["date", "reward", "status"], sort)}</select></label>
      <label>Order <select id="task-order">${opt(["desc", "asc"], order)}</select></label>
    </div>` +
    table("tasks", "Tasks", tasks, [
      { key: "id", label: "#", num: true }, { key: "task_id", label: "chain id", num: true },
      { key: "status", label: "status", fmt: badge }, { key: "source", label: "source" },
      { key: "dataset", label: "dataset" }, { key: "rounds", label: "rounds", num: true },
      { key: "reward_pool_wei", label: "reward", num: true, fmt: eth }, { key: "created_at", label: "created", fmt: when },
    ], { empty: status ? `No task with status '${status}'.` : "No tasks yet.", onClick: (t) => { location.hash = `#/task/${t.id}`; } }) +
    `<h2>Publish a task</h2><div class="panel">
     ${options.publisher_available ? "" : `<p class="empty">${options.publisher_script
        ? "No publisher profile is configured (python -m fl_server.api --publisher-profile FILE)"
        : "The publisher (scripts/publish_task.py) is not installed"}: a request is recorded but not published.</p>`}
     <form class="grid" id="task-form" novalidate>
      <label>Dataset <select name="dataset">${opt(options.choices.dataset, "mnist")}</select></label>
      <label>Model <select name="model">${opt(options.choices.model, "cnn_small")}</select></label>
      <label>Rounds <input name="rounds" type="number" min="1" max="1000" value="10" required></label>
      <label>Reward pool (ETH) <input name="reward_eth" type="number" min="0.000001" step="any" value="1" required></label>
      <label>Deadline (hours) <input name="deadline_hours" type="number" min="0.1" step="any" value="24" required></label>
      <label>Target accuracy <input name="target_accuracy" type="number" min="0.01" max="1" step="0.01" value="0.95" required></label>
      <label>Description <input name="description" maxlength="500"></label>
      <button type="submit">Publish</button>
     </form><div class="field-error" id="task-form-error" data-testid="task-form-error"></div></div>`;
  const go = () => {
    const p = new URLSearchParams({ status: $("#task-status").value, sort: $("#task-sort").value, order: $("#task-order").value });
    location.hash = "#/tasks?" + p.toString();
  };
  ["#task-status", "#task-sort", "#task-order"].forEach((s) => $(s).addEventListener("change", go));
  $("#task-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target; const out = $("#task-form-error");
    if (!form.checkValidity()) { out.textContent = "Check the highlighted fields: " + [...form.elements].filter((e) => e.validationMessage).map((e) => `${e.name}: ${e.validationMessage}`).join("; "); return; }
    const body = Object.fromEntries(new FormData(form).entries());
    ["rounds"].forEach((k) => { body[k] = parseInt(body[k], 10); });
    ["reward_eth", "deadline_hours", "target_accuracy"].forEach((k) => { body[k] = parseFloat(body[k]); });
    let message = "";
    try {
      const res = await api("/api/tasks", { method: "POST", body });
      flash(`task ${res.task} ${res.status}`);
    } catch (err) { message = err.message; flash(err.message, "error"); }
    await render();  // the list shows the recorded request either way
    $("#task-form-error").textContent = message;
  });
};

pages.task = async (root, id) => {
  const task = await api(`/api/tasks/${encodeURIComponent(id)}`);
  const label = {
    task_requested: "requested", task_published: "published on chain", task_status: "status", round_started: "round started",
    round_finished: "round finished", candidate_block: "candidate block proposed", vote: "vote", reveal: "reveal",
    block_finalized: "block finalized", block_rejected: "block rejected", reward: "reward", run_finished: "run finished",
  };
  const describe = (e) => {
    const p = e.payload || {};
    switch (e.kind) {
      case "round_finished": return `round ${p.round}: accuracy ${pct((p.record || {}).accuracy)}`;
      case "round_started": return `round ${p.round} (${(p.available || []).length} miners)`;
      case "candidate_block": return `round ${p.round}: model ${short(p.model_hash)} (${(p.participants || []).length} participants)`;
      case "vote": return `${short(p.address)} ${p.accept ? "accepts" : "rejects"} (${pct(p.accuracy_bps / 10000)})`;
      case "reveal": return `${short(p.address)} revealed ${p.ok ? "(verified)" : "(failed)"}`;
      case "block_finalized": case "block_rejected": return `round ${p.round}: ${p.accepts}/${p.votes} accept, ${p.gas} gas`;
      case "reward": return `${p.kind} ${eth(p.amount_wei)} to ${short(p.address)}`;
      case "task_status": return p.status;
      case "task_published": return `task #${p.task_id}, pool ${eth(p.reward_pool_wei)}`;
      case "run_finished": return `${p.status}, final accuracy ${pct(p.final_accuracy)}`;
      default: return Object.entries(p).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${k}=${v}`).join(", ");
    }
  };
  const cls = (k) => (k === "block_rejected" ? "bad" : k === "block_finalized" || k === "reward" ? "good" : "");
  root.innerHTML = `<h1>Task #${esc(task.id)} ${badge(task.status)}</h1>
    <div class="cards">
      <div class="card"><div class="label">Chain id</div><div class="value">${esc(task.task_id ?? "–")}</div></div>
      <div class="card"><div class="label">Dataset</div><div class="value">${esc(task.dataset ?? "–")}</div></div>
      <div class="card"><div class="label">Rounds</div><div class="value">${esc(task.rounds ?? "–")}</div></div>
      <div class="card"><div class="label">Reward pool</div><div class="value">${eth(task.reward_pool_wei)}</div></div>
    </div><h2>Lifecycle</h2>` +
    (task.timeline.length ? `<ul class="timeline" data-testid="timeline">` + task.timeline.map((e) =>
      `<li class="${cls(e.kind)}"><span class="when">${when(e.ts)}</span><b>${esc(label[e.kind] || e.kind)}</b> ${esc(describe(e))}</li>`).join("") + "</ul>"
      : `<p class="empty">No lifecycle events yet.</p>`) + `<p><a href="#/tasks">&larr; all tasks</a></p>`;
};

pages.miners = async (root, address) => {
  const miners = await api("/api/miners");
  const pick = address || (miners[0] && miners[0].address) || "";
  root.innerHTML = `<h1>Miners</h1>` + (miners.length ? `<div class="tools"><label>Miner address
      <select id="miner-select" data-testid="miner-select">${miners.map((m) => `<option ${m.address === pick ? "selected" : ""}>${esc(m.address)}</option>`).join("")}</select></label></div><div id="miner-view"></div>`
    : `<p class="empty">No miner address recorded yet (miners get addresses in secure rounds: secagg or DGC on).</p>`);
  if (!miners.length) return;
  $("#miner-select").addEventListener("change", (ev) => { location.hash = `#/miners/${ev.target.value}`; });
  let view;
  try { view = await api(`/api/miners/${encodeURIComponent(pick)}`); } catch (err) {
    $("#miner-view").innerHTML = err.status === 404 ? `<p class="empty">${esc(err.message)}</p>` : errorBox(err); return;
  }
  $("#miner-view").innerHTML = `<div class="cards">
      <div class="card"><div class="label">Stake</div><div class="value">${eth(view.stake_wei)}</div></div>
      <div class="card"><div class="label">Earned</div><div class="value">${eth(view.earned_wei)}</div></div>
      <div class="card"><div class="label">Claimable</div><div class="value" data-testid="claimable">${eth(view.claimable_wei)}</div></div>
      <div class="card"><div class="label">Submissions</div><div class="value">${view.accepted} / ${view.submissions}</div></div>
      <div class="card"><div class="label">Pending reveals</div><div class="value">${view.pending_reveals.length}</div></div>
    </div>
    <p class="empty">Claiming is a pull payment signed with the miner's own key: the dashboard cannot claim for a miner.</p>` +
    table("miner-tasks", "Tasks joined", view.tasks_joined, [
      { key: "task_id", label: "chain id", num: true }, { key: "status", label: "status", fmt: badge },
      { key: "dataset", label: "dataset" }, { key: "reward_pool_wei", label: "pool", num: true, fmt: eth }],
      { empty: "No task joined.", onClick: (t) => { location.hash = `#/task/${t.id}`; } }) +
    table("miner-pending", "Pending reveals", view.pending_reveals, [
      { key: "round", label: "round", num: true }, { key: "task_round", label: "task round", num: true }], { empty: "No reveal pending." }) +
    table("miner-rewards", "Rewards", view.rewards, [
      { key: "round", label: "round", num: true }, { key: "kind", label: "kind", fmt: badge },
      { key: "amount_wei", label: "amount", num: true, fmt: eth }, { key: "ts", label: "when", fmt: when }], { empty: "No rewards yet." });
};

pages.settings = async (root) => {
  const [options, status] = await Promise.all([api("/api/options"), api("/api/status")]);
  const d = options.run_defaults;
  const sel = (name) => `<select name="${name}">${options.choices[name].map((v) => `<option ${v === d[name] ? "selected" : ""}>${esc(v)}</option>`).join("")}</select>`;
  const active = status.managed_run;
  root.innerHTML = `<h1>Settings</h1>
    <h2>API token</h2><div class="panel"><div class="tools">
      <input id="token" type="password" placeholder="bearer token (needed to start/stop runs)" size="40" value="${esc(state.token)}" data-testid="token">
      <button class="secondary" id="save-token">Save in this browser</button>
      <span>${status.writes_enabled ? "the server accepts writes with its token" : "the server has no token configured: writes are disabled"}</span></div></div>
    <h2>Start a simulated run</h2><div class="panel">
    <form class="grid" id="run-form" novalidate data-testid="run-form">
      <label>Dataset ${sel("dataset")}</label><label>Model ${sel("model")}</label>
      <label>Miners <input name="num_miners" type="number" min="2" max="32" value="${d.num_miners}" required></label>
      <label>Rounds <input name="rounds" type="number" min="1" max="200" value="${d.rounds}" required></label>
      <label>Miners per round (0 = all) <input name="per_round" type="number" min="0" max="32" value="${d.per_round}" required></label>
      <label>Secure aggregation ${sel("secagg")}</label><label>Chain ${sel("chain")}</label>
      <label>Strategy ${sel("strategy")}</label><label>Selection ${sel("selection")}</label>
      <label>Partition <select name="partition"><option>iid</option><option>dirichlet</option></select></label>
      <label>Seed <input name="seed" type="number" min="0" value="${d.seed}" required></label>
      <label><span><input name="dgc" type="checkbox" ${d.dgc ? "checked" : ""}> Deep Gradient Compression</span></label>
      <button type="submit" id="start-run" data-testid="start-run" ${active ? "disabled" : ""}>Start run</button>
      <button type="button" class="danger" id="stop-run" data-testid="stop-run" ${active ? "" : "disabled"}>Stop run</button>
    </form><div class="field-error" id="run-form-error" data-testid="run-form-error"></div>
    ${active ? `<p>Active run <span class="mono">${esc(active.run_id)}</span> (pid ${esc(active.pid)})</p><pre class="log" id="run-log"></pre>` : ""}</div>`;
  $("#save-token").addEventListener("click", () => {
    state.token = $("#token").value.trim(); localStorage.setItem("modelmine-token", state.token); flash("token saved in this browser");
  });
  $("#run-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target; const out = $("#run-form-error");
    state.token = $("#token").value.trim() || state.token;
    const bad = [...form.elements].filter((e) => e.name && !e.checkValidity());
    if (bad.length) { out.textContent = "Fix: " + bad.map((e) => `${e.name}: ${e.validationMessage}`).join("; "); return; }
    const body = Object.fromEntries([...new FormData(form).entries()].filter(([k]) => k !== "dgc"));
    ["num_miners", "rounds", "per_round", "seed"].forEach((k) => { body[k] = parseInt(body[k], 10); });
    body.dgc = form.elements.dgc.checked;
    try {
      const res = await api("/api/runs", { method: "POST", body });
      out.textContent = ""; flash(`run ${res.run_id} started`);
      state.runId = ""; location.hash = "#/overview";
    } catch (err) { out.textContent = err.message; flash(err.message, "error"); }
  });
  $("#stop-run").addEventListener("click", async () => {
    state.token = $("#token").value.trim() || state.token;
    try { const res = await api("/api/training/stop", { method: "POST" }); flash(`run ${res.run_id} stopped`); render(); } catch (err) { flash(err.message, "error"); }
  });
  if (active) {
    try { $("#run-log").textContent = await api(`/api/runs/${encodeURIComponent(active.run_id)}/log?tail=40`); } catch (err) { $("#run-log").textContent = err.message; }
  }
};

// ---------------------------------------------------------------- routing and live updates
function route() {
  const [path] = (location.hash || "#/overview").slice(2).split("?");
  const [page, arg] = path.split("/");
  return { page: pages[page] ? page : "overview", arg: arg ? decodeURIComponent(arg) : undefined };
}

let rendering = false, renderAgain = false;
async function render() {  // one render at a time; a request during a render runs once after it
  if (rendering) { renderAgain = true; return; }
  rendering = true;
  try { await renderPage(); } finally {
    rendering = false;
    if (renderAgain) { renderAgain = false; render(); }
  }
}

async function renderPage() {
  const { page, arg } = route();
  state.page = page;
  document.querySelectorAll("nav a[data-page]").forEach((a) => a.classList.toggle("active", a.dataset.page === (page === "task" ? "tasks" : page)));
  const root = $("#page");
  const scroll = window.scrollY;
  try {
    const fresh = document.createElement("section");
    state.root = fresh;
    await pages[page](fresh, arg);
    root.replaceChildren(...fresh.childNodes);
    redrawCharts(root);
    window.scrollTo(0, scroll);
  } catch (err) {
    root.innerHTML = errorBox(err);
  }
}

// charts are drawn on detached canvases (size 0): redraw once attached
const pendingCharts = [];
function redrawCharts() { pendingCharts.splice(0).forEach((f) => f()); }
const drawChart = Charts.lineChart;
Charts.lineChart = (canvas, series, options) => { pendingCharts.push(() => drawChart(document.getElementById(canvas.id) || canvas, series, options)); drawChart(canvas, series, options); };

function scheduleRender() {
  if (state.page === "settings" || state.page === "tasks") return; // do not wipe forms being edited
  clearTimeout(state.renderTimer);
  state.renderTimer = setTimeout(render, 300);
}

async function loadRuns() {
  try {
    const runs = await api("/api/runs");
    const select = $("#run-select");
    const current = state.runId;
    select.innerHTML = `<option value="">latest</option>` + runs.map((r) => `<option value="${esc(r.id)}" ${r.id === current ? "selected" : ""}>${esc(r.id)} (${esc(r.status)})</option>`).join("");
    const shown = current ? runs.find((r) => r.id === current) : runs[0];
    $("#run-badge").innerHTML = shown ? badge(shown.status) : "";
  } catch (err) { flash(err.message, "error"); }
}

function connect() {
  const live = $("#live"), text = $("#live-text");
  const source = new EventSource(`/api/stream?after=${state.lastEventId}`);
  state.source = source;
  source.onopen = () => { live.className = "live on"; text.textContent = "live"; };
  source.onerror = () => { live.className = "live off"; text.textContent = "reconnecting…"; }; // EventSource retries with Last-Event-ID
  source.onmessage = (msg) => {
    const ev = JSON.parse(msg.data);
    state.lastEventId = Math.max(state.lastEventId, ev.id);
    if (ev.kind === "run_started" || ev.kind === "run_finished") loadRuns();
    if (ev.kind === "block_finalized") flash(`block of round ${ev.payload.round} finalized`);
    if (ev.kind === "node_dropped") flash(`node ${short(ev.payload.node_id, 8)} dropped`, "error");
    if (ev.kind === "reward") flash(`reward ${eth(ev.payload.amount_wei)} to ${short(ev.payload.address)}`);
    if (!state.runId || ev.run_id === state.runId) scheduleRender();
  };
}

async function start() {
  $("#run-select").addEventListener("change", (ev) => { state.runId = ev.target.value; loadRuns(); render(); });
  window.addEventListener("hashchange", render);
  try { state.lastEventId = (await api("/api/health")).last_event_id; } catch (err) { flash(err.message, "error"); }
  await loadRuns();
  await render();
  connect();
}
start();
