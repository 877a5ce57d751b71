// Progressive enhancement only: every action also works as a plain form without this file.
// The study page's slice viewer: scroll through a series (wheel, keys, slider, strip), window
// presets for CT, region circles drawn over every slice that has regions, and a click on the
// slice fills the "add region" form.
"use strict";

function setupViewer() {
  const root = document.getElementById("slice-viewer");
  const dataNode = document.getElementById("viewer-data");
  if (!root || !dataNode) return;
  const data = JSON.parse(dataNode.textContent);
  const overlays = JSON.parse(document.getElementById("viewer-overlays").textContent);
  const requested = JSON.parse(document.getElementById("viewer-requested").textContent);
  const img = document.getElementById("slice");
  const svg = document.getElementById("slice-overlay");
  const range = document.getElementById("slice-range");
  const label = document.getElementById("slice-label");
  const strip = document.getElementById("slice-strip");
  const showOverlay = document.getElementById("show-overlay");
  const seriesSelect = document.getElementById("viewer-series");
  const presets = document.getElementById("window-presets");
  const form = document.getElementById("add-region");
  const NS = "http://www.w3.org/2000/svg";
  let series = data.series[0];
  let position = 1;
  let windowName = "auto";
  if (!series || series.slices.length === 0) {
    root.hidden = true;
    return;
  }

  function sliceAt(pos) {
    return series.slices[pos - 1]; // [instance id, instance number, sha, flagged, regions]
  }

  function drawStrip() {
    strip.replaceChildren();
    series.slices.forEach((s, i) => {
      const cell = document.createElement("a");
      cell.href = "#viewer";
      cell.dataset.pos = String(i + 1);
      cell.className = s[3] ? "flagged" : (s[4] ? "checked" : "");
      cell.title = `slice ${i + 1}` + (s[1] !== null ? ` (instance ${s[1]})` : "") +
        (s[3] ? ": flagged" : (s[4] ? `: ${s[4]} region(s) checked` : ""));
      strip.appendChild(cell);
    });
    range.max = String(series.slices.length);
    presets.hidden = series.modality !== "CT";
  }

  function circle(x, y, r, cls) {
    const c = document.createElementNS(NS, "circle");
    c.setAttribute("cx", x + 0.5);
    c.setAttribute("cy", y + 0.5);
    c.setAttribute("r", Math.max(3, r * 1.3));
    c.setAttribute("class", cls);
    return c;
  }

  function drawOverlay() {
    svg.replaceChildren();
    const s = sliceAt(position);
    if (!showOverlay.checked || !img.naturalWidth) return;
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    for (const [x, y, r, flagged] of overlays[s[0]] || []) {
      svg.appendChild(circle(x, y, r, flagged ? "flagged" : "checked"));
    }
    for (const [x, y, r] of requested[s[0]] || []) svg.appendChild(circle(x, y, r, "admin"));
  }

  function show(pos) {
    position = Math.min(Math.max(1, pos), series.slices.length);
    const s = sliceAt(position);
    const src = `/studies/${data.study}/instances/${s[0]}.png?v=${s[2]}&window=${windowName}`;
    if (img.getAttribute("src") !== src) {
      svg.replaceChildren();
      img.src = src;
    } else {
      drawOverlay();
    }
    img.dataset.instance = String(s[0]);
    img.dataset.position = String(position);
    range.value = String(position);
    label.textContent = `slice ${position} of ${series.slices.length}` +
      (s[1] !== null ? ` · instance ${s[1]}` : "") + (s[3] ? " · flagged" : "");
    label.className = s[3] ? "flagged" : "";
    strip.querySelectorAll("a.current").forEach((a) => a.classList.remove("current"));
    const cell = strip.children[position - 1];
    if (cell) cell.classList.add("current");
    if (form) form.elements.instance_id.value = String(s[0]);
  }

  function selectSeries(id) {
    const found = data.series.find((x) => x.id === Number(id));
    if (!found || found === series) return;
    series = found;
    if (seriesSelect) seriesSelect.value = String(found.id);
    drawStrip();
  }

  img.addEventListener("load", drawOverlay);
  range.addEventListener("input", () => show(Number(range.value)));
  document.getElementById("prev-slice").addEventListener("click", () => show(position - 1));
  document.getElementById("next-slice").addEventListener("click", () => show(position + 1));
  showOverlay.addEventListener("change", drawOverlay);
  strip.addEventListener("click", (event) => {
    const cell = event.target.closest("a[data-pos]");
    if (!cell) return;
    event.preventDefault();
    show(Number(cell.dataset.pos));
  });
  root.querySelector(".stage").addEventListener("wheel", (event) => {
    event.preventDefault();
    show(position + (event.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, select, textarea, button")) return;
    const box = root.getBoundingClientRect();
    if (box.bottom < 0 || box.top > window.innerHeight) return; // the viewer is not on screen
    if (event.key === "ArrowDown" || event.key === "ArrowRight") show(position + 1);
    else if (event.key === "ArrowUp" || event.key === "ArrowLeft") show(position - 1);
    else return;
    event.preventDefault();
  });
  presets.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-window]");
    if (!button) return;
    windowName = button.dataset.window;
    presets.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b === button));
    show(position);
  });
  if (seriesSelect) seriesSelect.addEventListener("change", () => { selectSeries(seriesSelect.value); show(1); });
  document.querySelectorAll("a.goto").forEach((link) => link.addEventListener("click", (event) => {
    event.preventDefault();
    if (link.dataset.series) selectSeries(link.dataset.series);
    show(Number(link.dataset.slice));
    root.scrollIntoView({ behavior: "auto", block: "start" });
  }));
  img.addEventListener("click", (event) => {
    if (!form) return;
    const rect = img.getBoundingClientRect();
    form.elements.x.value = Math.floor((event.clientX - rect.left) * img.naturalWidth / rect.width);
    form.elements.y.value = Math.floor((event.clientY - rect.top) * img.naturalHeight / rect.height);
    form.elements.x.focus();
  });

  root.tabIndex = 0;
  const params = new URLSearchParams(location.search);
  const wanted = Number(params.get("slice"));
  if (data.start) selectSeries(data.start[0]);
  drawStrip();
  let startPos = data.start ? data.start[1] : Math.ceil(series.slices.length / 2);
  if (wanted) {
    for (const candidate of data.series) {
      const i = candidate.slices.findIndex((s) => s[0] === wanted);
      if (i >= 0) { selectSeries(candidate.id); startPos = i + 1; break; }
    }
  }
  show(startPos);
}

document.addEventListener("DOMContentLoaded", setupViewer);
