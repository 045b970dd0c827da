// Migration (admin): coverage, captures per day, spaces, undo history. It reads GET
// /v1/migration (docs/service.md, progressive migration); a service without it: an empty state.
//
// The shape this page reads (every field optional, docs/console.md):
//   {"coverage": [{"day": "2026-12-01", "share": 0.42}, ...],        share of identities with
//                                                                     a native-space face
//    "captures_per_day": [{"day": "2026-12-01", "count": 120}, ...],
//    "captures": [{"id": 7, "identity": "Ada", "at": "...", "undo": "/v1/migration/captures/7/undo"}],
//    "summary": {"native_identities": 601, "identities": 1431}}

import { api, optional } from "./api.js";
import { ask, card, clear, columns, h, percent, problem, table, when } from "./ui.js";

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
      // GET /v1/migration (docs/service.md): coverage now, a 30-day captures series, spaces.
      const coverage = typeof status.coverage === "number" ? status.coverage : null;
      const perDay = (status.captures_per_day || []).map((p) => ({
        x: p.date || p.day, y: p.captures ?? p.count ?? 0 }));
      const spaces = (status.spaces || []).map((s) => h("tr", {},
        h("td", {}, s.space), h("td", {}, s.kind), h("td", {}, String(s.faces)),
        h("td", {}, String(s.identities))));
      const undos = (status.undo_history || []).map((u) => h("tr", {},
        h("td", {}, when(u.at)), h("td", {}, u.actor || "—"),
        h("td", {}, String(u.faces_removed ?? "")), h("td", {}, u.reason || "")));
      clear(body,
        card(`Coverage ${coverage === null ? "" : `(${percent(coverage)} now)`}`,
          h("p", { id: "migration-coverage" }, `${status.identities_with_native ?? 0} of ` +
            `${status.identities ?? 0} identities have a native vector; ` +
            `${status.captures_total ?? 0} captured vectors held; capture ${status.capture || "?"}`)),
        card("Captures per day",
          perDay.some((p) => p.y) ? columns(perDay) : h("p", { class: "hint" }, "no captures yet")),
        card("Spaces", table(["space", "kind", "faces", "identities"], spaces,
          { id: "migration-spaces" })),
        undos.length ? card("Undo history", table(["at", "by", "faces removed", "reason"],
          undos, { id: "migration-undos" })) : null,
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
