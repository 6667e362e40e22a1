// teeflow dashboard: polls /api/snapshot and renders it with DOM APIs (textContent only).
"use strict";

const POLL_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function badge(text, cls) { return el("span", { class: "badge " + cls }, text); }
function short(hex, n) { return typeof hex === "string" ? hex.slice(0, n || 12) + "…" : "—"; }

function age(seconds) {
  if (typeof seconds !== "number") return "—";
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function table(headers, rows, rowAttrs) {
  const head = el("tr", {}, ...headers.map((h) => el("th", {}, h)));
  const body = rows.map((cells, i) =>
    el("tr", rowAttrs ? rowAttrs(i) : {}, ...cells.map((c) => el("td", {}, c))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function replace(sectionId, ...nodes) {
  const body = document.querySelector("#" + sectionId + " .body");
  body.replaceChildren(...nodes.filter((n) => n));
}

function renderStatus(doc) {
  document.getElementById("identity").textContent =
    "party " + doc.party + " · KBS " + doc.kbs + " · updated " + doc.generated_at;
  const a = doc.audit_status || {};
  const badges = [];
  if (a.state === "verified") badges.push(badge("audit chain verified (" + a.entries + " entries)", "ok"));
  else if (a.state === "rollback") badges.push(badge("KBS STATE ROLLED BACK: " + a.error, "bad"));
  else if (a.state === "broken") badges.push(badge("AUDIT CHAIN BROKEN: " + a.error, "bad"));
  else badges.push(badge("audit log: " + (a.error || a.state), "warn"));
  if (doc.head) badges.push(badge("state head seq " + doc.head.seq + " " + short(doc.head.hash, 16) + " (no rollback seen)", a.state === "rollback" ? "bad" : "ok"));
  const current = (doc.agreements || []).slice(-1)[0];
  if (current && current.allow_emulated) badges.push(badge("agreement allows EMULATED TEEs", "warn"));
  if (doc.denials) badges.push(badge(doc.denials + " denials", "info"));
  document.getElementById("status").replaceChildren(...badges);
}

function diffBlock(lines) {
  const pre = el("pre", { class: "diff" });
  for (const line of lines) {
    const cls = line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "";
    pre.appendChild(el("span", { class: cls }, line + "\n"));
  }
  return pre;
}

function renderFederation(doc) {
  const versions = doc.agreements || [];
  if (!versions.length) {
    const st = doc.agreement_status || {};
    replace("federation", el("p", { class: "muted" }, st.error || "no agreement yet"));
    return;
  }
  const cur = versions[versions.length - 1];
  const summary = el("p", {},
    "Federation ", el("b", {}, cur.federation), ", agreement version ", el("b", {}, cur.version),
    " (", el("span", { class: "mono" }, short(cur.digest, 16)), "): parties ",
    cur.parties.join(", "), "; packages ", cur.packages.join(", ") || "none",
    "; workload roles ", cur.roles.join(", ") || "none", ".");
  const rows = versions.slice().reverse().map((v) => [
    String(v.version), el("span", { class: "mono" }, short(v.digest, 16)), v.signers.join(", "),
    v.signatures_verified ? badge("verified", "ok") : badge("NOT VERIFIED: " + v.problem, "bad"),
  ]);
  const diffs = versions.filter((v) => v.diff.length).reverse().map((v) =>
    el("details", {}, el("summary", {}, "diff version " + (v.version - 1) + " → " + v.version), diffBlock(v.diff)));
  replace("federation", summary, table(["version", "digest", "signed by", "signatures"], rows),
    diffs.length ? el("h3", {}, "Changes between versions") : null, ...diffs);
}

function renderWorkloads(doc) {
  const rows = (doc.workloads || []).map((w) => [
    w.role || "—", w.party || "—", w.tee || "—",
    el("span", { class: "mono", title: w.measurement || "" }, short(w.measurement, 16)),
    w.tcb_status ? badge(w.tcb_status, /UpToDate|affirming|ok/i.test(w.tcb_status) ? "ok" : "warn") : "—",
    w.emulated ? badge("EMULATED", "warn") : badge("hardware", "ok"),
    age(w.age_seconds) + " ago", String(w.attestations),
    w.enrollment ? el("span", {}, el("span", { class: "mono" }, short(w.enrollment, 10)),
      w.enrollment_revoked ? badge("revoked", "bad") : null) : "—",
  ]);
  replace("workloads", rows.length
    ? table(["role", "party", "TEE", "measurement", "TCB status", "emulated", "last attested", "attestations", "enrollment"], rows)
    : el("p", { class: "muted" }, "no workload has attested yet"));
}

function chart(title, rounds, keys) {
  const W = 420, H = 200, L = 44, R = 10, T = 22, B = 28;
  const root = svg("svg", { class: "chart", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
  const label = svg("text", { x: L, y: 14 }); label.textContent = title; root.appendChild(label);
  const points = rounds.filter((r) => typeof r.round === "number");
  const values = [];
  for (const r of points) for (const k of keys) if (typeof r.metrics[k] === "number") values.push(r.metrics[k]);
  if (!values.length) return root;
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const maxRound = Math.max(1, ...points.map((r) => r.round));
  const x = (n) => L + (W - L - R) * (n / maxRound);
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  root.appendChild(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#9ca3af" }));
  root.appendChild(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#9ca3af" }));
  for (const [v, yy] of [[hi, T], [lo, H - B]]) {
    const t = svg("text", { x: 2, y: yy + 4 }); t.textContent = v.toPrecision(3); root.appendChild(t);
  }
  const xl = svg("text", { x: W - R - 40, y: H - 8 }); xl.textContent = "round " + maxRound; root.appendChild(xl);
  keys.forEach((k, i) => {
    const pts = points.filter((r) => typeof r.metrics[k] === "number");
    if (!pts.length) return;
    const color = COLORS[i % COLORS.length];
    root.appendChild(svg("polyline", { fill: "none", stroke: color, "stroke-width": 2,
      points: pts.map((r) => x(r.round) + "," + y(r.metrics[k])).join(" ") }));
    for (const r of pts) root.appendChild(svg("circle", { cx: x(r.round), cy: y(r.metrics[k]), r: 3, fill: color }));
    const legend = svg("text", { x: L + 8 + 130 * i, y: T + 12, fill: color }); legend.textContent = k;
    root.appendChild(legend);
  });
  return root;
}

function renderSessions(doc) {
  const sessions = doc.sessions || [];
  if (!sessions.length) { replace("sessions", el("p", { class: "muted" }, "no session yet")); return; }
  const blocks = [];
  for (const s of sessions) {
    const p = s.progress || {};
    const state = p.reachable === false
      ? badge("aggregator not reachable (" + (p.error || "?") + "; session over?): last progress read shown", "warn")
      : p.state ? badge(p.state, p.state === "failed" ? "bad" : "info") : badge("KBS counter only", "info");
    blocks.push(el("h3", { "data-session": s.session }, "Session " + s.session + " ", state,
      p.emulated ? badge("EMULATED aggregator", "warn") : null));
    if (p.clients && p.clients.length) blocks.push(el("p", {}, "connected clients: " + p.clients.join(", ")));
    const rounds = s.rounds || [];
    const keys = new Set();
    for (const r of rounds) for (const k of Object.keys(r.metrics)) keys.add(k);
    const acc = [...keys].filter((k) => /acc/i.test(k)).sort();
    const loss = [...keys].filter((k) => /loss/i.test(k)).sort();
    blocks.push(el("div", { class: "charts" }, chart("accuracy per round", rounds, acc), chart("loss per round", rounds, loss)));
    const rows = rounds.map((r) => [
      String(r.round), r.clients.length + (r.clients.length ? " (" + r.clients.join(", ") + ")" : ""),
      typeof r.seconds === "number" ? r.seconds.toFixed(1) + " s" : "—",
      Object.entries(r.metrics).map(([k, v]) => k + "=" + Number(v).toPrecision(3)).join(" "),
      el("span", { class: "mono" }, short(r.digest, 12)),
      r.confirmed === true ? badge("KBS counter ✓", "ok") : r.confirmed === false ? badge("not in KBS counter", "warn") : "—",
    ]);
    if (rows.length) {
      blocks.push(table(["round", "clients", "time", "metrics", "model digest", "KBS"], rows,
        (i) => ({ "data-round": rounds[i].round, "data-session": s.session })));
    }
  }
  replace("sessions", ...blocks);
}

function renderProvenance(doc) {
  const blocks = [];
  for (const s of doc.sessions || []) {
    const counter = s.counter || {};
    const rows = Object.keys(counter).map(Number).sort((a, b) => a - b).map((n) => [
      String(n), el("span", { class: "mono" }, counter[String(n)]),
    ]);
    if (!rows.length) continue;
    blocks.push(el("h3", {}, "Session " + s.session),
      el("p", {}, "Committed rounds recorded by the KBS rollback counter; aggregator measurement ",
        el("span", { class: "mono" }, short(s.aggregator, 16)), ". Verify the final model with ",
        el("code", {}, "teeflow model verify"), "."),
      table(["round", "model digest (KBS counter)"], rows));
  }
  replace("provenance", ...(blocks.length ? blocks : [el("p", { class: "muted" }, "no committed round yet")]));
}

function renderAudit(doc) {
  const rows = (doc.audit || []).map((e) => [
    String(e.seq), e.time.replace("T", " ").slice(0, 19) + "Z", e.kind,
    badge(e.decision, e.decision === "deny" ? "bad" : e.decision === "accept" ? "ok" : "info"),
    el("span", { class: "mono" }, e.subject), e.reasons.join("; "),
  ]);
  replace("audit", el("p", { class: "muted" }, "newest first; " + (doc.audit_total || 0) + " entries in all"),
    table(["seq", "time (UTC)", "kind", "decision", "subject", "reasons"], rows));
}

async function refresh() {
  try {
    const response = await fetch("/api/snapshot", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const doc = await response.json();
    renderStatus(doc); renderFederation(doc); renderWorkloads(doc);
    renderSessions(doc); renderProvenance(doc); renderAudit(doc);
    document.body.setAttribute("data-loaded", doc.generated_at);
  } catch (err) {
    document.getElementById("identity").textContent = "dashboard unavailable: " + err.message;
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", refresh);
