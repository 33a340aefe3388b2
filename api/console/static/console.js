// The agent console: a queue and a ticket view over the JSON API, with the agent's bearer token.
//
// Rules kept throughout:
// - Text from users (subjects, messages, ids, error messages) is only ever set as textContent
//   or as an attribute value, never parsed as HTML; the page's CSP also forbids inline script.
// - The token lives in sessionStorage only (this tab): never in a URL, a cookie or a log line.
// - New tickets and replies appear by polling: the queue's page every POLL_MS, the open ticket
//   with If-None-Match (a 304 reads no messages); both pause while the tab is hidden.

import {
  ADMIN_TRANSITIONS,
  DUE_SOON_MS,
  PRIORITY_LABELS,
  STATUS_LABELS,
  localTime,
  parseTime,
  queueSla,
  span,
  ticketClocks,
  tokenClaims,
} from "./format.js";

const TOKEN_KEY = "helpdesk.console.token";
const ADMIN_URL = "/v1/admin/support/tickets";
const POLL_MS = 3000;
const PER_PAGE = 25;

// -- the token hand-off: take it out of the address bar before anything else runs -------------

const handedOver = takeTokenFromFragment();

function takeTokenFromFragment() {
  const match = /^#token=([^&]*)/.exec(window.location.hash);
  if (!match) return null;
  // Gone from the address bar (and from this entry of the history) at once.
  history.replaceState(null, "", window.location.pathname + window.location.search);
  try {
    return decodeURIComponent(match[1]).trim() || null;
  } catch {
    return null;
  }
}

// -- small DOM helpers ----------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

// el("td", {class: "x"}, "text", child): children that are strings become text nodes.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

let sayTimer = null;

// A short notice in the polite live region, cleared after a while so it never goes stale.
function say(message) {
  $("status-line").textContent = message;
  clearTimeout(sayTimer);
  if (message) sayTimer = setTimeout(() => ($("status-line").textContent = ""), 8000);
}

// -- state ----------------------------------------------------------------------------------

const state = {
  token: null,
  me: null, // the token's subject
  expiryTimer: null,
  pollTimer: null,
  page: 1,
  queueKey: "", // what the rendered queue page was built from: skip identical re-renders
  queueIds: null, // ids on the last page, to announce new ones
  queueRows: [],
  seen: new Map(), // ticket id -> the updated_at the agent has seen: newer is "new activity"
  ticket: null,
  etag: null,
  eventsFor: null, // the ETag whose audit trail is shown
  ticketId: null,
  pagination: null,
};

// -- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const message = body?.error?.message || `the API answered ${status}`;
    super(message);
    this.status = status;
    this.body = body;
  }
}

class SignedOut extends Error {}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = {
    method,
    cache: "no-store",
    credentials: "omit",
    headers: { Authorization: `Bearer ${state.token}`, Accept: "application/json", ...headers },
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    signOut("Your token has expired or was refused. Sign in again with a fresh one.");
    throw new SignedOut();
  }
  if (response.status === 403) {
    signOut("That token is not an admin's: the console is for the support team.");
    throw new SignedOut();
  }
  if (response.status === 304) return { status: 304, headers: response.headers, data: null };
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return { status: response.status, headers: response.headers, data };
}

// -- signing in and out ---------------------------------------------------------------------

async function start() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token-input").value.trim());
  });
  $("dev-sign-in").addEventListener("click", devSignIn);
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  wireQueue();
  wireTicket();
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.token) poll();
  });
  window.addEventListener("hashchange", () => {
    // The host app's link followed again in this tab: a new token replaces the old one.
    const token = takeTokenFromFragment();
    if (token) signIn(token);
    else route();
  });
  setInterval(tickClocks, 1000);
  loadConfig();

  const token = handedOver || sessionStorage.getItem(TOKEN_KEY);
  if (token) await signIn(token);
  else showSignIn("");
}

async function loadConfig() {
  try {
    const response = await fetch("/console/config.json", { cache: "no-store" });
    const config = await response.json();
    $("dev-sign-in").hidden = !config.dev_sign_in;
  } catch {
    // No dev sign-in then; pasting a token still works.
  }
}

async function devSignIn() {
  try {
    const response = await fetch("/console/dev-token", { method: "POST", cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    const { token } = await response.json();
    await signIn(token);
  } catch {
    showSignIn("The development sign-in is not available on this server.");
  }
}

async function signIn(token) {
  token = token.replace(/^bearer\s+/i, "").trim(); // pasted with its header's scheme
  if (!token) {
    showSignIn("Paste a token first.");
    return;
  }
  const claims = tokenClaims(token);
  if (!claims || (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now())) {
    sessionStorage.removeItem(TOKEN_KEY); // a kept token that ran out while the tab was away
    showSignIn(
      claims
        ? "That token has expired. Sign in with a fresh one."
        : "That is not a token: a token has three parts separated by dots.",
    );
    return;
  }
  state.token = token;
  state.me = typeof claims.sub === "string" ? claims.sub : null;
  // Ask the API once before showing anything: it says whether the token is valid and an admin's.
  try {
    await api(`${ADMIN_URL}?per_page=1`);
  } catch (error) {
    if (!(error instanceof SignedOut)) {
      state.token = null;
      showSignIn(`Cannot sign in: ${error.message}.`);
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  clearTimeout(state.expiryTimer);
  if (typeof claims.exp === "number") {
    // Sign out when the token runs out, rather than on the next refused request.
    const left = claims.exp * 1000 - Date.now();
    state.expiryTimer = setTimeout(
      () => signOut("Your token has expired. Sign in again with a fresh one."),
      Math.min(left, 2 ** 31 - 1),
    );
  }
  $("who-name").textContent = `Signed in as ${state.me || "an agent"}`;
  $("who").hidden = false;
  $("sign-in").hidden = true;
  $("app").hidden = false;
  say("");
  try {
    await refreshQueue();
    await route();
  } catch (error) {
    if (error instanceof SignedOut) return; // refused meanwhile: the sign-in form says why
    throw error;
  }
  // The sign-in form is gone: keyboard and screen reader users continue at the queue.
  if (!state.ticketId) $("queue-title").focus({ preventScroll: true });
  schedulePoll();
}

function signOut(notice) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = null;
  state.ticket = null;
  state.ticketId = null;
  state.etag = null;
  state.queueKey = "";
  state.queueIds = null;
  state.seen = new Map();
  state.queueRows = [];
  state.pagination = null;
  clearTimeout(state.expiryTimer);
  clearTimeout(state.pollTimer);
  $("queue-rows").replaceChildren();
  $("messages").replaceChildren();
  $("events").replaceChildren();
  showSignIn(notice);
}

function showSignIn(notice) {
  $("app").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-notice").textContent = notice;
  $("token-input").focus();
}

// -- polling --------------------------------------------------------------------------------

function schedulePoll() {
  clearTimeout(state.pollTimer);
  state.pollTimer = setTimeout(poll, POLL_MS);
}

async function poll() {
  clearTimeout(state.pollTimer);
  if (!state.token) return;
  if (!document.hidden) {
    try {
      await refreshQueue();
      if (state.ticketId) await refreshTicket();
    } catch (error) {
      if (error instanceof SignedOut) return;
    }
  }
  if (state.token) schedulePoll();
}

// -- the queue ------------------------------------------------------------------------------

function wireQueue() {
  // Another filter or page is another list: only tickets that arrive in the same one are "new".
  $("filters").addEventListener("change", () => {
    state.page = 1;
    state.queueIds = null;
    refreshQueue();
  });
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("prev-page").addEventListener("click", () => {
    state.page = Math.max(1, state.page - 1);
    state.queueIds = null;
    refreshQueue();
  });
  $("next-page").addEventListener("click", () => {
    state.page += 1;
    state.queueIds = null;
    refreshQueue();
  });
}

function queueQuery() {
  const form = new FormData($("filters"));
  const params = new URLSearchParams({ page: String(state.page), per_page: String(PER_PAGE) });
  for (const name of ["status", "priority", "assignee"]) {
    const value = form.get(name);
    if (value) params.set(name, value);
  }
  const sla = form.get("sla");
  if (sla === "breached") params.set("breached", "true");
  if (sla === "due_soon") {
    params.set("breached", "false");
    params.set("sla_due_before", new Date(Date.now() + DUE_SOON_MS).toISOString());
    params.set("sort", "sla_due");
  }
  return params;
}

async function refreshQueue() {
  if (!state.token) return;
  let result;
  try {
    result = await api(`${ADMIN_URL}?${queueQuery()}`);
  } catch (error) {
    if (error instanceof SignedOut) throw error;
    $("queue-error").textContent = `The queue could not be loaded: ${error.message}.`;
    return;
  }
  $("queue-error").textContent = "";
  const { data, pagination } = result.data;
  if (pagination.total_pages > 0 && state.page > pagination.total_pages) {
    state.page = pagination.total_pages; // the last page emptied under us
    return refreshQueue();
  }
  const key = JSON.stringify([data, pagination]);
  if (key === state.queueKey) return;
  state.queueKey = key;
  announceNew(data);
  state.queueRows = data;
  state.pagination = pagination;
  renderQueue(data, pagination);
}

function announceNew(rows) {
  const ids = new Set(rows.map((t) => t.id));
  if (!state.queueIds) {
    // A list shown afresh (sign-in, another filter or page): what it holds is not news.
    for (const t of rows) if (!state.seen.has(t.id)) state.seen.set(t.id, t.updated_at);
  } else {
    const fresh = rows.filter((t) => !state.queueIds.has(t.id)).length;
    if (fresh === 1) say("1 new ticket in the queue.");
    else if (fresh > 1) say(`${fresh} new tickets in the queue.`);
  }
  state.queueIds = ids;
}

function renderQueue(rows, pagination) {
  const now = Date.now();
  const body = $("queue-rows");
  // A poll must not take the keyboard focus away from the row the agent is on.
  const focused = body.contains(document.activeElement)
    ? document.activeElement.closest("tr")?.getAttribute("data-id")
    : null;
  body.replaceChildren(...rows.map((ticket) => queueRow(ticket, now)));
  if (focused) body.querySelector(`tr[data-id="${CSS.escape(focused)}"] a`)?.focus();
  $("queue-empty").hidden = rows.length > 0;
  $("queue-count").textContent = `${pagination.total} ticket${pagination.total === 1 ? "" : "s"}`;
  const pages = Math.max(1, pagination.total_pages);
  $("page-info").textContent = `Page ${pagination.page} of ${pages}`;
  $("prev-page").disabled = pagination.page <= 1;
  $("next-page").disabled = pagination.page >= pages;
}

function queueRow(ticket, now) {
  const sla = queueSla(ticket, now);
  const classes = ["ticket-row"];
  if (ticket.priority === "urgent") classes.push("is-urgent");
  if (sla.kind === "breached") classes.push("is-breached");
  if (ticket.id === state.ticketId) classes.push("is-selected");
  const link = el("a", { href: `#/tickets/${ticket.id}`, class: "subject" }, ticket.subject);
  if (ticket.id === state.ticketId) link.setAttribute("aria-current", "true");
  return el(
    "tr",
    { class: classes.join(" "), "data-id": ticket.id },
    el("td", { class: "c-subject", "data-label": "Subject" }, link, activityBadge(ticket)),
    el("td", { class: "c-requester", "data-label": "Requester" }, ticket.user_id),
    el("td", { "data-label": "Status" }, statusBadge(ticket.status)),
    el("td", { "data-label": "Priority" }, priorityBadge(ticket.priority)),
    el("td", { "data-label": "Assignee" }, assigneeText(ticket.assignee_id)),
    el(
      "td",
      { class: "c-age", "data-label": "Age", title: localTime(ticket.created_at) },
      el("span", { "data-age": ticket.created_at }, span(now - parseTime(ticket.created_at))),
    ),
    el("td", { "data-label": "SLA" }, slaBadge(ticket)),
  );
}

// Since the agent last looked: a ticket that arrived, or one with a reply or change since.
function activityBadge(ticket) {
  if (ticket.id === state.ticketId) return null;
  const seen = state.seen.get(ticket.id);
  if (seen === undefined) return el("span", { class: "badge activity" }, "new");
  if (parseTime(ticket.updated_at) > parseTime(seen)) {
    return el("span", { class: "badge activity" }, "new activity");
  }
  return null;
}

function statusBadge(status) {
  return el("span", { class: `badge status-${status}` }, STATUS_LABELS[status] || status);
}

function priorityBadge(priority) {
  return el("span", { class: `badge priority-${priority}` }, PRIORITY_LABELS[priority] || priority);
}

function slaBadge(ticket) {
  const sla = queueSla(ticket, Date.now());
  const badge = el("span", { class: `badge sla-${sla.kind}`, "data-sla": "" }, sla.text);
  badge.slaTicket = ticket;
  return badge;
}

function assigneeText(assignee) {
  if (!assignee) return el("span", { class: "muted" }, "unassigned");
  return assignee === state.me ? `${assignee} (me)` : assignee;
}

// Ages and SLA states move with the clock; the data only changes on a poll.
function tickClocks() {
  if (!state.token) return;
  const now = Date.now();
  for (const node of document.querySelectorAll("[data-age]")) {
    node.textContent = span(now - parseTime(node.getAttribute("data-age")));
  }
  for (const node of document.querySelectorAll("[data-sla]")) {
    if (!node.slaTicket) continue;
    const sla = queueSla(node.slaTicket, now);
    node.textContent = sla.text;
    node.className = `badge sla-${sla.kind}`;
  }
  if (state.ticket) renderSlaClock(now);
}

// -- one ticket -----------------------------------------------------------------------------

function wireTicket() {
  $("back").addEventListener("click", () => {
    const id = state.ticketId;
    history.pushState(null, "", window.location.pathname + window.location.search);
    closeTicket();
    const link = id && document.querySelector(`tr[data-id="${CSS.escape(id)}"] a`);
    if (link) link.focus();
  });
  $("ticket-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveTicket();
  });
  $("assignee-select").addEventListener("change", () => {
    const other = $("assignee-select").value === "__other";
    $("assignee-other-label").hidden = !other;
    if (other) $("assignee-other").focus();
  });
  $("reply-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sendReply();
  });
  $("reply-body").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("reply-form").requestSubmit();
    }
  });
}

async function route() {
  if (!state.token) return;
  const match = /^#\/tickets\/([0-9A-Za-z]{26})$/.exec(window.location.hash);
  if (!match) {
    closeTicket();
    return;
  }
  if (match[1] !== state.ticketId) await openTicket(match[1]);
}

async function openTicket(id) {
  state.ticketId = id;
  state.ticket = null;
  state.etag = null;
  state.eventsFor = null;
  $("ticket-error").textContent = "";
  $("reply-body").value = "";
  $("messages").replaceChildren();
  $("events").replaceChildren();
  $("ticket-subject").textContent = "Loading…";
  $("ticket").hidden = false;
  $("app").classList.add("has-ticket");
  markSelected();
  try {
    await refreshTicket();
  } catch (error) {
    if (error instanceof SignedOut) return;
  }
  // Focus the ticket for keyboard and screen reader users without jumping the page on a wide
  // screen (the ticket pane stays in view there); a narrow screen shows the ticket from its top.
  if (!window.matchMedia("(min-width: 1000px)").matches) window.scrollTo(0, 0);
  $("ticket-subject").focus({ preventScroll: true });
}

function closeTicket() {
  state.ticketId = null;
  state.ticket = null;
  state.etag = null;
  $("ticket").hidden = true;
  $("app").classList.remove("has-ticket");
  markSelected();
}

// The open ticket's row is marked (and loses its activity badge): the rows are drawn again.
function markSelected() {
  if (state.pagination) renderQueue(state.queueRows, state.pagination);
}

async function refreshTicket() {
  const id = state.ticketId;
  if (!id) return;
  let result;
  try {
    const headers = state.etag ? { "If-None-Match": state.etag } : {};
    result = await api(`${ADMIN_URL}/${id}`, { headers });
  } catch (error) {
    if (error instanceof SignedOut) throw error;
    if (id === state.ticketId) {
      $("ticket-error").textContent = `The ticket could not be loaded: ${error.message}.`;
      if (!state.ticket) $("ticket-subject").textContent = "Ticket not available";
    }
    return;
  }
  if (id !== state.ticketId || result.status === 304) return;
  showTicket(result.data, result.headers.get("ETag"));
}

function showTicket(ticket, etag) {
  const grew = state.ticket && ticket.messages.length > state.ticket.messages.length;
  state.ticket = ticket;
  state.seen.set(ticket.id, ticket.updated_at);
  state.etag = etag;
  renderTicket(ticket);
  if (grew) say("New message in this ticket.");
  if (state.eventsFor !== etag) loadEvents(ticket.id, etag);
}

function renderTicket(ticket) {
  $("ticket-subject").textContent = ticket.subject;
  const facts = [
    ["Requester", ticket.user_id],
    ["Status", STATUS_LABELS[ticket.status]],
    ["Priority", PRIORITY_LABELS[ticket.priority]],
    ["Assignee", ticket.assignee_id ? assigneeText(ticket.assignee_id) : "unassigned"],
    ["Category", ticket.category || "none"],
    ["Opened", localTime(ticket.created_at)],
    ["Ticket id", ticket.id],
  ];
  $("ticket-facts").replaceChildren(
    ...facts.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]),
  );
  renderControls(ticket);
  renderSlaClock(Date.now());
  $("messages").replaceChildren(...ticket.messages.map(messageItem));
  const closed = ticket.status === "closed";
  $("reply-body").disabled = closed;
  $("send-reply").disabled = closed;
  $("reply-help").textContent = closed ? "This ticket is closed: no more replies." : "Ctrl+Enter sends.";
}

function renderControls(ticket) {
  const status = $("status-select");
  const allowed = ADMIN_TRANSITIONS[ticket.status] || [];
  status.replaceChildren(
    el("option", { value: ticket.status }, `${STATUS_LABELS[ticket.status]} (now)`),
    ...allowed.map((s) => el("option", { value: s }, STATUS_LABELS[s])),
  );
  status.value = ticket.status;
  $("priority-select").value = ticket.priority;
  const assignee = $("assignee-select");
  const options = [el("option", { value: "" }, "Unassigned")];
  if (state.me) options.push(el("option", { value: state.me }, `Me (${state.me})`));
  if (ticket.assignee_id && ticket.assignee_id !== state.me) {
    options.push(el("option", { value: ticket.assignee_id }, ticket.assignee_id));
  }
  options.push(el("option", { value: "__other" }, "Another agent…"));
  assignee.replaceChildren(...options);
  assignee.value = ticket.assignee_id || "";
  $("assignee-other-label").hidden = true;
  $("assignee-other").value = "";
  const closed = ticket.status === "closed";
  for (const control of [status, $("priority-select"), assignee, $("save-ticket")]) {
    control.disabled = closed;
  }
}

// One line per SLA clock, counting to the second. Redrawn every second, so it is not a live
// region (that would read it out each second); breaches are in the queue's badge and here.
function renderSlaClock(now) {
  const lines = ticketClocks(state.ticket, now);
  const list = $("sla-clock");
  if (list.children.length !== lines.length) {
    list.replaceChildren(...lines.map(() => el("li")));
  }
  lines.forEach((line, i) => {
    list.children[i].textContent = line.text;
    list.children[i].className = `sla-clock-line sla-${line.kind}`;
  });
}

function messageItem(message) {
  const who = message.is_admin ? "Agent" : "Requester";
  return el(
    "li",
    { class: message.is_admin ? "msg msg-agent" : "msg msg-user" },
    el(
      "p",
      { class: "msg-meta" },
      el("strong", {}, who),
      " ",
      el("time", { datetime: message.created_at }, localTime(message.created_at)),
    ),
    el("p", { class: "msg-body" }, message.body),
  );
}

async function saveTicket() {
  const ticket = state.ticket;
  if (!ticket) return;
  const change = {};
  const status = $("status-select").value;
  if (status !== ticket.status) change.status = status;
  const priority = $("priority-select").value;
  if (priority !== ticket.priority) change.priority = priority;
  let assignee = $("assignee-select").value;
  if (assignee === "__other") assignee = $("assignee-other").value.trim();
  if ((assignee || null) !== (ticket.assignee_id || null)) change.assignee_id = assignee || null;
  if (Object.keys(change).length === 0) {
    $("ticket-error").textContent = "Nothing to change.";
    return;
  }
  $("ticket-error").textContent = "";
  try {
    const result = await api(`${ADMIN_URL}/${ticket.id}`, {
      method: "PATCH",
      body: change,
      headers: state.etag ? { "If-Match": state.etag } : {},
    });
    showTicket(result.data, result.headers.get("ETag"));
    say("Ticket saved.");
    refreshQueue();
  } catch (error) {
    if (error instanceof SignedOut) return;
    if (error.status === 412 && error.body?.ticket) {
      showTicket(error.body.ticket, null);
      state.etag = null; // fetch it afresh with its ETag on the next poll
      $("ticket-error").textContent =
        "Not saved: someone changed this ticket meanwhile; it is shown as it is now. " +
        `The API said: ${error.message}.`;
    } else {
      $("ticket-error").textContent = `Not saved: ${error.message}`;
    }
  }
}

async function sendReply() {
  const ticket = state.ticket;
  const body = $("reply-body").value;
  if (!ticket) return;
  if (!body.trim()) {
    $("ticket-error").textContent = "Write a reply first.";
    $("reply-body").focus();
    return;
  }
  $("send-reply").disabled = true;
  try {
    // One key per reply written: a retried send is answered once, never posted twice.
    await api(`${ADMIN_URL}/${ticket.id}/messages`, {
      method: "POST",
      body: { body },
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    $("reply-body").value = "";
    $("ticket-error").textContent = "";
    say("Reply sent.");
    await refreshTicket();
    refreshQueue();
  } catch (error) {
    if (error instanceof SignedOut) return;
    $("ticket-error").textContent = `Reply not sent: ${error.message}`;
  } finally {
    $("send-reply").disabled = state.ticket?.status === "closed";
  }
}

// -- the audit trail ------------------------------------------------------------------------

async function loadEvents(id, etag) {
  state.eventsFor = etag;
  let result;
  try {
    result = await api(`${ADMIN_URL}/${id}/events?per_page=100`);
  } catch (error) {
    if (error instanceof SignedOut) return;
    $("events").replaceChildren(el("li", { class: "error" }, `Not available: ${error.message}`));
    return;
  }
  if (id !== state.ticketId) return;
  $("events").replaceChildren(...result.data.data.map(eventItem));
}

function eventItem(event) {
  const actor = event.actor_id
    ? `${event.actor_is_admin ? "agent" : "user"} ${event.actor_id}`
    : "the service";
  const told = event.notifications.map((n) => `${n.channel} to ${n.recipient}: ${n.status}`);
  return el(
    "li",
    { class: "event" },
    el(
      "p",
      { class: "event-meta" },
      el("time", { datetime: event.created_at }, localTime(event.created_at)),
      " ",
      el("strong", {}, event.type),
      ` by ${actor}`,
    ),
    el("p", { class: "event-detail" }, eventDetail(event)),
    told.length ? el("p", { class: "event-told muted" }, `Told: ${told.join("; ")}`) : null,
  );
}

function eventDetail(event) {
  const changes = event.payload?.changes;
  if (changes && typeof changes === "object") {
    return Object.entries(changes)
      .map(([field, c]) => `${field}: ${c?.old ?? "none"} → ${c?.new ?? "none"}`)
      .join(", ");
  }
  const entries = Object.entries(event.payload || {});
  return entries.map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

start();
