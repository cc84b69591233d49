// burnwatch status page: reads the agent's JSON API and renders every (SLO, tenant)
// with a budget bar, burn-rate sparklines (inline SVG) and its alert. No framework, no
// external assets. Tenant names come from HTTP traffic: only ever set as textContent.
"use strict";

const REFRESH_MS = 5000;
const MAX_CHARTED = 200; // series whose history is fetched each refresh
const SVG = "http://www.w3.org/2000/svg";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function pct(x) { return (x * 100).toFixed(x < 0.1 && x > -0.1 ? 2 : 1) + "%"; }
function burn(x) { return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2); }
// Thresholds: 14.4, 6, 0.233 (no trailing zeros).
function num(x) { return String(Number(x.toPrecision(3))); }

function duration(secs) {
  if (secs === null || secs === undefined) return "—";
  secs = Math.max(0, Math.round(secs));
  const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
  let out = "";
  for (const [u, n] of units) {
    if (secs >= n && out.split(" ").length <= 2) { out += Math.floor(secs / n) + u + " "; secs %= n; }
  }
  return out.trim() || "0s";
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// One sparkline: burn rate over `window` for the last hours, log scale, with the
// threshold of the highest-priority tier reading this window drawn dashed.
function sparkline(window, values, threshold, current) {
  const box = el("div", "spark");
  box.dataset.window = window;
  const label = el("div", "", window + " burn " + burn(current));
  box.appendChild(label);
  const w = 120, h = 34, pad = 3;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${window} burn rate, last hours`);
  const known = values.filter((v) => v !== null);
  const top = Math.max(2, threshold ? threshold * 1.5 : 0, ...known);
  const y = (v) => h - pad - (Math.log10(1 + v) / Math.log10(1 + top)) * (h - 2 * pad);
  const x = (i) => values.length <= 1 ? w - pad : pad + (i * (w - 2 * pad)) / (values.length - 1);
  if (threshold) {
    const t = document.createElementNS(SVG, "line");
    t.setAttribute("class", "threshold");
    t.setAttribute("x1", 0); t.setAttribute("x2", w);
    t.setAttribute("y1", y(threshold).toFixed(1)); t.setAttribute("y2", y(threshold).toFixed(1));
    svg.appendChild(t);
  }
  let d = "", pen = false, points = 0, lastX = 0, lastY = 0;
  values.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    lastX = x(i); lastY = y(v); points++;
    d += (pen ? "L" : "M") + lastX.toFixed(1) + " " + lastY.toFixed(1) + " ";
    pen = true;
  });
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("class", "burn");
  path.setAttribute("d", d.trim());
  svg.appendChild(path);
  const dot = document.createElementNS(SVG, "circle");
  dot.setAttribute("cx", lastX.toFixed(1)); dot.setAttribute("cy", lastY.toFixed(1)); dot.setAttribute("r", 2);
  if (points > 0) svg.appendChild(dot);
  svg.dataset.points = points;
  box.appendChild(svg);
  return box;
}

function seriesCard(s, detail, now) {
  const card = el("article", "card " + s.status);
  card.dataset.slo = s.slo;
  card.dataset.tenant = s.tenant;
  const title = el("div", "title");
  const name = el("b");
  name.appendChild(el("span", "tenant", s.tenant));
  name.appendChild(el("span", "dim", " · " + s.slo));
  title.appendChild(name);
  title.appendChild(el("span", "badge " + (s.firing ? s.firing.tier.severity : ""),
    s.firing ? s.firing.tier.severity.toUpperCase() : s.status));
  card.appendChild(title);

  const remaining = s.budget_remaining;
  const bar = el("div", "bar" + (remaining <= 0 ? " out" : remaining < 0.25 ? " low" : ""));
  bar.setAttribute("role", "meter");
  bar.setAttribute("aria-label", "error budget remaining");
  bar.setAttribute("aria-valuenow", remaining.toFixed(4));
  const fill = el("div");
  fill.style.width = (Math.max(0, Math.min(1, remaining)) * 100).toFixed(1) + "%";
  bar.appendChild(fill);
  card.appendChild(bar);
  const row = el("div", "row");
  row.appendChild(el("span", "budget", "budget left " + pct(remaining)));
  const tte = s.time_to_exhaustion_secs;
  row.appendChild(el("span", "tte", tte === null ? "no bad events in the last hour"
    : tte <= 0 ? "budget exhausted" : "exhausted in " + duration(tte)));
  card.appendChild(row);
  const row2 = el("div", "row dim");
  row2.appendChild(el("span", "", `objective ${s.objective}% · ${s.service}`));
  row2.appendChild(el("span", "", `${Math.round(s.period_good + s.period_bad)} events, ${Math.round(s.period_bad)} bad`));
  card.appendChild(row2);

  if (s.firing) {
    const t = s.firing.tier;
    card.appendChild(el("p", "alert " + t.severity,
      `${t.severity} ${num(t.threshold)}x over ${t.long}/${t.short} since ${clock(s.firing.since)} (${duration(now - s.firing.since)} ago)`));
  }

  const sparks = el("div", "sparks");
  if (detail) {
    const h = detail.history;
    h.windows.forEach((win, wi) => {
      const values = h.points.map((p) => p.burn[wi]);
      const current = s.burn.find((b) => b.window === win);
      if (values.length && current) values[values.length - 1] = current.burn_rate; // live tail
      const tier = detail.tiers.find((t) => t.long === win || t.short === win);
      sparks.appendChild(sparkline(win, values, tier ? tier.threshold : null, current ? current.burn_rate : 0));
    });
  } else {
    sparks.appendChild(el("div", "dim", s.burn.slice(0, 4).map((b) => `${b.window} ${burn(b.burn_rate)}`).join(" · ")));
  }
  card.appendChild(sparks);
  return card;
}

function sloCard(slo) {
  const card = el("article", "card");
  card.dataset.slo = slo.name;
  const title = el("div", "title");
  title.appendChild(el("b", "", slo.name));
  title.appendChild(el("span", "badge", `${slo.objective}% / ${slo.period}`));
  card.appendChild(title);
  card.appendChild(el("div", "dim", `${slo.service} · ${slo.sli}`));
  const ul = el("ul", "tiers");
  for (const t of slo.tiers) {
    ul.appendChild(el("li", "", `${t.severity}: burn > ${num(t.threshold)}x over ${t.long} and ${t.short}`));
  }
  card.appendChild(ul);
  return card;
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

async function refresh() {
  const meta = document.getElementById("meta");
  let data;
  try {
    data = await getJson("/v1/slos");
  } catch (e) {
    meta.textContent = "agent unreachable: " + e.message;
    return;
  }
  const charted = data.series.slice(0, MAX_CHARTED);
  const details = await Promise.all(charted.map((s) =>
    getJson(`/v1/slos/${encodeURIComponent(s.slo)}/tenants/${encodeURIComponent(s.tenant)}`).catch(() => null)));

  meta.textContent = `node ${data.node} · updated ${clock(data.now)} · every ${REFRESH_MS / 1000}s`;
  const firing = data.series.filter((s) => s.firing);
  const summary = document.getElementById("summary");
  summary.replaceChildren(
    el("div", "", `${data.slos.length} SLOs`),
    el("div", "", `${data.series.length} tenant series`),
    el("div", "", `${firing.filter((s) => s.firing.tier.severity === "page").length} paging`),
    el("div", "", `${firing.filter((s) => s.firing.tier.severity === "ticket").length} ticketing`),
    el("div", "", `${data.probes_attached.length} probes`));

  const list = document.getElementById("series");
  const cards = data.series.map((s, i) => seriesCard(s, details[i] || null, data.now));
  if (!cards.length) cards.push(el("p", "dim", "no traffic on any SLO yet"));
  list.replaceChildren(...cards);
  document.getElementById("slos").replaceChildren(...data.slos.map(sloCard));
  document.getElementById("probe-count").textContent = `(${data.probes_attached.length})`;
  document.getElementById("probes").replaceChildren(...data.probes_attached.map((p) => el("li", "", p)));
  const caps = Object.entries(data.capabilities || {});
  document.getElementById("capabilities").replaceChildren(...caps.map(([feature, up]) =>
    feature === "socket_capture"
      ? el("li", "", `capture path: ${up ? "socket layer (only socket I/O runs a program)" : "syscall tracepoints (fallback)"}`)
      : el("li", up ? "" : "bad", `${feature}: ${up ? "up" : "DOWN (not counted on this kernel, see the agent's log)"}`)));
  document.body.dataset.loaded = String(data.now);
}

refresh();
setInterval(refresh, REFRESH_MS);
