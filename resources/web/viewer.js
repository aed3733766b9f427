// osirix-py HTML5 viewer: a study list with search, and a series viewer.
//
// Safety: every DICOM value (names, descriptions ...) is attacker-controlled
// text.  It goes into the page with textContent only (never innerHTML), every
// UID in a URL goes through encodeURIComponent, and the page's CSP forbids
// inline script.
//
// The viewer windows the raw pixels itself (GET /api/instances/{uid}/pixels:
// stored values + slope/intercept), so W/L by drag is instant: a 64 K-entry
// lookup table per change, one pass over the pixels, no round trip.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const HDRS = { "X-Requested-With": "osirix-py" };

// ------------------------------------------------------------------ HTTP
function toLogin() {
  location.href = "/login?next=" + enc(location.pathname + location.search + location.hash);
}

async function api(url, opts = {}) {
  const r = await fetch(url, { credentials: "same-origin", ...opts, headers: { ...HDRS, ...(opts.headers || {}) } });
  if (r.status === 401) { toLogin(); throw new Error("not logged in"); }
  if (!r.ok) {
    let reason = r.statusText;
    try { reason = (await r.json()).error || reason; } catch (e) { /* not JSON */ }
    throw new Error(reason);
  }
  return r;
}
const getJSON = async (url) => (await api(url)).json();

// ------------------------------------------------------------------ formatting
function personName(v) {
  if (v == null) return "";
  return String(v).split("=")[0].replace(/\^+/g, " ").trim();
}
function dicomDate(v) {
  const s = v == null ? "" : String(v);
  return /^\d{8}$/.test(s) ? s.slice(0, 4) + "-" + s.slice(4, 6) + "-" + s.slice(6, 8) : s;
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = String(text);
  return e;
}
function setLines(box, lines) {
  box.replaceChildren(...lines.filter((l) => l != null && l !== "").map((l) => el("div", null, l)));
}

// ------------------------------------------------------------------ study list
const WILDCARD = new Set(["PatientName", "PatientID", "AccessionNumber"]);

async function searchStudies(ev) {
  if (ev) ev.preventDefault();
  const params = new URLSearchParams({ limit: "500" });
  for (const [k, raw] of new FormData($("search"))) {
    const v = String(raw).trim();
    if (!v) continue;
    params.set(k, WILDCARD.has(k) && !/[*?]/.test(v) ? v + "*" : v);
  }
  $("status").textContent = "Searching…";
  try {
    const studies = await getJSON("/api/studies?" + params);
    const body = $("study-rows");
    body.replaceChildren();
    for (const s of studies) {
      const tr = document.createElement("tr");
      tr.dataset.uid = s.StudyInstanceUID;
      const cells = [
        [personName(s.PatientName)], [s.PatientID], [dicomDate(s.PatientBirthDate)], [dicomDate(s.StudyDate)],
        [s.StudyDescription, "desc"], [s.AccessionNumber], [s.ModalitiesInStudy],
        [s.NumberOfStudyRelatedSeries, "num"], [s.NumberOfStudyRelatedInstances, "num"],
      ];
      for (const [v, cls] of cells) tr.appendChild(el("td", cls, v == null ? "" : v));
      tr.addEventListener("click", () => {
        for (const o of body.children) o.classList.remove("selected");
        tr.classList.add("selected");
      });
      tr.addEventListener("dblclick", () => { location.hash = "#/study/" + enc(s.StudyInstanceUID); });
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") location.hash = "#/study/" + enc(s.StudyInstanceUID); });
      tr.tabIndex = 0;
      body.appendChild(tr);
    }
    $("status").textContent = studies.length + (studies.length === 1 ? " study" : " studies")
      + (studies.length ? " — double-click one to open it" : "");
  } catch (e) {
    $("status").textContent = "Error: " + e.message;
  }
}

// ------------------------------------------------------------------ viewer state
const PRESETS = [
  ["Default (file)", null], ["Full range", "full"],
  ["CT Abdomen", [40, 400]], ["CT Lung", [-600, 1500]], ["CT Bone", [300, 1500]],
  ["CT Brain", [40, 80]], ["CT Mediastinum", [50, 350]], ["CT Liver", [60, 160]], ["CT Angio", [300, 600]],
];

const V = {
  study: null, series: [], seriesRow: null, slices: [], index: 0,
  cache: new Map(), pending: new Map(), prefetchGen: 0,
  wc: null, ww: null, invert: false, userWL: false,
  zoom: 1, panX: 0, panY: 0, tool: "wl",
  off: document.createElement("canvas"), img: null, lutKey: "", lut: null, drawn: "",
};

function stage() { return $("stage"); }

async function openStudy(studyUID, seriesUID) {
  $("list-view").hidden = true;
  $("viewer-view").hidden = false;
  $("search").hidden = true;
  if (!V.study || V.study.StudyInstanceUID !== studyUID) {
    V.study = await getJSON("/api/studies/" + enc(studyUID));
    const series = await getJSON("/api/series?limit=1000&StudyInstanceUID=" + enc(studyUID));
    series.sort((a, b) => (a.SeriesNumber ?? 1e9) - (b.SeriesNumber ?? 1e9));
    V.series = series;
    buildThumbs();
  }
  const target = V.series.find((s) => s.SeriesInstanceUID === seriesUID) || V.series[0];
  if (target) await openSeries(target);
  stage().focus();
}

function buildThumbs() {
  const box = $("thumbs");
  box.replaceChildren();
  for (const s of V.series) {
    const d = el("div", "thumb");
    d.dataset.uid = s.SeriesInstanceUID;
    d.title = [s.Modality, s.SeriesDescription].filter(Boolean).join(" — ");
    const img = el("img");
    img.alt = "";
    img.loading = "lazy";
    img.src = "/api/series/" + enc(s.SeriesInstanceUID) + "/thumbnail?size=128";
    const n = s.NumberOfSeriesRelatedInstances;
    d.append(img, el("div", "cap", (s.Modality || "") + " #" + (s.SeriesNumber ?? "?") + " · " + (n ?? "?") + " im"),
      el("div", "cap", s.SeriesDescription || ""));
    d.addEventListener("click", () => {
      location.hash = "#/study/" + enc(V.study.StudyInstanceUID) + "/series/" + enc(s.SeriesInstanceUID);
    });
    box.appendChild(d);
  }
}

async function openSeries(s) {
  V.seriesRow = s;
  for (const t of $("thumbs").children) t.classList.toggle("active", t.dataset.uid === s.SeriesInstanceUID);
  $("viewer-title").textContent = [personName(V.study.PatientName), V.study.StudyDescription,
    s.SeriesDescription].filter(Boolean).join(" — ");
  const inst = await getJSON("/api/instances?limit=10000&SeriesInstanceUID=" + enc(s.SeriesInstanceUID));
  inst.sort((a, b) => (a.InstanceNumber ?? 0) - (b.InstanceNumber ?? 0));
  let slices = inst.map((i) => ({ sop: i.SOPInstanceUID, frame: 1, inst: i }));
  if (inst.length === 1 && (inst[0].NumberOfFrames || 1) > 1) {
    slices = Array.from({ length: inst[0].NumberOfFrames }, (_, k) => ({ sop: inst[0].SOPInstanceUID, frame: k + 1, inst: inst[0] }));
  }
  V.slices = slices;
  V.cache.clear();
  V.pending.clear();
  V.index = Math.floor(slices.length / 2);
  V.userWL = false; V.invert = false; V.zoom = 1; V.panX = 0; V.panY = 0;
  $("preset").value = "0";
  $("slice").max = String(Math.max(0, slices.length - 1));
  $("slice").value = String(V.index);
  await show(V.index);
  prefetch();
}

function sliceKey(s) { return s.sop + "#" + s.frame; }

async function load(i) {
  const s = V.slices[i];
  const key = sliceKey(s);
  if (V.cache.has(key)) return V.cache.get(key);
  if (V.pending.has(key)) return V.pending.get(key);
  const p = (async () => {
    const r = await api("/api/instances/" + enc(s.sop) + "/pixels?frame=" + s.frame);
    const info = JSON.parse(r.headers.get("X-Pixel-Info"));
    const buf = await r.arrayBuffer();
    const T = { uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array, float32: Float32Array, rgb8: Uint8Array }[info.dtype];
    const px = new T(buf);
    const item = { info, px };
    V.cache.set(key, item);
    V.pending.delete(key);
    return item;
  })();
  V.pending.set(key, p);
  p.catch(() => V.pending.delete(key));
  return p;
}

async function prefetch() {
  const gen = ++V.prefetchGen;
  const n = V.slices.length, start = V.index;
  const order = [];
  for (let d = 1; d < n; d++) {
    if (start + d < n) order.push(start + d);
    if (start - d >= 0) order.push(start - d);
  }
  const worker = async () => {
    while (order.length && gen === V.prefetchGen) {
      try { await load(order.shift()); } catch (e) { /* shown when displayed */ }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

async function show(i) {
  if (!V.slices.length) return;
  V.index = Math.max(0, Math.min(V.slices.length - 1, i));
  $("slice").value = String(V.index);
  $("slice-label").textContent = (V.index + 1) + " / " + V.slices.length;
  const want = V.index;
  const loading = setTimeout(() => { $("loading").hidden = false; }, 150);
  let item;
  try {
    item = await load(want);
  } catch (e) {
    clearTimeout(loading);
    $("loading").textContent = "Error: " + e.message;
    $("loading").hidden = false;
    return;
  } finally {
    clearTimeout(loading);
  }
  $("loading").hidden = true;
  if (want !== V.index) return; // scrolled on meanwhile
  V.item = item;
  if (!V.userWL) { V.wc = item.info.center; V.ww = item.info.width; }
  render();
}

// ------------------------------------------------------------------ rendering
function buildLut(info) {
  // stored value -> 0..255 for integer types (DICOM LINEAR window, PS3.3 C.11.2.1.2.1)
  const key = [info.dtype, info.slope, info.intercept, V.wc, V.ww, V.invert !== info.invert].join("|");
  if (key === V.lutKey) return V.lut;
  const size = info.dtype === "uint8" ? 256 : 65536;
  const lut = new Uint8ClampedArray(size);
  const c = V.wc - 0.5, w = Math.max(1, V.ww - 1);
  const inv = V.invert !== info.invert;
  for (let k = 0; k < size; k++) {
    const stored = info.dtype === "int16" && k > 32767 ? k - 65536 : k;
    const v = stored * info.slope + info.intercept;
    let y = ((v - c) / w + 0.5) * 255;
    y = y < 0 ? 0 : y > 255 ? 255 : y;
    lut[k] = inv ? 255 - y : y;
  }
  V.lutKey = key; V.lut = lut;
  return lut;
}

function paintOffscreen(item) {
  const { info, px } = item;
  const off = V.off;
  if (off.width !== info.columns || off.height !== info.rows) { off.width = info.columns; off.height = info.rows; V.img = null; }
  const ctx = off.getContext("2d");
  if (!V.img) V.img = ctx.createImageData(info.columns, info.rows);
  const out = new Uint32Array(V.img.data.buffer);
  const n = info.rows * info.columns;
  if (info.dtype === "rgb8") {
    const c = V.wc - 0.5, w = Math.max(1, V.ww - 1);
    const f = (v) => { let y = ((v - c) / w + 0.5) * 255; y = y < 0 ? 0 : y > 255 ? 255 : y; return V.invert ? 255 - y : y; };
    const t = new Uint8Array(256);
    for (let k = 0; k < 256; k++) t[k] = f(k);
    for (let i = 0, j = 0; i < n; i++, j += 3) out[i] = 0xff000000 | (t[px[j + 2]] << 16) | (t[px[j + 1]] << 8) | t[px[j]];
  } else if (info.dtype === "float32") {
    const c = V.wc - 0.5, w = Math.max(1, V.ww - 1), inv = V.invert !== info.invert;
    for (let i = 0; i < n; i++) {
      let y = ((px[i] - c) / w + 0.5) * 255;
      y = y < 0 ? 0 : y > 255 ? 255 : y | 0;
      if (inv) y = 255 - y;
      out[i] = 0xff000000 | (y << 16) | (y << 8) | y;
    }
  } else {
    const lut = buildLut(info);
    const idx = info.dtype === "int16" ? new Uint16Array(px.buffer, px.byteOffset, n) : px;
    for (let i = 0; i < n; i++) { const g = lut[idx[i]]; out[i] = 0xff000000 | (g << 16) | (g << 8) | g; }
  }
  ctx.putImageData(V.img, 0, 0);
}

function render() {
  const item = V.item;
  if (!item) return;
  paintOffscreen(item);
  draw();
}

function geometry() {
  const info = V.item.info;
  const cv = $("canvas");
  const sp = info.spacing;
  const aspect = sp ? sp[0] / sp[1] : 1; // row spacing / column spacing: height scale
  const w = info.columns, h = info.rows * aspect;
  const fit = Math.min(cv.width / w, cv.height / h);
  const s = fit * V.zoom;
  return { s, aspect, w, h, x: (cv.width - w * s) / 2 + V.panX * devicePixelRatio, y: (cv.height - h * s) / 2 + V.panY * devicePixelRatio };
}

function draw() {
  const cv = $("canvas");
  const st = stage();
  const dpr = window.devicePixelRatio || 1;
  const W = Math.max(1, Math.round(st.clientWidth * dpr)), H = Math.max(1, Math.round(st.clientHeight * dpr));
  if (cv.width !== W || cv.height !== H) { cv.width = W; cv.height = H; }
  const ctx = cv.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, W, H);
  if (!V.item) return;
  const g = geometry();
  ctx.imageSmoothingEnabled = V.zoom * (g.s / V.zoom) < 3;
  ctx.drawImage(V.off, g.x, g.y, g.w * g.s, g.h * g.s);
  overlay(g);
  cv.dataset.rendered = [sliceKey(V.slices[V.index]), Math.round(V.wc), Math.round(V.ww), V.invert ? 1 : 0].join("|");
}

function overlay(g) {
  const st = V.study || {}, se = V.seriesRow || {}, info = V.item.info;
  const inst = V.slices[V.index].inst || {};
  const sex = st.PatientSex ? " " + st.PatientSex : "";
  setLines($("ov-tl"), [personName(st.PatientName), st.PatientID ? "ID: " + st.PatientID : "",
    st.PatientBirthDate ? "Born: " + dicomDate(st.PatientBirthDate) + sex : sex.trim()]);
  setLines($("ov-tr"), [st.InstitutionName, st.StudyDescription, dicomDate(st.StudyDate) + (st.StudyTime ? " " + String(st.StudyTime).slice(0, 6).replace(/(\d\d)(\d\d)(\d\d)?/, "$1:$2") : ""),
    st.AccessionNumber ? "Acc: " + st.AccessionNumber : ""]);
  setLines($("ov-bl"), [(se.Modality || "") + " Se: " + (se.SeriesNumber ?? "") + (se.SeriesDescription ? " " + se.SeriesDescription : ""),
    "Im: " + (V.index + 1) + " / " + V.slices.length + (inst.InstanceNumber != null ? "  (#" + inst.InstanceNumber + ")" : ""),
    info.columns + " x " + info.rows]);
  setLines($("ov-br"), ["WL: " + Math.round(V.wc) + "  WW: " + Math.round(V.ww) + (V.invert ? "  inv" : ""),
    "Zoom: " + Math.round(g.s * 100 / devicePixelRatio) + "%"]);
}

// ------------------------------------------------------------------ interaction
function setTool(t) {
  V.tool = t;
  for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === t);
  stage().className = "tool-" + t;
}

function setWL(wc, ww, fromUser = true) {
  V.wc = wc; V.ww = Math.max(1, ww); V.userWL = fromUser;
  render();
}

function applyPreset(i) {
  const p = PRESETS[i];
  if (!p || !V.item) return;
  $("preset").value = String(i);
  if (p[1] === null) { V.userWL = false; setWL(V.item.info.center, V.item.info.width, false); }
  else if (p[1] === "full") { const { min, max } = V.item.info; setWL((min + max) / 2 + 0.5, max - min + 1); }
  else setWL(p[1][0], p[1][1]);
}

function resetView() {
  V.zoom = 1; V.panX = 0; V.panY = 0; V.invert = false;
  applyPreset(0);
}

let drag = null;
function onPointerDown(e) {
  if (!V.item) return;
  stage().focus();
  const mode = e.button === 2 ? "zoom" : e.button === 1 ? "pan" : (e.shiftKey ? "pan" : e.ctrlKey ? "zoom" : V.tool);
  drag = { mode, x: e.clientX, y: e.clientY, wc: V.wc, ww: V.ww, zoom: V.zoom, panX: V.panX, panY: V.panY, index: V.index };
  stage().setPointerCapture(e.pointerId);
  e.preventDefault();
}
function onPointerMove(e) {
  if (!drag) return;
  const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
  if (drag.mode === "wl") {
    const info = V.item.info;
    const k = Math.max(0.2, (info.max - info.min) / 800);
    $("preset").value = "";
    setWL(drag.wc + dy * k, drag.ww + dx * k * 2);
  } else if (drag.mode === "pan") {
    V.panX = drag.panX + dx; V.panY = drag.panY + dy; draw();
  } else if (drag.mode === "zoom") {
    V.zoom = Math.min(40, Math.max(0.1, drag.zoom * Math.exp(-dy / 150))); draw();
  } else if (drag.mode === "scroll") {
    const i = drag.index + Math.round(dy / 6);
    if (i !== V.index) show(i);
  }
}
function onPointerUp(e) {
  if (drag) { try { stage().releasePointerCapture(e.pointerId); } catch (x) { /* gone */ } }
  drag = null;
}

function onWheel(e) {
  e.preventDefault();
  if (!V.slices.length) return;
  if (e.ctrlKey || e.metaKey) {
    V.zoom = Math.min(40, Math.max(0.1, V.zoom * Math.exp(-e.deltaY / 400)));
    draw();
    return;
  }
  show(V.index + (e.deltaY > 0 ? 1 : -1));
}

function onKey(e) {
  if ($("viewer-view").hidden || e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  const k = e.key;
  const page = Math.max(1, Math.round(V.slices.length / 10));
  const actions = {
    ArrowUp: () => show(V.index - 1), ArrowLeft: () => show(V.index - 1),
    ArrowDown: () => show(V.index + 1), ArrowRight: () => show(V.index + 1),
    PageUp: () => show(V.index - page), PageDown: () => show(V.index + page),
    Home: () => show(0), End: () => show(V.slices.length - 1),
    "+": () => { V.zoom = Math.min(40, V.zoom * 1.25); draw(); },
    "=": () => { V.zoom = Math.min(40, V.zoom * 1.25); draw(); },
    "-": () => { V.zoom = Math.max(0.1, V.zoom / 1.25); draw(); },
    i: () => { V.invert = !V.invert; render(); }, r: resetView,
    f: () => { V.zoom = 1; V.panX = 0; V.panY = 0; draw(); },
    w: () => setTool("wl"), p: () => setTool("pan"), z: () => setTool("zoom"), s: () => setTool("scroll"),
    Escape: () => { location.hash = "#/"; },
  };
  let fn = actions[k] || actions[k.toLowerCase()];
  if (!fn && /^[1-9]$/.test(k)) fn = () => applyPreset(Number(k) - 1);
  if (fn) { e.preventDefault(); fn(); }
}

// ------------------------------------------------------------------ routing
function showList() {
  V.prefetchGen++;
  $("viewer-view").hidden = true;
  $("list-view").hidden = false;
  $("search").hidden = false;
  if (!$("study-rows").children.length) searchStudies();
}

async function route() {
  const m = location.hash.match(/^#\/study\/([^/]+)(?:\/series\/([^/]+))?/);
  try {
    if (m) await openStudy(decodeURIComponent(m[1]), m[2] ? decodeURIComponent(m[2]) : null);
    else showList();
  } catch (e) {
    showList();
    $("status").textContent = "Error: " + e.message;
  }
}

function init() {
  const sel = $("preset");
  PRESETS.forEach(([name], i) => { const o = el("option", null, (i < 9 ? (i + 1) + "  " : "") + name); o.value = String(i); sel.appendChild(o); });
  const custom = el("option", null, "Custom"); custom.value = ""; custom.hidden = true; sel.appendChild(custom);
  sel.addEventListener("change", () => { if (sel.value !== "") applyPreset(Number(sel.value)); stage().focus(); });
  $("search").addEventListener("submit", searchStudies);
  $("clear").addEventListener("click", () => { $("search").reset(); searchStudies(); });
  $("back").addEventListener("click", () => { location.hash = "#/"; });
  $("invert").addEventListener("click", () => { V.invert = !V.invert; render(); });
  $("fit").addEventListener("click", () => { V.zoom = 1; V.panX = 0; V.panY = 0; draw(); });
  $("reset").addEventListener("click", resetView);
  $("prev").addEventListener("click", () => show(V.index - 1));
  $("next").addEventListener("click", () => show(V.index + 1));
  $("slice").addEventListener("input", (e) => show(Number(e.target.value)));
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  const st = stage();
  st.addEventListener("pointerdown", onPointerDown);
  st.addEventListener("pointermove", onPointerMove);
  st.addEventListener("pointerup", onPointerUp);
  st.addEventListener("pointercancel", onPointerUp);
  st.addEventListener("wheel", onWheel, { passive: false });
  st.addEventListener("contextmenu", (e) => e.preventDefault());
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", () => { if (V.item) draw(); });
  window.addEventListener("hashchange", route);
  $("logout").addEventListener("click", async () => {
    try { await api("/logout", { method: "POST", headers: { Accept: "application/json" } }); } catch (e) { /* gone anyway */ }
    location.href = "/login";
  });
  getJSON("/api/me").then((me) => {
    if (me.auth === "off") { $("who").textContent = "authentication off"; $("logout").hidden = true; }
    else if (me.user) $("who").textContent = me.user + (me.role === "readonly" ? " (read-only)" : "");
    if (me.auth !== "session") $("logout").hidden = me.auth === "off";
  }).catch(() => { /* toLogin already */ });
  setTool("wl");
  route();
}

init();
