// lvseg web page: plain JavaScript, no build step, no external resources.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = {
    file: null, requiresText: true, maxTextChars: 2000, maxUploadBytes: 20 * 1024 * 1024, urls: [],
    result: null, // {id, text}: the result on screen; the PDF is made of exactly this result
    formVersion: 0, // bumped whenever the image or the report changes: an answer to an older form is dropped
    classes: [], classesRequired: false, // a multi-class checkpoint's classes (from /api/model)
  };
  const BROWSER_FORMATS = ["image/png", "image/jpeg"];

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    setStatus(""); // no success message may outlive an error
  }

  // The result on screen must always be the one of the image and report in the form: any change clears it.
  function clearResult(reason) {
    if (!state.result) return;
    state.result = null;
    releaseUrls();
    $("results").hidden = true;
    setStatus(reason);
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function setStatus(message) {
    $("status").textContent = message;
  }

  function apiHeaders() {
    const key = $("api-key").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  // Turn any failed response into one sentence in plain words.
  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error) {
        return body.error.charAt(0).toUpperCase() + body.error.slice(1) + ".";
      }
    } catch (ignored) { /* not JSON */ }
    return "The server answered with status " + response.status + ".";
  }

  function keepUrl(url) {
    state.urls.push(url);
    return url;
  }

  function releaseUrls() {
    state.urls.forEach((url) => URL.revokeObjectURL(url));
    state.urls = [];
  }

  function pngBlobUrl(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return keepUrl(URL.createObjectURL(new Blob([bytes], { type: "image/png" })));
  }

  function chooseFile(file) {
    state.formVersion += 1;
    state.file = file || null;
    $("file-name").textContent = file ? "Selected: " + file.name + " (" + Math.ceil(file.size / 1024) + " KB)" : "";
    clearError();
    clearResult("A new image was chosen: press Segment to analyse it.");
  }

  function validateUpload() {
    if (!state.file) {
      return "Choose an image first (PNG, JPEG, TIFF, BMP or DICOM).";
    }
    if (state.file.size > state.maxUploadBytes) {
      return "The image is larger than " + Math.round(state.maxUploadBytes / 1048576) + " MB.";
    }
    const text = $("report-text").value;
    if (state.classesRequired && chosenClasses().length === 0) {
      return "Choose at least one class to segment.";
    }
    if (state.requiresText && !text.trim() && chosenClasses().length === 0) {
      return "Type the report text: this model needs it" + (state.classes.length ? " (or choose classes)." : ".");
    }
    if (text.length > state.maxTextChars) {
      return "The report text is longer than " + state.maxTextChars + " characters.";
    }
    return null;
  }

  // The names of the ticked classes (none for a binary checkpoint: the picker is not shown).
  function chosenClasses() {
    return Array.from(document.querySelectorAll("#class-choices input:checked")).map((box) => box.value);
  }

  function segmentForm() {
    const form = new FormData();
    form.append("image", state.file, state.file.name || "image");
    form.append("text", $("report-text").value);
    const classes = chosenClasses();
    if (classes.length) form.append("classes", classes.join(","));
    return form;
  }

  // One check box per class of a multi-class checkpoint, each with its colour; hidden for a binary one.
  function showClassPicker(info) {
    state.classes = info.classes || [];
    state.classesRequired = Boolean(info.classes_required);
    const box = $("class-choices");
    box.replaceChildren();
    state.classes.forEach((entry) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox";
      input.name = "classes";
      input.value = entry.name;
      input.checked = state.classesRequired;
      input.addEventListener("change", () => {
        state.formVersion += 1;
        clearResult("The classes changed: press Segment to analyse the image with them.");
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = entry.colour;
      label.append(input, swatch, document.createTextNode(entry.name));
      if (entry.prompt && entry.prompt !== entry.name) label.title = "Asked as: " + entry.prompt;
      box.append(label);
    });
    $("class-help").textContent = state.classesRequired
      ? "This model segments every class at once: choose the ones to show."
      : "Choose one or several: each is asked for by its own prompt and the result is a label map, one colour "
        + "per class (the report is kept with the result). Choose none to segment what the report describes.";
    $("class-box").hidden = state.classes.length === 0;
  }

  function showClassResults(result) {
    const legend = $("class-legend");
    const rows = $("class-results").querySelector("tbody");
    legend.replaceChildren();
    rows.replaceChildren();
    (result.classes || []).forEach((entry) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = entry.colour;
      item.append(swatch, document.createTextNode(entry.name));
      legend.append(item);
      const row = document.createElement("tr");
      row.dataset.class = entry.name;
      const mm = entry.area_mm2 === null ? "" : ", " + entry.area_mm2.toFixed(1) + " mm²";
      [
        entry.name,
        entry.finding.charAt(0).toUpperCase() + entry.finding.slice(1),
        entry.area_px + " px (" + entry.area_percent.toFixed(2) + " %" + mm + ")",
        String(entry.regions),
        entry.max_probability.toFixed(3),
        entry.prompt || "—",
      ].forEach((text) => {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      });
      rows.append(row);
    });
    $("class-results-box").hidden = !result.classes;
    $("view-overlay-label").textContent = result.classes ? "Classes (one colour each)" : "Lesions (one colour each)";
    $("lesion-legend").hidden = Boolean(result.classes);
  }

  // The PDF names the result on screen by its id: the server renders that result, not the form's new values.
  function reportForm() {
    const form = new FormData();
    form.append("study_id", $("study-id").value);
    form.append("patient_id", $("patient-id").value);
    form.append("referrer", $("referrer").value);
    form.append("notes", $("notes").value);
    form.append("recommendations", $("recommendations").value);
    return form;
  }

  function describeModel(info) {
    const dice = info.validation_dice === null ? "not recorded" : info.validation_dice.toFixed(3);
    const where = info.validation_data ? " on " + info.validation_data : "";
    const trained = info.training_data ? ", trained on " + info.training_data : "";
    return info.model + trained + " (validation Dice " + dice + where + ")";
  }

  // The model's own example reports (a click puts one in the report box) and, for a learned vocabulary,
  // the words it knows: what the page says it reads, so a clinician can word the report for it.
  function showWording(info) {
    const list = $("example-reports");
    list.replaceChildren();
    info.example_reports.forEach((text) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "example";
      button.textContent = text;
      button.addEventListener("click", () => {
        $("report-text").value = text;
        $("report-text").dispatchEvent(new Event("input"));
      });
      item.append(button);
      list.append(item);
    });
    const vocabulary = info.vocabulary || [];
    $("vocabulary-note").hidden = vocabulary.length === 0;
    $("vocabulary-note").textContent = vocabulary.length
      ? "The " + vocabulary.length + " words it knows (others are ignored): " + vocabulary.join(", ") + "."
      : "";
    $("wording-box").hidden = info.example_reports.length === 0;
  }

  function showResult(result, file) {
    releaseUrls();
    const originalUrl = result.original
      ? pngBlobUrl(result.original)
      : keepUrl(URL.createObjectURL(file));
    const overlayUrl = pngBlobUrl(result.overlay);
    const maskUrl = pngBlobUrl(result.mask);
    state.views = { overlay: overlayUrl, heatmap: pngBlobUrl(result.heatmap) };
    $("original-image").src = originalUrl;
    $("overlay-base").src = originalUrl;
    showView();
    const note = $("side-markers-note");
    note.hidden = !result.side_markers;
    note.textContent = result.side_markers
      ? "Patient sides from the DICOM orientation: " + result.side_markers[0] + " on the left edge, "
        + result.side_markers[1] + " on the right edge."
      : "";
    $("download-mask").href = maskUrl;
    $("download-mask").textContent = result.classes ? "Download label map PNG" : "Download mask PNG";
    $("download-overlay").href = overlayUrl;
    const reduced = result.width !== result.original_width || result.height !== result.original_height;
    $("m-area").textContent = result.area_px + " px (" + result.area_percent.toFixed(2) + " % of the image)"
      + (result.area_mm2 === null ? "" : ", " + result.area_mm2.toFixed(1) + " mm²")
      + (reduced ? "; analysed at " + result.width + " x " + result.height + " px (the image is "
        + result.original_width + " x " + result.original_height + ")" : "");
    $("m-lesions").textContent = String(result.lesions);
    $("m-finding").textContent = result.finding === "no lesion found"
      ? "No lesion found (highest probability " + result.max_probability.toFixed(3) + ")"
      : "Lesion found";
    $("m-confidence").textContent = result.finding === "no lesion found"
      ? "— (no lesion; highest probability " + result.max_probability.toFixed(3) + ")"
      : result.confidence.toFixed(3);
    if (result.classes) { // a label map: the finding names the classes found (the table below has each)
      const found = result.classes.filter((entry) => entry.area_px > 0).map((entry) => entry.name);
      $("m-finding").textContent = found.length ? "Found: " + found.join(", ") : "None of the chosen classes found";
    }
    $("m-time").textContent = Math.round(result.inference_ms) + " ms";
    $("m-model").textContent = describeModel(result); // from the answer itself, not from page load
    $("m-report").textContent = !state.requiresText ? "not used by this model"
      : result.classes ? (result.report_text || "—") + " (kept with the result; each class has its own prompt)"
        : (result.report_text || "—");
    const warnings = $("text-warnings");
    warnings.replaceChildren();
    result.text_warnings.forEach((warning) => {
      const item = document.createElement("li");
      item.textContent = warning.charAt(0).toUpperCase() + warning.slice(1) + ".";
      warnings.append(item);
    });
    $("text-warnings-box").hidden = result.text_warnings.length === 0;
    const checks = $("consistency-warnings");
    checks.replaceChildren();
    result.consistency.forEach((warning) => {
      const item = document.createElement("li");
      item.textContent = warning.message;
      item.dataset.code = warning.code;
      checks.append(item);
    });
    $("consistency-box").hidden = result.consistency.length === 0;
    const legend = $("lesion-legend");
    legend.replaceChildren();
    result.lesion_details.forEach((lesion) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = lesion.colour;
      const mm = lesion.area_mm2 === null ? "" : " (" + lesion.area_mm2.toFixed(1) + " mm²)";
      item.append(swatch, document.createTextNode("Lesion " + lesion.label + ": " + lesion.area_px + " px" + mm));
      legend.append(item);
    });
    if (!result.classes && result.lesions > result.lesion_details.length) {
      const more = document.createElement("li");
      more.textContent = "… and " + (result.lesions - result.lesion_details.length) + " smaller lesions";
      legend.append(more);
    }
    showClassResults(result);
    state.result = { id: result.result_id, text: result.report_text };
    $("results").hidden = false;
  }

  function showView() {
    if (!state.views) return;
    const heat = $("view-heatmap").checked;
    $("overlay-image").src = heat ? state.views.heatmap : state.views.overlay;
    $("overlay-image").alt = heat ? "The lesion probability of every pixel as a colour map"
      : "The image with each lesion in its own colour";
    $("overlay-caption").textContent = heat ? "Probability heat-map" : "Overlay";
  }

  async function segment(event) {
    event.preventDefault();
    clearError();
    clearResult("");
    const problem = validateUpload();
    if (problem) {
      showError(problem);
      return;
    }
    const button = $("segment-button");
    button.disabled = true;
    setStatus("Segmenting…");
    const file = state.file;
    const version = state.formVersion;
    const needOriginal = !BROWSER_FORMATS.includes(file.type);
    try {
      const response = await fetch("/api/segment" + (needOriginal ? "?include_original=true" : ""), {
        method: "POST", body: segmentForm(), headers: apiHeaders(),
      });
      if (!response.ok) {
        showError("Could not segment the image. " + await errorMessage(response));
        return;
      }
      const result = await response.json();
      if (version !== state.formVersion) { // the image or report changed while this one was segmented
        setStatus("The image or the report changed while segmenting: press Segment again.");
        return;
      }
      showResult(result, file);
      setStatus("Done.");
    } catch (error) {
      showError("Could not reach the server. Check that it is running and try again.");
    } finally {
      button.disabled = false;
      if ($("status").textContent === "Segmenting…") setStatus("");
    }
  }

  async function downloadPdf() {
    clearError();
    if (!state.result) {
      showError("Segment the image first: the PDF report describes the result on the screen.");
      return;
    }
    const button = $("download-pdf");
    button.disabled = true;
    setStatus("Preparing the PDF report…");
    try {
      const response = await fetch("/api/results/" + encodeURIComponent(state.result.id) + "/report",
        { method: "POST", body: reportForm(), headers: apiHeaders() });
      if (!response.ok) {
        showError("Could not create the PDF report. " + await errorMessage(response));
        return;
      }
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      const studyId = $("study-id").value.trim().replace(/[^A-Za-z0-9_.-]+/g, "_");
      link.href = url;
      link.download = studyId ? "lvseg-report-" + studyId + ".pdf" : "lvseg-report.pdf";
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      setStatus("PDF report downloaded.");
    } catch (error) {
      showError("Could not reach the server. Check that it is running and try again.");
    } finally {
      button.disabled = false;
    }
  }

  async function loadModelInfo() {
    try {
      const health = await (await fetch("/healthz")).json();
      $("model-info").textContent = "Model: " + health.model + " on " + health.device + ".";
      $("api-key-row").hidden = !health.auth_required;
      if (health.auth_required && !$("api-key").value) return;
      const response = await fetch("/api/model", { headers: apiHeaders() });
      if (!response.ok) return;
      const info = await response.json();
      state.requiresText = info.requires_text;
      state.maxTextChars = info.limits.max_text_chars;
      state.maxUploadBytes = Math.floor(info.limits.max_upload_mb * 1048576);
      state.modelDescription = describeModel(info);
      $("model-info").textContent = "Model: " + state.modelDescription + ", on " + info.device + ".";
      $("report-box").hidden = !info.requires_text;
      showWording(info);
      showClassPicker(info);
      $("no-report-note").hidden = info.requires_text;
    } catch (error) {
      $("model-info").textContent = "The model service cannot be reached.";
    }
  }

  function setUp() {
    const zone = $("drop-zone");
    $("image-input").addEventListener("change", (event) => chooseFile(event.target.files[0]));
    ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    }));
    ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("dragging")));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      if (event.dataTransfer && event.dataTransfer.files.length) chooseFile(event.dataTransfer.files[0]);
    });
    $("report-text").addEventListener("input", () => {
      $("text-count").textContent = $("report-text").value.length + " / " + state.maxTextChars + " characters";
      state.formVersion += 1;
      if (state.result && $("report-text").value.trim() !== state.result.text) {
        clearResult("The report was edited: press Segment to analyse the image with the new report.");
      }
    });
    $("opacity").addEventListener("input", (event) => {
      $("overlay-image").style.opacity = String(event.target.value / 100);
      $("opacity-value").textContent = event.target.value + " %";
    });
    $("api-key").addEventListener("change", loadModelInfo);
    $("view-overlay").addEventListener("change", showView);
    $("view-heatmap").addEventListener("change", showView);
    $("segment-form").addEventListener("submit", segment);
    $("download-pdf").addEventListener("click", downloadPdf);
    loadModelInfo();
  }

  setUp();
}());
