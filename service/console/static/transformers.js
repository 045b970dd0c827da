// Transformers (admin): versions and their metrics, activate / roll back / delete, shadow runs
// of a candidate on live traffic, the audit history. Every action asks for a reason.

import { api, optional } from "./api.js";
import { ask, badge, card, clear, h, histograms, number, percent, problem, table, when } from "./ui.js";

const REFRESH_MS = 3000;

function metricList(metrics) {
  const entries = Object.entries(metrics || {}).filter(([, v]) => typeof v === "number");
  if (!entries.length) return h("span", { class: "hint" }, "none recorded");
  // Open-set figures (FPIR, decisions at a gallery size) apart from closed-set ones (top-k,
  // TAR at a 1:1 FAR), so an operator compares like with like.
  const open = entries.filter(([k]) => /fpir|open|fnir/i.test(k));
  const closed = entries.filter(([k]) => !/fpir|open|fnir/i.test(k));
  const list = (items) => h("dl", { class: "metrics" },
    items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, Number.isInteger(v) ? v : v.toFixed(4))]));
  return h("div", {}, closed.length ? list(closed) : null,
    open.length ? [h("p", { class: "hint" }, "open-set"), list(open)] : null);
}

function shadowFigures(run) {
  const r = run.results;
  return h("div", { class: "stats", id: "shadow-figures" },
    h("div", { class: "stat" }, h("span", { class: "label" }, "candidate vs active"),
      h("span", { class: "value mono" }, `${run.candidate} vs ${run.baseline}`)),
    h("div", { class: "stat" }, h("span", { class: "label" }, "images compared"),
      h("span", { class: "value", id: "shadow-images" }, String(r.images))),
    h("div", { class: "stat" }, h("span", { class: "label" }, "top-1 agreement"),
      h("span", { class: "value", id: "shadow-agreement" }, percent(r.top1_agreement))),
    h("div", { class: "stat" }, h("span", { class: "label" }, "decisions that would change"),
      h("span", { class: "value", id: "shadow-change" }, percent(r.decision_change_rate))),
    h("div", { class: "stat" }, h("span", { class: "label" }, "replies that would change"),
      h("span", { class: "value" }, percent(r.reply_change_rate))),
    h("div", { class: "stat" }, h("span", { class: "label" }, "match → no match / no match → " +
      "match / → other"), h("span", { class: "value" }, `${r.decision_changes.match_to_no_match}` +
      ` / ${r.decision_changes.no_match_to_match} / ${r.decision_changes.match_to_other}`)),
    h("div", { class: "stat" }, h("span", { class: "label" }, "match rate active / candidate"),
      h("span", { class: "value" }, `${percent(r.match_rate.active)} / ` +
        `${percent(r.match_rate.candidate)}`)),
    h("div", { class: "stat" }, h("span", { class: "label" }, "estimated FPIR at " +
      `${run.fpir.gallery_faces} gallery faces`), h("span", { class: "value", id: "shadow-fpir" },
      run.fpir.available ? percent(run.fpir.value, 2) : "unavailable")),
    h("div", { class: "stat" }, h("span", { class: "label" }, "sampled / dropped / skipped"),
      h("span", { class: "value" }, `${percent(run.sample_rate, 0)} / ${r.dropped} / ${r.skipped}`)),
  );
}

function shadowCard(overview, reload) {
  const run = overview.current || overview.runs[0];
  if (!run) {
    return card("Shadow evaluation", h("p", { id: "shadow-empty" }, "No shadow run yet. Start " +
      "one from a version's row: it runs beside the active version on sampled identify " +
      "traffic and never changes a reply."));
  }
  const scores = run.results.scores;
  const stop = run.running ? h("button", { type: "button", id: "shadow-stop", onclick: async () => {
    const answer = await ask("Stop the shadow run?", h("p", {}, `Results of ${run.candidate} ` +
      "stay readable."), { confirm: "Stop", fields: [{ name: "reason", label: "Reason" }] });
    if (answer) await act(() => api(`/v1/admin/transformers/${run.candidate}/shadow`,
      { method: "DELETE", query: { reason: answer.reason } }), reload);
  } }, "Stop") : null;
  return card(`Shadow evaluation ${run.running ? "(running)" : "(stopped)"}`,
    shadowFigures(run),
    h("div", { class: "legend" }, h("span", { class: "series-0" }, "■ active"),
      h("span", { class: "series-1" }, " ■ candidate"), ` top-1 scores (means ` +
      `${number(scores.active.mean)} / ${number(scores.candidate.mean)})`),
    histograms([scores.active, scores.candidate]),
    run.fpir.available ? null : h("p", { class: "hint" }, run.fpir.detail),
    h("p", { class: "hint" }, `run ${run.id}, started ${when(run.started_at)}` +
      (run.running ? "" : `, stopped ${when(run.stopped_at)}: ${run.stop_reason || ""}`)),
    stop);
}

async function act(call, reload) {
  const status = document.getElementById("tf-actions-status");
  status.replaceChildren();
  try {
    await call();
  } catch (error) {
    status.replaceChildren(problem(error));
    return;
  }
  await reload();
}

function promotionNote(version, active, shadow) {
  const run = [shadow.current, ...shadow.runs].find((r) => r && r.candidate === version);
  if (!run) {
    return h("p", { class: "warn", id: "promotion-note" }, `${version} was never shadowed: ` +
      "the figures below are the ones written into the file at fit time. Consider a shadow " +
      "run first.");
  }
  const r = run.results;
  return h("p", { id: "promotion-note" }, `Shadow run ${run.id} against ${run.baseline}` +
    `${run.baseline === active ? " (the active version)" : ""}: top-1 agreement ` +
    `${percent(r.top1_agreement)}, decisions that would change ${percent(r.decision_change_rate)}` +
    ` over ${r.images} images.`);
}

function versionRow(t, listing, shadow, reload) {
  const shadowing = shadow.current && shadow.current.candidate === t.version;
  const reason = [{ name: "reason", label: "Reason (kept in the audit history)", multiline: true }];
  const activate = h("button", { type: "button", dataset: { action: "activate", version: t.version },
    disabled: t.active, onclick: async () => {
      const answer = await ask(`Activate ${t.version}?`, h("div", {},
        promotionNote(t.version, listing.active, shadow), metricList(t.metrics)),
      { confirm: "Activate", fields: reason });
      if (answer) await act(() => api(`/v1/admin/transformers/${t.version}/activate`,
        { method: "POST", json: { reason: answer.reason || null } }), reload);
    } }, "Activate");
  const shadowButton = h("button", { type: "button", class: "ghost",
    dataset: { action: "shadow", version: t.version }, disabled: t.active || shadowing,
    onclick: async () => {
      const answer = await ask(`Shadow ${t.version}?`, h("p", {}, "It runs beside the active " +
        "version on a sampled share of identify traffic, off the request path."),
      { confirm: "Start", fields: [{ name: "sample_rate", label: "Sample rate (0–1; empty: " +
        "the service default)", type: "number", step: "any", min: "0", max: "1" },
      ...reason] });
      if (answer) await act(() => api(`/v1/admin/transformers/${t.version}/shadow`, { method: "POST",
        json: { sample_rate: answer.sample_rate ? Number(answer.sample_rate) : null,
          reason: answer.reason || null } }), reload);
    } }, "Shadow");
  const remove = h("button", { type: "button", class: "ghost danger",
    dataset: { action: "delete", version: t.version }, disabled: t.active, onclick: async () => {
      const answer = await ask(`Delete ${t.version}?`, h("p", {}, "Its file and row go; it " +
        "leaves the rollback history."), { confirm: "Delete", fields: reason });
      if (answer) await act(() => api(`/v1/admin/transformers/${t.version}`,
        { method: "DELETE", query: { reason: answer.reason } }), reload);
    } }, "Delete");
  return h("tr", { dataset: { version: t.version }, class: t.active ? "active" : "" },
    h("td", { class: "mono" }, t.version, " ", t.active ? badge("active", "ok") : null,
      shadowing ? badge("shadowing", "info") : null),
    h("td", {}, t.recipe, t.two_way ? h("div", { class: "hint" }, `two-way, w=${t.fusion_weight}`)
      : null),
    h("td", {}, number(t.threshold)),
    h("td", {}, metricList(t.metrics)),
    h("td", {}, when(t.uploaded_at)),
    h("td", { class: "actions" }, activate, shadowButton, remove));
}

function auditCard(audit) {
  const rows = audit.items.map((e) => h("tr", {},
    h("td", {}, when(e.at)), h("td", {}, badge(e.action)), h("td", {}, e.actor),
    h("td", { class: "mono" }, e.subject || "—"),
    h("td", { class: "mono" }, `${e.from_value || "—"} → ${e.to_value || "—"}`),
    h("td", {}, e.reason || "")));
  return card(`Audit history (${audit.total} events)`,
    table(["when", "action", "who", "subject", "from → to", "reason"], rows, { id: "tf-audit" }));
}

export default {
  title: "Transformers",
  needs: "admin",
  async render(root) {
    const body = h("div", { id: "transformers" });
    // Outside the part that refreshes: a refusal stays on screen until the next action.
    root.append(h("div", { id: "tf-actions-status", role: "alert" }), body);
    let stopped = false;
    const reload = async () => {
      const [listing, shadow, audit] = await Promise.all([
        api("/v1/admin/transformers"),
        optional("/v1/admin/shadow"),
        api("/v1/admin/audit", { query: { limit: 50 } }),
      ]);
      if (stopped) return;
      const overview = shadow || { current: null, runs: [] };
      const rollback = h("button", { type: "button", id: "tf-rollback",
        disabled: !listing.rollback_target, onclick: async () => {
          const answer = await ask(`Roll back to ${listing.rollback_target}?`, h("p", {},
            "The activation history is a stack: the next rollback goes further back."),
          { confirm: "Roll back", fields: [{ name: "reason", label: "Reason", multiline: true }] });
          if (answer) await act(() => api("/v1/admin/transformers/rollback",
            { method: "POST", json: { reason: answer.reason || null } }), reload);
        } }, listing.rollback_target ? `Roll back to ${listing.rollback_target}` : "Nothing to " +
        "roll back to");
      clear(body,
        card(`Versions (active: ${listing.active || "none"})`,
          h("div", { class: "actions" }, rollback),
          table(["version", "recipe", "threshold", "metrics (fit time)", "uploaded", ""],
            listing.items.map((t) => versionRow(t, listing, overview, reload)),
            { id: "tf-table" })),
        shadowCard(overview, reload),
        auditCard(audit));
      body.dataset.active = listing.active || "";
    };
    await reload();
    const timer = setInterval(() => {
      if (!document.getElementById("dialog").open) reload().catch(() => {});
    }, REFRESH_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  },
};
