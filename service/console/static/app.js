// The console's shell: sign-in, navigation by scope, hash routing to the pages.

import { api, ApiError, session } from "./api.js";
import { clear, h, problem } from "./ui.js";
import overview from "./overview.js";
import tryIt from "./try.js";
import identities from "./identities.js";
import transformers from "./transformers.js";
import migration from "./migration.js";

const PAGES = { overview, try: tryIt, identities, transformers, migration };
let stopPage = null;

function $(id) {
  return document.getElementById(id);
}

function showSignedIn(signedIn) {
  $("signin").hidden = signedIn;
  $("nav").hidden = !signedIn;
  $("who").hidden = !signedIn;
  if (!signedIn) {
    clear($("view"));
    $("signin-key").focus();
    return;
  }
  const who = session.who;
  $("who-name").textContent = `${who.name || `key ${who.id}`} · ${who.scopes.join(", ")}`;
  // Pages a key's scopes do not allow are not offered; the API refuses them anyway.
  for (const link of document.querySelectorAll("#nav a")) {
    link.hidden = !session.allows(link.dataset.needs);
  }
}

async function route() {
  if (stopPage) stopPage();
  stopPage = null;
  if (!session.key) {
    showSignedIn(false);
    return;
  }
  showSignedIn(true);
  const name = (window.location.hash.replace(/^#\/?/, "") || "overview").split("/")[0];
  const page = PAGES[name] || overview;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === name);
  }
  const root = clear($("view"));
  document.title = `${page.title} · facebridge console`;
  root.append(h("h1", {}, page.title));
  if (page.needs && !session.allows(page.needs)) {
    root.append(h("p", { class: "hint" },
      `This page needs the ${page.needs} scope; asking the service anyway shows its answer.`));
  }
  try {
    stopPage = (await page.render(root)) || null;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      session.signOut();
      showSignedIn(false);
      $("signin-error").textContent = "The key is no longer valid: sign in again.";
      return;
    }
    root.append(problem(error));
  }
}

async function signIn(event) {
  event.preventDefault();
  const input = $("signin-key");
  const key = input.value.trim();
  $("signin-error").textContent = "";
  if (!key) return;
  try {
    const who = await api("/v1/whoami", { key });
    session.signIn(key, who);
    input.value = "";
    if (window.location.hash === "#/overview" || !window.location.hash) await route();
    else window.location.hash = "#/overview";
  } catch (error) {
    $("signin-error").textContent =
      error instanceof ApiError && error.status === 401
        ? "Unknown or revoked API key."
        : `Could not sign in: ${error.message}`;
  }
}

function start() {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => {
    session.signOut();
    window.location.hash = "";
    route();
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
