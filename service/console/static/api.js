// The console's only way to the service: fetch() to this origin with the key in a header.
// The key lives in sessionStorage (this tab only); it never goes into a URL.

const KEY = "facebridge.key";
const WHO = "facebridge.whoami";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  get who() {
    const raw = sessionStorage.getItem(WHO);
    return raw ? JSON.parse(raw) : null;
  },
  signIn(key, who) {
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(WHO, JSON.stringify(who));
  },
  signOut() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(WHO);
  },
  allows(scope) {
    const who = this.who;
    if (!who) return false;
    return !scope || who.scopes.includes("admin") || who.scopes.includes(scope);
  },
};

export class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem && typeof problem === "object" ? problem.detail : String(problem);
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.problem = problem && typeof problem === "object" ? problem : {};
    this.code = this.problem.code || "";
  }
}

// api("/v1/identify", {method: "POST", form: {image: file}, query: {top_k: 5}})
export async function api(path, { method = "GET", json, form, query, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json, application/problem+json" };
  const secret = key || session.key;
  if (secret) headers["X-API-Key"] = secret;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = new FormData();
    for (const [name, value] of Object.entries(form)) {
      if (value instanceof Blob) body.append(name, value, value.name || `${name}.jpg`);
      else if (value !== undefined && value !== null) body.append(name, value);
    }
  }
  const response = await fetch(url, {
    method,
    headers,
    body,
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// The same, but a 404 (a route or resource this service does not have) gives null.
export async function optional(path, options) {
  try {
    return await api(path, options);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

// Prometheus text -> [{name, labels, value}] (counters, gauges, histogram series).
export function parseMetrics(text) {
  const samples = [];
  const line = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/;
  const label = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  for (const row of text.split("\n")) {
    if (!row || row.startsWith("#")) continue;
    const found = line.exec(row);
    if (!found) continue;
    const labels = {};
    for (const [, name, value] of (found[2] || "").matchAll(label)) labels[name] = value;
    samples.push({ name: found[1], labels, value: Number(found[3]) });
  }
  return samples;
}

export function total(samples, name, where = () => true) {
  return samples
    .filter((s) => s.name === name && where(s.labels))
    .reduce((sum, s) => sum + s.value, 0);
}

export async function scrapeMetrics() {
  const response = await fetch("/metrics", { cache: "no-store", credentials: "omit" });
  if (!response.ok) throw new ApiError(response.status, await response.text());
  return { at: performance.now(), samples: parseMetrics(await response.text()) };
}
