// DOM helpers and small SVG charts. Text always goes in as text (never innerHTML): names and
// reasons come from users.

import { ApiError } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

export function table(headers, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {}, name)))),
    h("tbody", {}, rows),
  );
}

export function stat(label, value, attrs = {}) {
  return h("div", { class: "stat", ...attrs }, h("span", { class: "label" }, label),
    h("span", { class: "value" }, value));
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? "—" : `${(100 * value).toFixed(digits)} %`;
}

export function number(value, digits = 3) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

// A refusal or failure as the service put it (problem+json), never a stack trace.
export function problem(error) {
  if (error instanceof ApiError) {
    const refused = error.status === 401 || error.status === 403;
    return h(
      "div",
      { class: refused ? "problem refused" : "problem", id: refused ? "refused" : null,
        role: "alert" },
      h("strong", {}, `${refused ? "Refused by the service" : "Error"} (${error.status}` +
        `${error.code ? ` ${error.code}` : ""})`),
      ": ",
      error.message,
    );
  }
  return h("div", { class: "problem", role: "alert" }, String(error && error.message || error));
}

// A modal built from a form; resolves with the form's values, or null when cancelled.
// (Buttons close the dialog themselves: the page's policy allows no form submission.)
export function ask(title, body, { confirm = "Confirm", fields = [] } = {}) {
  const dialog = document.getElementById("dialog");
  const inputs = {};
  // novalidate: the service checks the values and answers with a clear problem.
  const form = h("form", { class: "ask", novalidate: true }, h("h2", {}, title), body);
  for (const field of fields) {
    const input = h(field.multiline ? "textarea" : "input", {
      id: `ask-${field.name}`, type: field.multiline ? null : field.type || "text",
      step: field.step, min: field.min, max: field.max, placeholder: field.placeholder || "",
      value: field.value ?? null,
    });
    inputs[field.name] = input;
    form.append(h("label", { for: `ask-${field.name}` }, field.label), input);
  }
  form.append(h("div", { class: "actions" },
    h("button", { type: "button", class: "ghost", id: "ask-cancel",
      onclick: () => dialog.close("cancel") }, "Cancel"),
    h("button", { type: "submit", id: "ask-confirm" }, confirm)));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    dialog.close("ok");
  });
  clear(dialog, form);
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") return resolve(null);
      const values = {};
      for (const [name, input] of Object.entries(inputs)) values[name] = input.value.trim();
      resolve(values);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// ---- SVG charts ---------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) if (child) node.append(child);
  return node;
}

// Horizontal bars: [{label, value}] (e.g. stage timings).
export function bars(items, { unit = "", width = 360 } = {}) {
  const max = Math.max(...items.map((i) => i.value), 1e-9);
  const row = 22;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${items.length * row}`, class: "chart",
    role: "img" });
  items.forEach((item, index) => {
    const y = index * row;
    const length = Math.max(1, ((width - 170) * item.value) / max);
    chart.append(
      svg("text", { x: 0, y: y + 15, class: "axis" }, document.createTextNode(item.label)),
      svg("rect", { x: 90, y: y + 4, width: length, height: 14, class: "bar" }),
      svg("text", { x: 96 + length, y: y + 15, class: "axis" },
        document.createTextNode(`${item.value.toFixed(1)}${unit}`)),
    );
  });
  return chart;
}

// Two score histograms over the same bins, overlaid (active vs candidate).
export function histograms(series, { width = 420, height = 140 } = {}) {
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 20}`, class: "chart",
    role: "img" });
  const first = series[0].histogram;
  if (!first || !first.counts) return chart;
  const { low, high, counts } = first;
  // Show the range that holds scores (scores cluster in a part of [-1, 1]).
  const used = series.flatMap((s) => s.histogram.counts.map((c, i) => (c ? i : -1)))
    .filter((i) => i >= 0);
  const from = used.length ? Math.max(0, Math.min(...used) - 2) : 0;
  const to = used.length ? Math.min(counts.length, Math.max(...used) + 3) : counts.length;
  const bins = to - from;
  const peak = Math.max(1, ...series.flatMap((s) => s.histogram.counts.slice(from, to)));
  const step = width / bins;
  series.forEach((s, k) => {
    s.histogram.counts.slice(from, to).forEach((count, i) => {
      if (!count) return;
      const barHeight = (height * count) / peak;
      chart.append(svg("rect", { x: i * step + k * (step / 2), y: height - barHeight,
        width: Math.max(1, step / 2 - 0.5), height: barHeight, class: `bar series-${k}` }));
    });
  });
  const edge = (i) => (low + ((high - low) * i) / counts.length).toFixed(2);
  chart.append(
    svg("text", { x: 0, y: height + 16, class: "axis" }, document.createTextNode(edge(from))),
    svg("text", { x: width - 30, y: height + 16, class: "axis" },
      document.createTextNode(edge(to))),
  );
  return chart;
}

// A line over time: [{x: label, y: 0..1}] (migration coverage).
export function line(points, { width = 480, height = 160 } = {}) {
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 20}`, class: "chart",
    role: "img" });
  if (!points.length) return chart;
  const step = points.length > 1 ? width / (points.length - 1) : 0;
  const coords = points.map((p, i) => `${(i * step).toFixed(1)},${(height * (1 - p.y)).toFixed(1)}`);
  chart.append(
    svg("polyline", { points: coords.join(" "), class: "line" }),
    svg("text", { x: 0, y: height + 16, class: "axis" }, document.createTextNode(points[0].x)),
    svg("text", { x: width - 80, y: height + 16, class: "axis" },
      document.createTextNode(points[points.length - 1].x)),
  );
  return chart;
}

// Vertical bars over time: [{x: label, y: count}] (captures per day).
export function columns(points, { width = 480, height = 120 } = {}) {
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 20}`, class: "chart",
    role: "img" });
  const peak = Math.max(1, ...points.map((p) => p.y));
  const step = width / Math.max(points.length, 1);
  points.forEach((p, i) => {
    const barHeight = (height * p.y) / peak;
    chart.append(svg("rect", { x: i * step + 1, y: height - barHeight,
      width: Math.max(1, step - 2), height: barHeight, class: "bar" }));
  });
  return chart;
}
