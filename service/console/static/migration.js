// Migration (admin): coverage over time, captures per day, undo. It reads GET /v1/migration,
// which the progressive-migration work adds; until the service has it, an empty state.
//
// The shape this page reads (every field optional, docs/console.md):
//   {"coverage": [{"day": "2026-12-01", "share": 0.42}, ...],        share of identities with
//                                                                     a native-space face
//    "captures_per_day": [{"day": "2026-12-01", "count": 120}, ...],
//    "captures": [{"id": 7, "identity": "Ada", "at": "...", "undo": "/v1/migration/captures/7/undo"}],
//    "summary": {"native_identities": 601, "identities": 1431}}

import { api, optional } from "./api.js";
import { ask, card, clear, columns, h, line, percent, problem, table, when } from "./ui.js";

function emptyState() {
  return card("Progressive migration", h("div", { class: "empty", id: "migration-empty" },
    h("p", {}, "This service does not migrate its gallery yet."),
    h("p", { class: "hint" }, "Once progressive migration is available (GET /v1/migration), " +
      "this page shows the share of identities that have a face in the new model's space over " +
      "time, the faces captured per day from confident matches, and lets an operator undo " +
      "captures. Nothing to do until then.")));
}

function captureRows(captures, reload) {
  return captures.map((capture) => h("tr", {},
    h("td", {}, String(capture.id)), h("td", {}, capture.identity || "—"),
    h("td", {}, when(capture.at)),
    h("td", {}, capture.undo ? h("button", { type: "button", class: "ghost small",
      onclick: async () => {
        const answer = await ask("Undo this capture?", h("p", {}, "The captured face is " +
          "removed; the audit history records it."), { confirm: "Undo",
          fields: [{ name: "reason", label: "Reason" }] });
        if (!answer) return;
        await api(capture.undo, { method: "POST", json: { reason: answer.reason || null } });
        await reload();
      } }, "undo") : "")));
}

export default {
  title: "Migration",
  needs: "admin",
  async render(root) {
    const body = h("div", { id: "migration" });
    root.append(body);
    const reload = async () => {
      const status = await optional("/v1/migration");
      if (status === null) {
        clear(body, emptyState());
        return;
      }
      const coverage = (status.coverage || []).map((p) => ({ x: p.day || p.at, y: p.share }));
      const perDay = (status.captures_per_day || []).map((p) => ({ x: p.day, y: p.count }));
      const latest = coverage.length ? coverage[coverage.length - 1].y : null;
      clear(body,
        card(`Coverage ${latest === null ? "" : `(${percent(latest)} now)`}`,
          coverage.length ? line(coverage) : h("p", { class: "hint" }, "no coverage data yet")),
        card("Captures per day",
          perDay.length ? columns(perDay) : h("p", { class: "hint" }, "no captures yet")),
        status.captures ? card("Recent captures", table(["id", "identity", "at", ""],
          captureRows(status.captures, reload), { id: "migration-captures" })) : null);
    };
    try {
      await reload();
    } catch (error) {
      clear(body, problem(error));
    }
  },
};
