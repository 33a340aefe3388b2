// Pure helpers of the console: the status table, time and SLA wording, reading a token's claims.
// No DOM here, so each rule lives in one place.

// The statuses an agent may move a ticket to, from each status: domain/lifecycle.py,
// TRANSITIONS[Trigger.ADMIN]. The API refuses anything else; the console never offers it.
export const ADMIN_TRANSITIONS = {
  open: ["in_progress", "resolved", "closed"],
  in_progress: ["open", "resolved", "closed"],
  resolved: ["open", "in_progress", "closed"],
  closed: [],
};

export const STATUS_LABELS = {
  open: "Open",
  in_progress: "In progress",
  resolved: "Resolved",
  closed: "Closed",
};

export const PRIORITY_LABELS = { urgent: "Urgent", high: "High", normal: "Normal", low: "Low" };

// A deadline this close counts as "due soon" (the queue's filter and highlight).
export const DUE_SOON_MS = 30 * 60 * 1000;
// A deadline passed this long ago with no breach recorded was met: the SLA sweep marks a breach
// within a second or two of the deadline (README, "How nothing gets lost").
const BREACH_GRACE_MS = 60 * 1000;

export function parseTime(iso) {
  return iso ? Date.parse(iso) : NaN;
}

// "45 s", "12 min", "3 h", "2 d": the coarse span a queue needs.
export function span(ms) {
  const s = Math.max(0, Math.round(Math.abs(ms) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h`;
  return `${Math.floor(h / 24)} d`;
}

// "1:05:09" or "04:59": a clock that counts seconds.
export function clock(ms) {
  const s = Math.max(0, Math.floor(Math.abs(ms) / 1000));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

export function localTime(iso) {
  const t = parseTime(iso);
  return Number.isNaN(t) ? "" : new Date(t).toLocaleString();
}

// The SLA state of a queue row: {kind, text}. kind is one of none, due, soon, breached, met.
// A first response before the deadline (first_response_at) met it.
export function queueSla(ticket, now) {
  if (ticket.sla_breached) {
    const at = parseTime(ticket.sla_breached_at);
    return { kind: "breached", text: `breached ${span(now - at)} ago` };
  }
  const due = parseTime(ticket.sla_due_at);
  if (Number.isNaN(due)) return { kind: "none", text: "none" };
  if (ticket.first_response_at) return { kind: "met", text: "met" };
  // Resolving or closing an unanswered ticket drops its deadline (domain/models.py, _replan_sla):
  // one that kept it was answered first.
  if (ticket.status === "resolved" || ticket.status === "closed") return { kind: "met", text: "met" };
  if (due > now) {
    return { kind: due - now <= DUE_SOON_MS ? "soon" : "due", text: `due in ${span(due - now)}` };
  }
  if (now - due < BREACH_GRACE_MS) return { kind: "soon", text: "due now" };
  return { kind: "met", text: "met" };
}

const TARGET_LABELS = {
  first_response: "First response",
  next_response: "Next response",
  resolution: "Resolution",
};

// The ticket view's clocks: one line per SLA target when the API gives the ticket's clocks
// (`sla`: running towards due_at, paused, met or breached), else the first-response fields.
// Each line is {kind, text}; kind as in queueSla.
export function ticketClocks(ticket, now) {
  if (!Array.isArray(ticket.sla) || ticket.sla.length === 0) return [ticketSla(ticket, now)];
  return ticket.sla.map((c) => {
    const label = TARGET_LABELS[c.target] || c.target;
    const due = parseTime(c.due_at);
    if (c.state === "breached") {
      return { kind: "breached", text: `${label}: breached ${span(now - parseTime(c.breached_at))} ago.` };
    }
    if (c.state === "met") {
      const early = due - parseTime(c.met_at);
      return { kind: "met", text: `${label}: met, ${span(early)} before the deadline.` };
    }
    if (c.state === "paused") {
      return { kind: "none", text: `${label}: paused while resolved (waiting on the requester).` };
    }
    if (due > now) {
      const kind = due - now <= DUE_SOON_MS ? "soon" : "due";
      return { kind, text: `${label}: due in ${clock(due - now)}.` };
    }
    return { kind: "breached", text: `${label}: overdue by ${clock(now - due)}.` };
  });
}

// The first-response clock from the ticket's own fields: exact, since the messages say when an
// agent first answered.
export function ticketSla(ticket, now) {
  if (ticket.sla_breached) {
    const at = parseTime(ticket.sla_breached_at);
    return { kind: "breached", text: `First response SLA breached ${span(now - at)} ago.` };
  }
  const due = parseTime(ticket.sla_due_at);
  if (Number.isNaN(due)) {
    return { kind: "none", text: "No SLA clock runs on this ticket." };
  }
  const firstAnswer = (ticket.messages || []).find((m) => m.is_admin);
  if (firstAnswer) {
    const answeredAt = parseTime(firstAnswer.created_at);
    const early = due - answeredAt;
    return { kind: "met", text: `First response SLA met, ${span(early)} before the deadline.` };
  }
  if (due > now) {
    const kind = due - now <= DUE_SOON_MS ? "soon" : "due";
    return { kind, text: `First response due in ${clock(due - now)}.` };
  }
  return { kind: "breached", text: `First response overdue by ${clock(now - due)}.` };
}

// The claims of a JWT, unverified: only to show who is signed in and to sign out at its expiry.
// The API verifies every request; nothing here is trusted.
export function tokenClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}
