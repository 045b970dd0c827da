// Try it: a photo (picked, dropped, or from the webcam where the browser allows) -> the face
// crop the backbone sees, the candidates with scores, the decision, the stage timings.

import { api } from "./api.js";
import { bars, card, clear, h, number, problem, table } from "./ui.js";

const STAGES = ["decode", "align", "embed", "map", "search", "rerank", "lookup"];

function decision(result, threshold) {
  const best = result.candidates[0];
  if (result.match) {
    return h("p", { class: "decision match", id: "try-decision" },
      "Match: ", h("strong", { id: "try-match-name" },
        result.match.name || result.match.external_id || `identity ${result.match.identity_id}`),
      ` (score ${number(result.match.score)} ≥ threshold ${number(threshold)})`);
  }
  return h("p", { class: "decision no-match", id: "try-decision" },
    best ? `No match: the best score ${number(best.score)} is below the threshold ` +
      `${number(threshold)}` : "No match: the gallery returned no candidate");
}

function candidates(result) {
  const rows = result.candidates.map((c, i) => h("tr", { class: i === 0 ? "top" : "" },
    h("td", {}, String(i + 1)),
    h("td", { class: "name" }, c.name || "—"),
    h("td", {}, c.external_id || "—"),
    h("td", {}, String(c.identity_id)),
    h("td", { class: "score" }, number(c.score))));
  return table(["#", "name", "external id", "identity", "score"], rows, { id: "try-candidates" });
}

function timings(result) {
  const items = STAGES.map((stage) => ({ label: stage, value: result.timings[`${stage}_ms`] || 0 }));
  return h("div", { id: "try-timings" }, bars(items, { unit: " ms" }),
    h("p", { class: "hint" }, `total ${number(result.timings.total_ms, 1)} ms in the service; ` +
      `backbone ${result.backbone}, transformer ${result.transformer}`));
}

function crops(detected) {
  if (!detected) return h("p", { class: "hint" }, "no crop");
  return h("div", { class: "crops", id: "try-crop" }, detected.faces.map((face) =>
    h("figure", {},
      h("img", { src: face.crop, alt: "aligned face crop", width: 112, height: 112 }),
      h("figcaption", {}, face.used_by_identify ? "used by identify" : "other face"))),
  h("p", { class: "hint" }, detected.aligned_input
    ? "taken as an aligned 112×112 crop"
    : `detected in a ${detected.width}×${detected.height} image`));
}

async function identify(blob, out) {
  const preview = URL.createObjectURL(blob);
  clear(out, card("Image", h("img", { src: preview, alt: "the image sent", class: "preview",
    id: "try-preview" })), h("p", { class: "hint", id: "try-busy" }, "identifying…"));
  try {
    const [detected, reply] = await Promise.all([
      api("/v1/faces/detect", { method: "POST", form: { image: blob } }),
      api("/v1/identify", { method: "POST", form: { image: blob }, query: { top_k: 5 } }),
    ]);
    const result = reply.results[0];
    clear(out,
      h("div", { class: "grid" },
        card("Image", h("img", { src: preview, alt: "the image sent", class: "preview",
          id: "try-preview" })),
        card("Face crop", crops(detected)),
        card("Decision", decision(result, reply.threshold))),
      card("Candidates", candidates(result)),
      card("Stage timings", timings(result)));
  } catch (error) {
    clear(out, card("Image", h("img", { src: preview, alt: "the image sent", class: "preview" })),
      h("div", { id: "try-error" }, problem(error)));
  }
}

function webcam(out) {
  const video = h("video", { id: "try-video", autoplay: true, playsinline: true, muted: true });
  const capture = h("button", { type: "button", id: "try-capture", disabled: true }, "Capture");
  const start = h("button", { type: "button", id: "try-webcam" }, "Use the webcam");
  const box = h("div", { class: "webcam" }, start, capture, video);
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    start.disabled = true;
    box.append(h("p", { class: "hint" }, "This browser does not allow the camera here " +
      "(it needs https or localhost)."));
    return { box, stop() {} };
  }
  let stream = null;
  start.addEventListener("click", async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
      video.srcObject = stream;
      capture.disabled = false;
    } catch (error) {
      box.append(problem(error));
    }
  });
  capture.addEventListener("click", () => {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth || 640;
    canvas.height = video.videoHeight || 480;
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    canvas.toBlob((blob) => blob && identify(new File([blob], "webcam.jpg",
      { type: "image/jpeg" }), out), "image/jpeg", 0.92);
  });
  return {
    box,
    stop() {
      if (stream) for (const track of stream.getTracks()) track.stop();
    },
  };
}

export default {
  title: "Try it",
  needs: "identify",
  async render(root) {
    const out = h("div", { id: "try-result" });
    const input = h("input", { type: "file", id: "try-file", accept: "image/jpeg,image/png,image/webp" });
    input.addEventListener("change", () => input.files[0] && identify(input.files[0], out));
    const drop = h("div", { class: "drop", id: "try-drop" },
      h("p", {}, "Drop a photo here, or ", h("label", { for: "try-file", class: "link" },
        "pick one"), "."), input);
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) identify(file, out);
    });
    const camera = webcam(out);
    root.append(h("div", { class: "grid" }, card("Photo", drop), card("Webcam", camera.box)), out);
    return () => camera.stop();
  },
};
