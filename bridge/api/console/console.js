// pushbridge console: the tenant's jobs through the HTTP API, with the API key kept in
// this tab's sessionStorage only and sent as an Authorization header (never in a URL).
// Everything shown is set with textContent: nothing from a job is ever parsed as HTML.

const KEY_ITEM = "pushbridge.apiKey";
const REFRESH_MS = 5000;
const PAGE = 50;
const MAX_PAGE = 200;

const $ = (id) => document.getElementById(id);
const state = {
  view: "",
  upstream: "",
  jobs: [],
  cursor: null,
  selected: null,
  loading: false,
  armedTimer: null,
  noticeTimer: null,
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

async function api(method, path) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${apiKey()}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new ApiError(0, { detail: "pushbridge cannot be reached" });
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (res.status === 401) {
    signOut("The API key was refused.");
  }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// ---- small rendering helpers -------------------------------------------------------

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

const STATUS_TONE = { completed: "ok", failed: "bad", running: "info", queued: "", cancelled: "" };
const DELIVERY_TONE = {
  delivered: "ok", failed: "bad", scheduled: "warn", pending: "info", delivering: "info", none: "",
};
const DELIVERY_LABEL = { scheduled: "retrying", none: "—" };

function badge(value, tones, labels = {}) {
  return el("span", labels[value] || value, `badge ${tones[value] || ""}`.trim());
}

function age(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function notice(text, bad = false) {
  const box = $("notice");
  box.textContent = text;
  box.classList.toggle("bad", bad);
  clearTimeout(state.noticeTimer);
  state.noticeTimer = setTimeout(() => { box.textContent = ""; }, 6000);
}

// ---- signing in and out ---------------------------------------------------------------

function showSignedIn(signedIn) {
  $("signin").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("session").hidden = !signedIn;
}

function signOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  state.jobs = [];
  state.selected = null;
  $("jobs").tBodies[0].replaceChildren();
  $("detail").hidden = true;
  showSignedIn(false);
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
  $("key").value = "";
  $("key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_ITEM, key);
  $("key").value = "";
  try {
    await api("GET", "v1/jobs?limit=1");
  } catch (e) {
    if (e.status !== 401) signOut(e.message);
    return;
  }
  $("signin-error").hidden = true;
  showSignedIn(true);
  await loadJobs();
  document.querySelector('input[name="view"]:checked').focus();
}

// ---- the list -------------------------------------------------------------------------

function listPath(limit, cursor) {
  const params = new URLSearchParams(state.view);
  if (state.upstream) params.set("upstream", state.upstream);
  params.set("limit", String(limit));
  if (cursor) params.set("cursor", cursor);
  return `v1/jobs?${params}`;
}

function jobRow(job) {
  const tr = el("tr");
  tr.dataset.id = job.id;
  tr.classList.toggle("selected", job.id === state.selected);
  const open = el("button", job.id, "link mono");
  open.type = "button";
  open.setAttribute("aria-label", `Open job ${job.id}`);
  open.addEventListener("click", () => openJob(job.id));
  const first = el("td");
  first.append(open);
  const status = el("td");
  status.append(badge(job.status, STATUS_TONE));
  const delivery = el("td");
  delivery.append(badge(job.delivery.state, DELIVERY_TONE, DELIVERY_LABEL));
  const created = el("td", age(job.created_at));
  created.title = when(job.created_at);
  tr.append(first, status, delivery, el("td", job.upstream), el("td", job.delivery.attempts, "num"), created);
  tr.addEventListener("click", (e) => { if (e.target === tr || e.target.tagName === "TD") openJob(job.id); });
  return tr;
}

function renderJobs() {
  $("jobs").tBodies[0].replaceChildren(...state.jobs.map(jobRow));
  $("empty").hidden = state.jobs.length > 0;
  $("more").hidden = !state.cursor;
  $("jobs-count").textContent = state.jobs.length
    ? `(${state.jobs.length}${state.cursor ? "+" : ""})` : "";
}

async function loadJobs({ append = false } = {}) {
  if (state.loading) return;
  state.loading = true;
  try {
    const limit = append ? PAGE : Math.min(MAX_PAGE, Math.max(PAGE, state.jobs.length));
    const page = await api("GET", listPath(limit, append ? state.cursor : null));
    state.jobs = append ? state.jobs.concat(page.data) : page.data;
    state.cursor = page.next_cursor;
    renderJobs();
  } catch (e) {
    if (e.status !== 401) notice(`Jobs could not be read: ${e.message}`, true);
  } finally {
    state.loading = false;
  }
}

// ---- one job --------------------------------------------------------------------------

function setText(id, value) {
  $(id).textContent = value === null || value === undefined || value === "" ? "—" : String(value);
}

function attemptRow(attempt, n) {
  const code = el("td", attempt.status_code ?? "—");
  if (attempt.status_code) code.className = attempt.status_code < 300 ? "code-ok" : "code-bad";
  const time = el("td", new Date(attempt.at).toLocaleTimeString(), "nowrap");
  time.title = when(attempt.at);
  const tr = el("tr");
  tr.append(
    el("td", n, "num"),
    time,
    code,
    el("td", `${attempt.duration_ms} ms`, "num nowrap"),
    el("td", attempt.error || "—", "attempt-error"),
    el("td", attempt.response_excerpt || "", "excerpt mono"),
  );
  return tr;
}

function renderJob(job, attempts) {
  setText("d-id", job.id);
  $("d-status").replaceChildren(badge(job.status, STATUS_TONE));
  const delivery = $("d-delivery");
  delivery.replaceChildren(badge(job.delivery.state, DELIVERY_TONE, DELIVERY_LABEL));
  if (job.delivery.last_status_code) {
    delivery.append(` last answer ${job.delivery.last_status_code}`);
  }
  setText("d-upstream", job.upstream);
  setText("d-upstream-id", job.upstream_id);
  setText("d-callback", job.callback_url);
  setText("d-created", when(job.created_at));
  setText("d-completed", job.completed_at ? when(job.completed_at) : "");
  setText("d-next", job.delivery.next_attempt_at ? when(job.delivery.next_attempt_at) : "");
  setText("d-error", job.error ? `${job.error.code}: ${job.error.message}` : "");
  setText("d-metadata", job.metadata ? JSON.stringify(job.metadata) : "");
  $("attempts").tBodies[0].replaceChildren(...attempts.map((a, i) => attemptRow(a, i + 1)));
  $("no-attempts").hidden = attempts.length > 0;
  $("redeliver").disabled = !["completed", "failed"].includes(job.status);
  $("cancel").disabled = !["queued", "running"].includes(job.status);
  for (const tr of $("jobs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === job.id);
  const i = state.jobs.findIndex((j) => j.id === job.id);
  if (i >= 0) {
    state.jobs[i] = job;
    $("jobs").tBodies[0].rows[i].replaceWith(jobRow(job));
  }
}

async function loadJob(id) {
  const path = `v1/jobs/${encodeURIComponent(id)}`;
  const [job, attempts] = await Promise.all([api("GET", path), api("GET", `${path}/attempts`)]);
  if (state.selected === id) renderJob(job, attempts.attempts);
}

async function openJob(id) {
  state.selected = id;
  disarm();
  try {
    await loadJob(id);
  } catch (e) {
    if (e.status !== 401) notice(`Job ${id} could not be read: ${e.message}`, true);
    return;
  }
  $("detail").hidden = false;
  $("detail").focus();
}

function closeJob() {
  const id = state.selected;
  state.selected = null;
  $("detail").hidden = true;
  disarm();
  for (const tr of $("jobs").tBodies[0].rows) tr.classList.remove("selected");
  const row = [...$("jobs").tBodies[0].rows].find((tr) => tr.dataset.id === id);
  if (row) row.querySelector("button").focus();
}

// Re-read the open job a few times after an action, so its outcome shows soon.
function followUp(id) {
  for (const ms of [400, 1200, 2500, 4500]) {
    setTimeout(() => { if (state.selected === id) loadJob(id).catch(() => {}); }, ms);
  }
  setTimeout(() => loadJobs(), 1200);
}

async function redeliver() {
  const id = state.selected;
  try {
    await api("POST", `v1/jobs/${encodeURIComponent(id)}/redeliver`);
    notice("Redelivery scheduled.");
    followUp(id);
  } catch (e) {
    if (e.status !== 401) notice(`Redeliver failed: ${e.message}`, true);
  }
}

function disarm() {
  clearTimeout(state.armedTimer);
  const button = $("cancel");
  button.classList.remove("armed");
  button.textContent = "Cancel job";
}

async function cancelJob() {
  const button = $("cancel");
  if (!button.classList.contains("armed")) {  // first press arms, the second cancels
    button.classList.add("armed");
    button.textContent = "Confirm cancel";
    state.armedTimer = setTimeout(disarm, 5000);
    notice("Press again to cancel the job.");
    return;
  }
  disarm();
  const id = state.selected;
  try {
    await api("DELETE", `v1/jobs/${encodeURIComponent(id)}`);
    notice("Job cancelled.");
    followUp(id);
  } catch (e) {
    if (e.status !== 401) notice(`Cancel failed: ${e.message}`, true);
  }
}

// ---- refreshing and keys ---------------------------------------------------------------

async function refresh() {
  if (!apiKey() || document.visibilityState !== "visible") return;
  await loadJobs();
  if (state.selected) await loadJob(state.selected).catch(() => {});
}

function typing(target) {
  return ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName) && target.type !== "radio"
    && target.type !== "checkbox";
}

function onKey(event) {
  if (event.key === "Escape" && state.selected) {
    closeJob();
  } else if ((event.key === "r" || event.key === "R") && !typing(event.target)
             && !event.ctrlKey && !event.metaKey && !event.altKey && apiKey()) {
    refresh();
  }
}

function init() {
  $("signin-form").addEventListener("submit", signIn);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("signout").addEventListener("click", () => signOut());
  $("refresh").addEventListener("click", refresh);
  $("more").addEventListener("click", () => loadJobs({ append: true }));
  $("redeliver").addEventListener("click", redeliver);
  $("cancel").addEventListener("click", cancelJob);
  $("close").addEventListener("click", closeJob);
  for (const radio of document.querySelectorAll('input[name="view"]')) {
    radio.addEventListener("change", () => {
      state.view = radio.value;
      state.jobs = [];
      loadJobs();
    });
  }
  let typingTimer = null;
  $("upstream").addEventListener("input", () => {
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => {
      state.upstream = $("upstream").value.trim();
      state.jobs = [];
      loadJobs();
    }, 350);
  });
  document.addEventListener("keydown", onKey);
  setInterval(() => { if ($("auto").checked) refresh(); }, REFRESH_MS);
  if (apiKey()) {
    showSignedIn(true);
    loadJobs();
  } else {
    showSignedIn(false);
    $("key").focus();
  }
}

init();
