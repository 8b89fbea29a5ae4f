// The cluster view: GET /v1/cluster once a second (the same API `comfymesh status` reads), drawn as tables.
// Talks only to this gateway; every value is set as text, never as HTML.

const REFRESH_MS = 1000;
const statusLine = document.getElementById("status");
const queue = document.getElementById("queue");

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function bytes(n) {
  if (!n) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fill(table, items, draw) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const item of items) draw(body.insertRow(), item);
  if (!items.length) cell(body.insertRow(), "none").colSpan = table.tHead.rows[0].cells.length;
}

function drawRunning(row, job) {
  row.dataset.job = job.job_id;
  cell(row, job.job_id);
  cell(row, job.node_id ? `${job.node_id} ${job.class_type}` : "–");
  const td = cell(row, "");
  if (job.max > 0) {
    const bar = document.createElement("progress");
    bar.max = job.max;
    bar.value = job.value;
    td.append(bar, ` ${job.value}/${job.max}`);
  } else {
    td.textContent = "–";
  }
  cell(row, job.nodes_total ? `${job.nodes_done}/${job.nodes_total}` : "–");
  cell(row, job.orchestrator ?? "another");
}

function drawReplica(row, replica) {
  row.dataset.address = replica.address;
  cell(row, replica.stage);
  cell(row, replica.address);
  cell(row, replica.healthy ? "healthy" : "down", replica.healthy ? "healthy" : "unhealthy");
  cell(row, `${replica.in_flight}/${replica.slots}`);
  cell(row, replica.device || "–");
  cell(row, replica.models.length ? replica.models.join(", ") : "–");
  cell(row, replica.memory_budget_bytes ? `${bytes(replica.memory_used_bytes)} of ${bytes(replica.memory_budget_bytes)}` : "–");
  cell(row, replica.device_total_bytes ? `${bytes(replica.device_free_bytes)} free of ${bytes(replica.device_total_bytes)}` : "–");
}

function drawOrchestrators(orchestrators) {
  const box = document.getElementById("orchestrators");
  box.replaceChildren();
  for (const orchestrator of orchestrators) {
    const title = document.createElement("h3");
    title.className = "orchestrator";
    title.dataset.address = orchestrator.address;
    const note = document.createElement("small");
    if (orchestrator.healthy) {
      title.textContent = `orchestrator ${orchestrator.name} at ${orchestrator.address} `;
      note.textContent = `(at most ${orchestrator.max_running_jobs} jobs at once; ${orchestrator.waiting_calls} calls waiting for a slot)`;
    } else {
      title.textContent = `orchestrator at ${orchestrator.address} `;
      title.classList.add("unhealthy");
      note.textContent = "(down: it did not answer)";
    }
    title.append(note);
    const table = document.createElement("table");
    table.className = "replicas";
    const head = table.createTHead().insertRow();
    for (const name of ["stage", "replica", "health", "slots in use", "device", "loaded models", "model cache", "device memory"]) {
      const th = document.createElement("th");
      th.textContent = name;
      head.append(th);
    }
    table.createTBody();
    fill(table, orchestrator.replicas, drawReplica);
    box.append(title, table);
  }
}

function drawFailure(row, failure) {
  row.dataset.job = failure.job_id;
  cell(row, failure.job_id);
  cell(row, failure.node_id ? `${failure.node_id} ${failure.node_type}` : "–");
  cell(row, `${failure.type}: ${failure.message}`, "error");
  cell(row, failure.finished ? new Date(failure.finished * 1000).toLocaleTimeString() : "–");
}

async function refresh() {
  try {
    const response = await fetch("/v1/cluster", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(problem.detail || `HTTP ${response.status}`);
    }
    const view = await response.json();
    queue.textContent = `queued: ${view.queued}`;
    queue.dataset.queued = String(view.queued);
    fill(document.getElementById("running"), view.running, drawRunning);
    drawOrchestrators(view.orchestrators);
    fill(document.getElementById("failures"), view.failures, drawFailure);
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    statusLine.className = "";
  } catch (error) {
    statusLine.textContent = `cluster view unavailable: ${error.message}`;
    statusLine.className = "error";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
