// Identities: search by name / external id, the faces of one (vectors only: source, space,
// transformer version, imported or enrolled), enrol from a photo, delete.

import { api, session } from "./api.js";
import { ask, badge, card, clear, h, problem, table, when } from "./ui.js";

const PAGE = 20;

function faceOrigin(face) {
  // legacy = an imported old-model vector; mapped = enrolled through this service (a photo
  // embedded by the new backbone and mapped into the old space by a transformer version).
  return face.source === "legacy" ? "imported" : "enrolled";
}

async function detail(id, panel, model, refresh) {
  const identity = await api(`/v1/identities/${id}`);
  const canEnrol = session.allows("enrol");
  const rows = identity.faces.map((face) => h("tr", {},
    h("td", {}, String(face.id)),
    h("td", {}, badge(face.source, face.source)),
    h("td", {}, model || "old model"),
    h("td", {}, face.transformer_version || "—"),
    h("td", {}, faceOrigin(face)),
    h("td", {}, when(face.created_at)),
    h("td", {}, canEnrol ? h("button", { type: "button", class: "ghost small", onclick: async () => {
      if (!(await ask("Delete this face?", h("p", {}, `Face ${face.id} of ${identity.name ||
        identity.external_id}: its vector leaves SQL and the index.`), { confirm: "Delete" }))) {
        return;
      }
      await api(`/v1/identities/${id}/faces/${face.id}`, { method: "DELETE" });
      await detail(id, panel, model, refresh);
    } }, "delete") : null)));
  const add = h("input", { type: "file", accept: "image/*", id: "identity-add-face" });
  add.addEventListener("change", async () => {
    try {
      await api(`/v1/identities/${id}/faces`, { method: "POST", form: { image: add.files[0] } });
      await detail(id, panel, model, refresh);
    } catch (error) {
      panel.append(problem(error));
    }
  });
  clear(panel, card(identity.name || identity.external_id || `identity ${identity.id}`,
    h("p", { class: "hint" }, `id ${identity.id} · external id ${identity.external_id || "—"} ` +
      `· created ${when(identity.created_at)}`),
    table(["face", "source", "space", "transformer", "origin", "at", ""], rows,
      { id: "identity-faces" }),
    canEnrol ? h("div", { class: "actions" },
      h("label", { for: "identity-add-face" }, "Enrol another photo: "), add,
      h("button", { type: "button", class: "danger", id: "identity-delete", onclick: async () => {
        if (!(await ask("Delete this identity?", h("p", {}, "All its faces leave SQL and the " +
          "index. This cannot be undone."), { confirm: "Delete" }))) return;
        await api(`/v1/identities/${id}`, { method: "DELETE" });
        clear(panel);
        await refresh();
      } }, "Delete identity")) : null));
}

function enrolCard(refresh) {
  const name = h("input", { id: "enrol-name", placeholder: "name" });
  const external = h("input", { id: "enrol-external", placeholder: "external id (optional)" });
  const photo = h("input", { id: "enrol-photo", type: "file", accept: "image/*" });
  const status = h("p", { id: "enrol-status", role: "status" });
  const form = h("form", { class: "inline" }, name, external, photo,
    h("button", { type: "submit", id: "enrol-submit" }, "Enrol"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(status);
    try {
      if (!photo.files[0]) throw new Error("pick a photo first");
      const created = await api("/v1/identities", { method: "POST",
        json: { name: name.value.trim() || null, external_id: external.value.trim() || null } });
      try {
        await api(`/v1/identities/${created.id}/faces`, { method: "POST",
          form: { image: photo.files[0] } });
      } catch (error) {
        // No face in the photo: do not leave an empty identity behind.
        await api(`/v1/identities/${created.id}`, { method: "DELETE" });
        throw error;
      }
      clear(status, `enrolled as identity ${created.id}`);
      form.reset();
      await refresh();
    } catch (error) {
      clear(status, problem(error));
    }
  });
  return card("Enrol from a photo", form);
}

export default {
  title: "Identities",
  needs: "identify",
  async render(root) {
    const stats = await api("/v1/gallery/stats");
    const name = h("input", { id: "search-name", type: "search", placeholder: "name contains…" });
    const external = h("input", { id: "search-external", type: "search",
      placeholder: "external id (exact)" });
    const results = h("div", { id: "identity-results" });
    const panel = h("div", { id: "identity-detail" });
    let offset = 0;
    const refresh = async () => {
      const page = await api("/v1/identities", { query: { name: name.value.trim(),
        external_id: external.value.trim(), limit: PAGE, offset } });
      const rows = page.items.map((identity) => h("tr", { class: "clickable",
        onclick: () => detail(identity.id, panel, stats.model_id, refresh).catch(
          (error) => clear(panel, problem(error))) },
      h("td", {}, String(identity.id)), h("td", { class: "name" }, identity.name || "—"),
      h("td", {}, identity.external_id || "—"), h("td", {}, String(identity.face_count ?? "—"))));
      clear(results, table(["id", "name", "external id", "faces"], rows, { id: "identity-table" }),
        h("div", { class: "pager" },
          h("button", { type: "button", class: "ghost", disabled: offset === 0, onclick: () => {
            offset = Math.max(0, offset - PAGE);
            refresh();
          } }, "← previous"),
          ` ${page.total ? offset + 1 : 0}–${Math.min(offset + PAGE, page.total)} of ${page.total} `,
          h("button", { type: "button", class: "ghost", disabled: offset + PAGE >= page.total,
            onclick: () => {
              offset += PAGE;
              refresh();
            } }, "next →")));
    };
    const search = h("form", { class: "inline", id: "identity-search" }, name, external,
      h("button", { type: "submit" }, "Search"));
    search.addEventListener("submit", (event) => {
      event.preventDefault();
      offset = 0;
      refresh().catch((error) => clear(results, problem(error)));
    });
    root.append(card(`${stats.identities} identities, ${stats.faces} faces`, search, results));
    if (session.allows("enrol")) root.append(enrolCard(refresh));
    root.append(panel);
    await refresh();
  },
};
