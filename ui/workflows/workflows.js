// A form per saved workflow (from GET /v1/workflows), a run with its values, live progress from the job's
// event stream (SSE), and the finished images in the gallery. Talks only to this gateway.

const statusLine = document.getElementById("status");
const list = document.getElementById("workflows");
const gallery = document.getElementById("gallery");

function field(input) {
  const label = document.createElement("label");
  const caption = document.createElement("span");
  caption.textContent = input.name;
  let control;
  if (input.kind === "image") {
    control = document.createElement("input");
    control.type = "file";
    control.accept = "image/*";
  } else if (input.kind === "boolean") {
    control = document.createElement("input");
    control.type = "checkbox";
    control.checked = Boolean(input.default);
  } else if (input.kind === "choice") {
    control = document.createElement("select");
    for (const choice of input.choices) {
      const option = document.createElement("option");
      option.value = option.textContent = String(choice);
      option.selected = choice === input.default;
      control.append(option);
    }
  } else {
    control = document.createElement("input");
    control.type = input.kind === "string" ? "text" : "number";
    if (input.kind === "number") control.step = input.step ?? "any";
    if (input.kind === "integer") control.step = "1";
    if (input.minimum !== undefined && input.minimum !== null) control.min = input.minimum;
    if (input.maximum !== undefined && input.maximum !== null) control.max = input.maximum;
    control.value = input.default ?? "";
  }
  control.name = input.name;
  control.dataset.kind = input.kind;
  const help = document.createElement("small");
  help.textContent = input.description || `${input.class_type}.${input.input}`;
  label.append(caption, control, help);
  return label;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function values(form) {
  const inputs = {};
  for (const control of form.querySelectorAll("[data-kind]")) {
    const kind = control.dataset.kind;
    if (kind === "image") {
      if (control.files.length) inputs[control.name] = { base64: await readFile(control.files[0]) };
    } else if (kind === "boolean") {
      inputs[control.name] = control.checked;
    } else if (kind === "integer" || kind === "number") {
      if (control.value !== "") inputs[control.name] = Number(control.value);
    } else {
      inputs[control.name] = control.value;
    }
  }
  return inputs;
}

function describeError(body) {
  return body.detail || body.title || JSON.stringify(body);
}

function follow(run, form) {
  const progress = form.querySelector("progress");
  const state = form.querySelector("output");
  const events = new EventSource(run.events_url);
  const done = (text, failed) => {
    state.textContent = text;
    state.classList.toggle("error", failed);
    form.querySelector("button").disabled = false;
    events.close();
  };
  events.addEventListener("started", () => { state.textContent = "started"; });
  events.addEventListener("cached", () => { state.textContent = "cached nodes reused"; });
  events.addEventListener("node_running", (e) => { state.textContent = `running ${JSON.parse(e.data).class_type}`; });
  events.addEventListener("node_progress", (e) => {
    const data = JSON.parse(e.data);
    progress.max = data.max;
    progress.value = data.value;
  });
  events.addEventListener("completed", (e) => {
    progress.max = 1;
    progress.value = 1;
    for (const image of JSON.parse(e.data).images ?? []) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = image.url;
      img.alt = image.filename;
      const caption = document.createElement("figcaption");
      caption.textContent = `${form.dataset.workflow}: ${image.filename}`;
      figure.append(img, caption);
      gallery.prepend(figure);
    }
    done("completed", false);
  });
  events.addEventListener("failed", (e) => done(`failed: ${JSON.parse(e.data).message}`, true));
  events.addEventListener("cancelled", () => done("cancelled", true));
}

function workflowForm(workflow) {
  const form = document.createElement("form");
  form.className = "workflow";
  form.dataset.workflow = workflow.name;
  const title = document.createElement("h2");
  title.textContent = workflow.name;
  const about = document.createElement("p");
  about.textContent = workflow.description;
  form.append(title, about, ...workflow.inputs.map(field));
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = "Run";
  const progress = document.createElement("progress");
  progress.value = 0;
  const state = document.createElement("output");
  form.append(button, progress, state);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    state.classList.remove("error");
    state.textContent = "submitting";
    progress.removeAttribute("value");
    try {
      const reply = await fetch(workflow.run_url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ inputs: await values(form) }),
      });
      const body = await reply.json();
      if (!reply.ok) throw new Error(describeError(body));
      state.textContent = body.status;
      follow(body, form);
    } catch (error) {
      state.textContent = String(error.message || error);
      state.classList.add("error");
      button.disabled = false;
    }
  });
  return form;
}

async function load() {
  const reply = await fetch("/v1/workflows");
  if (!reply.ok) {
    statusLine.textContent = `Could not list workflows: ${reply.status}`;
    return;
  }
  const body = await reply.json();
  list.replaceChildren(...body.items.map(workflowForm));
  statusLine.textContent = body.items.length
    ? `${body.total} saved workflow(s)`
    : "No saved workflows yet: register one with PUT /v1/workflows/{name}";
}

load();
