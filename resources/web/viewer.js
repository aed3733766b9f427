// Minimal study list + series viewer over the REST API.  Every DICOM value is
// put into the page with textContent (never innerHTML) and every UID in a URL
// goes through encodeURIComponent.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  tr.appendChild(td);
}

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) {
    let reason = r.statusText;
    try { reason = (await r.json()).error || reason; } catch (e) { /* not JSON */ }
    throw new Error(reason);
  }
  return r.json();
}

async function searchStudies(ev) {
  if (ev) ev.preventDefault();
  const params = new URLSearchParams({ limit: "200" });
  for (const [k, v] of new FormData($("search"))) if (v) params.set(k, v);
  $("status").textContent = "Searching…";
  try {
    const studies = await getJSON("/api/studies?" + params);
    const body = $("study-rows");
    body.replaceChildren();
    for (const s of studies) {
      const tr = document.createElement("tr");
      cell(tr, s.PatientName); cell(tr, s.PatientID); cell(tr, s.StudyDate);
      cell(tr, s.StudyDescription); cell(tr, s.ModalitiesInStudy);
      cell(tr, s.NumberOfStudyRelatedInstances);
      tr.addEventListener("click", () => {
        for (const o of body.children) o.classList.remove("selected");
        tr.classList.add("selected");
        showSeries(s.StudyInstanceUID);
      });
      body.appendChild(tr);
    }
    $("status").textContent = studies.length + " stud" + (studies.length === 1 ? "y" : "ies");
  } catch (e) {
    $("status").textContent = "Error: " + e.message;
  }
}

async function showSeries(studyUID) {
  const list = $("series-list");
  list.replaceChildren();
  const series = await getJSON("/api/series?limit=1000&StudyInstanceUID=" + enc(studyUID));
  for (const s of series) {
    const div = document.createElement("div");
    div.className = "series";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = "";
    img.src = "/api/series/" + enc(s.SeriesInstanceUID) + "/thumbnail";
    const cap = document.createElement("div");
    cap.textContent = [s.Modality, s.SeriesNumber, s.SeriesDescription].filter((x) => x != null).join(" ")
      + " (" + (s.NumberOfSeriesRelatedInstances ?? "?") + ")";
    div.append(img, cap);
    div.addEventListener("click", () => openViewer(s));
    list.appendChild(div);
  }
}

const view = { instances: [], index: 0 };

async function openViewer(series) {
  view.instances = await getJSON("/api/instances?limit=10000&SeriesInstanceUID=" + enc(series.SeriesInstanceUID));
  view.index = Math.floor(view.instances.length / 2);
  $("viewer").hidden = false;
  $("viewer-title").textContent = (series.SeriesDescription || "") + " — " + (series.Modality || "");
  $("slice").max = String(Math.max(0, view.instances.length - 1));
  $("slice").value = String(view.index);
  draw();
}

function draw() {
  const inst = view.instances[view.index];
  if (!inst) return;
  $("slice-label").textContent = (view.index + 1) + " / " + view.instances.length;
  const params = new URLSearchParams({ format: "jpeg" });
  const wc = $("wc").value, ww = $("ww").value;
  if (wc !== "" && ww !== "") { params.set("windowCenter", wc); params.set("windowWidth", ww); }
  $("image").src = "/api/instances/" + enc(inst.SOPInstanceUID) + "/rendered?" + params;
}

$("search").addEventListener("submit", searchStudies);
$("slice").addEventListener("input", (e) => { view.index = Number(e.target.value); draw(); });
$("wc").addEventListener("change", draw);
$("ww").addEventListener("change", draw);
$("wl-reset").addEventListener("click", () => { $("wc").value = ""; $("ww").value = ""; draw(); });
$("image").addEventListener("wheel", (e) => {
  e.preventDefault();
  const n = view.instances.length;
  if (!n) return;
  view.index = Math.min(n - 1, Math.max(0, view.index + (e.deltaY > 0 ? 1 : -1)));
  $("slice").value = String(view.index);
  draw();
}, { passive: false });
searchStudies();
