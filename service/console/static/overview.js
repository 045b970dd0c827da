// Overview: gallery, active transformer, traffic (from /metrics), readiness.

import { api, optional, scrapeMetrics, session, total } from "./api.js";
import { badge, card, clear, h, number, percent, problem, stat } from "./ui.js";

const REFRESH_MS = 5000;
const DECISIONS = ["match", "no_match", "no_face"];

function decisionCounts(samples) {
  const counts = {};
  for (const decision of DECISIONS) {
    counts[decision] = total(samples, "facebridge_identify_decisions_total",
      (l) => l.decision === decision);
  }
  return counts;
}

function requests(samples) {
  return total(samples, "facebridge_http_requests_total", (l) => l.route !== "/metrics");
}

function shares(counts) {
  const all = DECISIONS.reduce((sum, d) => sum + counts[d], 0);
  return DECISIONS.map((d) => stat(d.replace("_", " "), all ? percent(counts[d] / all) : "—",
    { id: `overview-${d}` }));
}

function trafficCard(first, last) {
  const seconds = (last.at - first.at) / 1000;
  const counts = decisionCounts(last.samples);
  const rows = [
    stat("identify images", String(DECISIONS.reduce((s, d) => s + counts[d], 0))),
    ...shares(counts),
  ];
  if (seconds > 0.5) {
    const delta = {};
    const before = decisionCounts(first.samples);
    for (const d of DECISIONS) delta[d] = counts[d] - before[d];
    const rate = (requests(last.samples) - requests(first.samples)) / seconds;
    rows.unshift(stat("requests / s", rate.toFixed(2), { id: "overview-rate" }));
    rows.push(h("p", { class: "hint" }, `last ${seconds.toFixed(0)} s: ` +
      DECISIONS.map((d) => `${delta[d]} ${d.replace("_", " ")}`).join(", ")));
  } else {
    rows.unshift(stat("requests / s", "measuring…", { id: "overview-rate" }));
  }
  return card("Traffic (since start)", h("div", { class: "stats" }, rows));
}

function galleryCard(stats) {
  if (!stats) return card("Gallery", h("p", { class: "hint" }, "needs the identify scope"));
  const bySource = Object.entries(stats.faces_by_source || {})
    .map(([source, n]) => stat(`faces: ${source}`, String(n)));
  return card("Gallery",
    h("div", { class: "stats" },
      stat("identities", String(stats.identities), { id: "overview-identities" }),
      stat("faces", String(stats.faces), { id: "overview-faces" }),
      ...bySource,
      stat("space (old model)", stats.model_id || "—"),
      stat("index", `${stats.index_type}, ${stats.index_vectors} vectors`),
      stat("FAISS = SQL", stats.consistent ? "yes" : "NO")));
}

function transformerCard(listing, ready, shadow) {
  if (!listing) {
    return card("Active transformer",
      h("div", { class: "stats" }, stat("version", ready.checks.transformer || "—",
        { id: "overview-transformer" })),
      h("p", { class: "hint" }, "details need the admin scope"));
  }
  const active = listing.items.find((t) => t.active);
  if (!active) {
    return card("Active transformer", h("p", { id: "overview-transformer" },
      "none: identify answers 503 until a version is activated"));
  }
  const rows = [
    stat("version", active.version, { id: "overview-transformer" }),
    stat("recipe", active.recipe),
    stat("decision threshold", number(active.threshold), { id: "overview-threshold" }),
    stat("scoring", active.two_way ? `two-way fused (w=${active.fusion_weight})` : "forward"),
    stat("rollback to", listing.rollback_target || "nothing older"),
  ];
  if (shadow && shadow.current) {
    const r = shadow.current.results;
    rows.push(stat("shadowing", `${shadow.current.candidate}: agreement ` +
      `${percent(r.top1_agreement)}, decisions changed ${percent(r.decision_change_rate)}`));
  }
  return card("Active transformer", h("div", { class: "stats" }, rows));
}

function readinessCard(ready) {
  const rows = Object.entries(ready.checks).map(([name, value]) =>
    h("tr", {}, h("td", {}, name), h("td", {}, value)));
  return card("Readiness",
    h("p", {}, ready.ready ? badge("ready", "ok") : badge(ready.status, "bad")),
    h("table", { class: "compact" }, h("tbody", {}, rows)));
}

async function readiness() {
  const response = await fetch("/readyz", { cache: "no-store", credentials: "omit" });
  return response.json();
}

async function load() {
  const admin = session.allows("admin");
  const [ready, stats, listing, shadow, metrics] = await Promise.all([
    readiness(),
    session.allows("identify") ? api("/v1/gallery/stats") : null,
    admin ? api("/v1/admin/transformers") : null,
    admin ? optional("/v1/admin/shadow") : null,
    scrapeMetrics(),
  ]);
  return { ready, stats, listing, shadow, metrics };
}

export default {
  title: "Overview",
  async render(root) {
    const grid = h("div", { class: "grid", id: "overview" });
    root.append(grid);
    let first = null;
    let stopped = false;
    const paint = async () => {
      const data = await load();
      if (stopped) return;
      first = first || data.metrics;
      clear(grid,
        galleryCard(data.stats),
        transformerCard(data.listing, data.ready, data.shadow),
        trafficCard(first, data.metrics),
        readinessCard(data.ready));
    };
    await paint();
    // First meaningful paint: every card drawn with data (the browser test reads this mark).
    performance.mark("facebridge:overview-ready");
    grid.dataset.ready = "true";
    // ... and the frame after it has been painted.
    requestAnimationFrame(() => requestAnimationFrame(
      () => performance.mark("facebridge:overview-painted")));
    const timer = setInterval(() => paint().catch((error) => {
      if (!stopped) grid.prepend(problem(error));
    }), REFRESH_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  },
};
