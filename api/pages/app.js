// The jobs page: sign in, submit demo jobs, follow them live, see their results, cancel them.
// Live updates come from the caller's event stream (EventSource with a stream
// ticket: EventSource cannot send an Authorization header, and a bearer token
// never goes into a URL); when streams are unavailable the page polls.
"use strict";

const TERMINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
const $ = (selector) => document.querySelector(selector);
const jobs = new Map(); // task id -> latest status document
let token = sessionStorage.getItem("conveyor.token");
let source = null;
let lastEventId = null;
let streamFailures = 0;
let pollTimer = null;
let renewTimer = null;

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const sent = { ...headers };
  if (token) sent.Authorization = `Bearer ${token}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(data?.error?.message || response.statusText);
    error.status = response.status;
    error.code = data?.error?.code;
    throw error;
  }
  return { data, retryAfter: Number(response.headers.get("Retry-After")) || null };
}

function showError(error) {
  const box = $("#error");
  box.textContent = error ? `${error.message}${error.code ? ` (${error.code})` : ""}` : "";
  box.hidden = !error;
}

// --- signing in --------------------------------------------------------------

async function signIn(register) {
  showError(null);
  const credentials = { username: $("#username").value, password: $("#password").value };
  try {
    if (register) await api("/api/v1/auth/register", { method: "POST", body: credentials });
    const { data } = await api("/api/v1/auth/login", { method: "POST", body: credentials });
    token = data.access_token;
    sessionStorage.setItem("conveyor.token", token);
    sessionStorage.setItem("conveyor.username", credentials.username);
    $("#password").value = "";
    await enter();
  } catch (error) {
    showError(error);
  }
}

function signOut() {
  token = null;
  sessionStorage.clear();
  stopLive();
  jobs.clear();
  $("#jobs tbody").replaceChildren();
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#whoami").hidden = $("#signout").hidden = true;
}

async function enter() {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#whoami").textContent = sessionStorage.getItem("conveyor.username") || "";
  $("#whoami").hidden = $("#signout").hidden = false;
  try {
    const { data } = await api("/api/v1/tasks?limit=20");
    for (const item of data.items.reverse()) render(item);
  } catch (error) {
    if (error.status === 401) return signOut();
    showError(error);
  }
  startLive();
}

// --- jobs ----------------------------------------------------------------------

async function submit(path, body) {
  showError(null);
  try {
    const { data } = await api(path, {
      method: "POST",
      body,
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    // The job's own events may already have arrived (streams are live): the 202 only
    // adds a row for a job not seen yet, never moves one back to PENDING.
    if (!jobs.has(data.task_id)) render({ ...data, progress: 0, message: "queued" });
    if (!source) schedulePoll(0);
  } catch (error) {
    showError(error);
  }
}

async function cancel(taskId) {
  showError(null);
  try {
    const { data } = await api(`/api/v1/tasks/${taskId}`, { method: "DELETE" });
    render(data);
  } catch (error) {
    showError(error);
  }
}

function render(status) {
  if (!status || !status.task_id) return;
  const known = jobs.get(status.task_id);
  // A late event never moves a finished job back, nor an older document a newer one.
  if (known && TERMINAL.has(known.state) && !TERMINAL.has(status.state)) return;
  if (known?.updated_at && Date.parse(status.updated_at) < Date.parse(known.updated_at)) return;
  const merged = { ...known, ...status };
  jobs.set(status.task_id, merged);
  let row = document.querySelector(`tr[data-task-id="${CSS.escape(status.task_id)}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.taskId = status.task_id;
    row.innerHTML =
      '<td class="task"></td><td class="kind"></td><td class="state"></td>' +
      '<td><progress max="100" value="0"></progress> <span class="percent"></span></td>' +
      '<td class="message"></td><td><button type="button" class="cancel">Cancel</button></td>';
    row.querySelector(".task").textContent = status.task_id.slice(0, 8);
    row.querySelector(".task").title = status.task_id;
    row.querySelector(".cancel").addEventListener("click", () => cancel(status.task_id));
    $("#jobs tbody").prepend(row);
  }
  const progress = merged.state === "SUCCESS" ? 100 : merged.progress || 0;
  row.dataset.state = merged.state;
  row.querySelector(".kind").textContent = merged.kind || "";
  row.querySelector(".state").textContent = merged.state;
  row.querySelector("progress").setAttribute("value", String(progress));
  row.querySelector(".percent").textContent = `${progress}%`;
  row.querySelector(".message").textContent = merged.error
    ? `${merged.error.code}: ${merged.error.message}`
    : merged.message || "";
  row.querySelector(".cancel").hidden = TERMINAL.has(merged.state);
  if (merged.state === "SUCCESS" && merged.result) showResult(row, merged);
}

// --- results: the balance, the text, the cards, the image ------------------------

function showResult(row, status) {
  const next = row.nextElementSibling;
  if (next && next.dataset.resultFor === status.task_id) return; // a result never changes
  const result = document.createElement("tr");
  result.className = "result";
  result.dataset.resultFor = status.task_id;
  const cell = document.createElement("td");
  cell.colSpan = 6;
  cell.append(resultView(status.kind, status.result));
  result.append(cell);
  row.after(result);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function resultView(kind, result) {
  const box = element("div", undefined, "result-body");
  switch (kind) {
    case "ledger.transaction":
      box.append(element("p", `Balance ${result.balance} (minor units) after transaction ` +
        `#${result.transaction_id}`, "balance"));
      break;
    case "ledger.random":
      box.append(element("p", `${result.count} transactions posted; balance ` +
        `${result.balance} (minor units)`, "balance"));
      break;
    case "ai.text":
      box.append(element("p", result.text, "ai-text"));
      break;
    case "ai.presentation": {
      box.append(element("h3", result.title));
      const cards = element("ol", undefined, "cards");
      for (const card of result.cards || []) {
        const item = element("li");
        const bullets = element("ul");
        for (const bullet of card.bullets || []) bullets.append(element("li", bullet));
        item.append(element("strong", card.title), bullets);
        cards.append(item);
      }
      box.append(cards);
      break;
    }
    case "ai.image": {
      const url = typeof result.url === "string" ? result.url : "";
      if (url.startsWith("data:image/")) {
        const image = element("img", undefined, "ai-image");
        image.src = url;
        image.alt = "the generated image";
        box.append(image);
      } else if (/^https?:\/\//.test(url)) {
        // The page's policy loads images from itself only: a link opens one elsewhere.
        const link = element("a", "Open the generated image");
        link.href = url;
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        box.append(link);
      }
      break;
    }
    default:
      box.append(element("pre", JSON.stringify(result, null, 2)));
  }
  if (kind.startsWith("ai.") && result.provider) {
    const cached = result.from_cache ? " · from cache" : "";
    box.append(element("p", `${result.provider} · ${result.model}${cached}`, "meta"));
  }
  return box;
}

// --- live updates: the event stream, else polling --------------------------------

function setMode(text) {
  $("#live-mode").textContent = text;
}

async function startLive() {
  stopLive();
  let ticket;
  let expiresIn;
  try {
    const { data } = await api("/api/v1/events/ticket", { method: "POST" });
    ({ ticket, expires_in: expiresIn } = data);
  } catch (error) {
    if (error.status === 401) return signOut();
    return startPolling(); // no event streams on this server
  }
  // A stream reconnects by itself (after each of web's held streams ends) with
  // the same ticket: a fresh one before it expires, so no reconnect is refused.
  renewTimer = setTimeout(startLive, Math.max(5, expiresIn - 10) * 1000);
  const query = new URLSearchParams({ ticket });
  if (lastEventId) query.set("last_event_id", lastEventId);
  source = new EventSource(`/api/v1/events?${query}`);
  source.onopen = () => {
    streamFailures = 0;
    setMode("live");
  };
  for (const type of ["state", "progress"]) {
    source.addEventListener(type, (event) => {
      if (event.lastEventId) lastEventId = event.lastEventId;
      render(JSON.parse(event.data));
    });
  }
  source.addEventListener("notification", (event) => {
    if (event.lastEventId) lastEventId = event.lastEventId;
  });
  source.onerror = () => {
    // CONNECTING: the browser reconnects by itself (with Last-Event-ID).
    // CLOSED: refused (e.g. the ticket expired): a new ticket, or polling.
    if (source && source.readyState === EventSource.CLOSED) {
      source.close();
      source = null;
      streamFailures += 1;
      if (streamFailures >= 3) startPolling();
      else setTimeout(startLive, 1000 * (streamFailures - 1)); // at once after a working stream
    }
  };
}

function stopLive() {
  if (source) source.close();
  source = null;
  clearTimeout(pollTimer);
  pollTimer = null;
  clearTimeout(renewTimer);
  renewTimer = null;
}

function startPolling() {
  setMode("polling");
  schedulePoll(0);
}

function schedulePoll(seconds) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, seconds * 1000);
}

async function poll() {
  let wait = 2;
  for (const [taskId, status] of jobs) {
    if (TERMINAL.has(status.state)) continue;
    try {
      const { data, retryAfter } = await api(`/api/v1/tasks/${taskId}`);
      render(data);
      if (retryAfter) wait = Math.min(wait, retryAfter);
    } catch (error) {
      if (error.status === 401) return signOut();
    }
  }
  if ([...jobs.values()].some((status) => !TERMINAL.has(status.state)) || !source) {
    schedulePoll(wait);
  }
}

// --- wiring ----------------------------------------------------------------------

$("#signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn(false);
});
$("#register-button").addEventListener("click", () => signIn(true));
$("#signout").addEventListener("click", signOut);
$("#credit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submit("/api/v1/transactions", {
    type: "credit",
    amount: Number($("#credit-amount").value),
    description: "from the jobs page",
  });
});
$("#random-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submit("/api/v1/transactions/random", { count: Number($("#random-count").value) });
});
$("#ai-form").addEventListener("submit", (event) => {
  event.preventDefault();
  submit("/api/v1/ai/generate", {
    kind: "presentation",
    prompt: $("#ai-prompt").value,
    options: { num_cards: 5 },
  });
});

if (token) enter();
