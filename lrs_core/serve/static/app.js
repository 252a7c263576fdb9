// The page of `lrs serve`: scene tile layers, the answers panel and the monitoring view.
// Plain browser JavaScript over the vendored OpenLayers build (global `ol`); no network beyond
// this server. `window.lrs` exposes the state the browser test reads.
"use strict";

const POLL_SECONDS = 5;
const FIT_PADDING_PX = [40, 40, 40, 40];
const LONLAT = "EPSG:4326";
const MERCATOR = "EPSG:3857";

const state = {
  map: null,
  sceneLayers: {},
  heatLayer: null,
  evidence: new ol.source.Vector(),
  answers: [],
  selected: null,
  tileErrors: [],
  tilesLoaded: 0,
  tilesPending: 0,
  heatTilesLoaded: 0,
  scenesReady: false,
  lastFitLonLat: null,
};
window.lrs = state;

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function percent(value) {
  return value === null || value === undefined ? "—" : `${(100 * value).toFixed(1)} %`;
}

function extentFromLonLat(bounds) {
  return ol.proj.transformExtent(bounds, LONLAT, MERCATOR);
}

function watchTiles(source, isHeat = false) {
  source.on("tileloadstart", () => { state.tilesPending += 1; });
  source.on("tileloadend", () => {
    state.tilesPending -= 1;
    state.tilesLoaded += 1;
    if (isHeat) state.heatTilesLoaded += 1;
  });
  source.on("tileloaderror", (event) => {
    state.tilesPending -= 1;
    state.tileErrors.push(event.tile.getKey());
  });
}

function initMap() {
  const evidenceStyle = new ol.style.Style({
    stroke: new ol.style.Stroke({ color: "#00c8ff", width: 2 }),
    fill: new ol.style.Fill({ color: "rgba(0, 200, 255, 0.08)" }),
  });
  state.map = new ol.Map({
    target: "map",
    layers: [new ol.layer.Vector({ source: state.evidence, style: evidenceStyle, zIndex: 30 })],
    view: new ol.View({ center: [0, 0], zoom: 2 }),
  });
}

async function loadScenes() {
  const scenes = await getJSON("api/scenes");
  let union = null;
  for (const scene of scenes) {
    if (!scene.tilejson) continue;
    const tj = await getJSON(scene.tilejson);
    const extent = extentFromLonLat(tj.bounds);
    const source = new ol.source.XYZ({
      url: tj.tiles[0], minZoom: tj.minzoom, maxZoom: tj.maxzoom, tileSize: tj.tileSize,
      crossOrigin: "anonymous", transition: 0,
    });
    watchTiles(source);
    const layer = new ol.layer.Tile({ source, extent, zIndex: 10 });
    layer.set("sceneId", scene.id);
    state.map.addLayer(layer);
    state.sceneLayers[scene.id] = layer;
    union = union ? ol.extent.extend(union, extent) : extent.slice();
  }
  if (union) state.map.getView().fit(union, { padding: FIT_PADDING_PX });
  const sceneSelect = document.querySelector("#filters [name=scene]");
  for (const scene of scenes) sceneSelect.append(el("option", { value: scene.id }, scene.id));
  state.scenesReady = true;
}

function filterParams() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(document.getElementById("filters"))) {
    if (value) params.set(key, value);
  }
  return params;
}

function fillSelect(name, values) {
  const select = document.querySelector(`#filters [name=${name}]`);
  const known = new Set([...select.options].map((o) => o.value));
  for (const value of [...new Set(values)].sort()) {
    if (!known.has(value)) select.append(el("option", { value }, value));
  }
}

function answerItem(row) {
  const item = el("li", { "data-question-id": row.question_id, "data-run": row.run },
    el("div", { class: "q" }, row.question),
    el("div", { class: "a" }, row.status === "failed" ? `error: ${row.error}` : row.answer),
    el("div", {},
      el("span", { class: `badge ${row.status}` }, row.status),
      el("span", { class: "badge" }, row.preset),
      el("span", { class: "badge" }, row.scene_id),
      el("span", { class: "badge" }, `run ${row.run}`)),
    el("div", { class: "muted" },
      `tokens to LLM ${row.vision_tokens_to_llm} · saves vs full: tokens ${percent(row.token_saving)}, ` +
      `FLOPs ${percent(row.flop_saving)}`));
  if (state.selected && state.selected.run === row.run && state.selected.question_id === row.question_id) {
    item.classList.add("selected");
  }
  item.addEventListener("click", () => selectAnswer(row, item));
  return item;
}

async function loadAnswers() {
  const params = filterParams();
  const rows = await getJSON(`api/answers?${params}`);
  if (!params.toString()) {
    fillSelect("run", rows.map((r) => r.run));
    fillSelect("preset", rows.map((r) => r.preset));
  }
  state.answers = rows;
  const list = document.getElementById("answers");
  list.replaceChildren(...rows.map(answerItem));
  document.getElementById("answers-count").textContent = `${rows.length} answers`;
}

async function selectAnswer(row, item) {
  state.selected = row;
  document.querySelectorAll("#answers li.selected").forEach((li) => li.classList.remove("selected"));
  item.classList.add("selected");
  const params = new URLSearchParams({ run: row.run, question_id: row.question_id });
  const collection = await getJSON(`api/answers.geojson?${params}`);
  const format = new ol.format.GeoJSON();
  const features = format.readFeatures(collection, { featureProjection: MERCATOR })
    .filter((f) => f.get("kind") === "tile");
  state.evidence.clear();
  state.evidence.addFeatures(features);
  if (state.heatLayer) { state.map.removeLayer(state.heatLayer); state.heatLayer = null; }
  if (row.has_heatmap) {
    try {
      const tj = await getJSON(`api/runs/${encodeURIComponent(row.run)}/answers/` +
        `${encodeURIComponent(row.question_id)}/heat/tilejson.json`);
      const source = new ol.source.XYZ({
        url: tj.tiles[0], minZoom: tj.minzoom, maxZoom: tj.maxzoom, transition: 0,
      });
      watchTiles(source, true);
      state.heatLayer = new ol.layer.Tile({ source, extent: extentFromLonLat(tj.bounds), zIndex: 20 });
      state.map.addLayer(state.heatLayer);
    } catch (err) { console.warn(err); }
  }
  if (row.evidence_bounds_lonlat) {
    state.lastFitLonLat = row.evidence_bounds_lonlat;
    state.map.getView().fit(extentFromLonLat(row.evidence_bounds_lonlat),
      { padding: FIT_PADDING_PX, duration: 0, maxZoom: 22 });
  }
  document.getElementById("legend").replaceChildren(
    el("div", {}, el("b", {}, "Q: "), row.question),
    el("div", {}, el("b", {}, "A: "), row.answer),
    el("div", {}, "evidence tiles (blue outlines) · heat ", el("span", { class: "heat-ramp" }), " low → high"));
}

function sparkline(timeline, total) {
  const width = 60, height = 18;
  if (!timeline.length) return el("span", { class: "muted" }, "—");
  const t0 = Date.parse(timeline[0].time), t1 = Date.parse(timeline[timeline.length - 1].time);
  const points = timeline.map((p) => {
    const x = t1 > t0 ? (Date.parse(p.time) - t0) / (t1 - t0) * width : width;
    const y = height - (p.answered + p.failed) / Math.max(1, total) * height;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", (timeline.length === 1 ? `0,${height} ` : "") + points.join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#2563eb");
  svg.append(line);
  return svg;
}

async function loadMonitor() {
  const report = await getJSON("api/monitor");
  const rows = report.groups.map((g) => el("tr", { "data-run": g.run, "data-scene": g.scene_id ?? "" },
    el("td", {}, g.run), el("td", {}, g.scene_id ?? "—"),
    el("td", { class: "num answered" }, g.answered), el("td", { class: "num failed" }, g.failed),
    el("td", { class: "num pending" }, g.pending),
    el("td", {}, sparkline(g.timeline, g.answered + g.failed + g.pending))));
  document.querySelector("#monitor tbody").replaceChildren(...rows);
  document.getElementById("monitor-updated").textContent = new Date(report.generated).toLocaleTimeString();
  state.monitor = report;
}

function initTabs() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
      document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== `view-${tab.dataset.view}`; });
    });
  }
}

async function poll() {
  try { await Promise.all([loadAnswers(), loadMonitor()]); } catch (err) { console.warn(err); }
}

async function main() {
  document.getElementById("poll-seconds").textContent = POLL_SECONDS;
  initTabs();
  initMap();
  const form = document.getElementById("filters");
  form.addEventListener("input", () => loadAnswers());
  form.addEventListener("submit", (event) => event.preventDefault());
  const wanted = new URLSearchParams(window.location.search);
  for (const [key, value] of wanted) {
    const field = form.elements.namedItem(key);
    if (field && field.tagName === "SELECT" && ![...field.options].some((o) => o.value === value)) {
      field.append(el("option", { value }, value));
    }
    if (field) field.value = value;
  }
  await loadScenes();
  await poll();
  setInterval(poll, POLL_SECONDS * 1000);
}

main();
