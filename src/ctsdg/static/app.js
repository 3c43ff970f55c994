// ctsdg web app: paint a mask (and optional structure lines) over a photo, send it to /api/v1/inpaint,
// compare, keep editing, download. Plain ES2020, no build step, no external assets.
//
// Model of the page
//   versions : canvases at the photo's full resolution; versions[0] is the opened photo, each inpainting
//              adds one.
//   actions  : what the user did, in order: {type:"stroke", tool, width, points}, {type:"clear"} and
//              {type:"run", from, version}. Everything on screen is derived from it, so undo/redo is
//              "move one action between two stacks and redraw" — and undoing an inpainting brings back
//              the image and the strokes that produced it.
//   Layers   : mask-layer holds brush strokes (red, shown at 50%), edge-layer the structure lines (cyan).
//              They are exported as black/white PNGs: white = fill (mask) / white = line (edges).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const imageLayer = $("image-layer");
  const maskLayer = $("mask-layer");
  const edgeLayer = $("edge-layer");
  const wrap = $("canvas-wrap");
  const stage = $("stage");
  const cursor = $("cursor");
  const sizeInput = $("size");
  const compareInput = $("compare");
  const downloadLink = $("download");
  const MASK_COLOR = "#ff3b3b";
  const EDGE_COLOR = "#39d5d5";
  const MAX_VERSIONS = 12;

  const state = {
    versions: [],
    actions: [],
    redo: [],
    tool: "brush",
    busy: false,
    limits: null,
    blends: false, // the model takes a blend field (the Blend switch is shown)
    stroke: null, // the stroke being drawn
    zoom: 1, // 1 = fit the window
    downloadUrl: null,
  };

  const ctx = (canvas) => canvas.getContext("2d");
  const width = () => imageLayer.width;
  const height = () => imageLayer.height;

  // ---------------------------------------------------------------- derived state
  function currentVersion() {
    let v = 0;
    for (const a of state.actions) if (a.type === "run") v = a.version;
    return v;
  }
  function previousVersion() {
    let prev = null;
    for (const a of state.actions) if (a.type === "run") prev = a.from;
    return prev;
  }
  function activeStrokes() {
    let strokes = [];
    for (const a of state.actions) {
      if (a.type === "run" || a.type === "clear") strokes = [];
      else strokes.push(a);
    }
    return strokes;
  }

  // ---------------------------------------------------------------- drawing
  function strokeStyle(g, tool, layer) {
    g.lineCap = "round";
    g.lineJoin = "round";
    if (tool === "eraser") {
      g.globalCompositeOperation = "destination-out";
      g.strokeStyle = g.fillStyle = "#000";
    } else {
      g.globalCompositeOperation = "source-over";
      g.strokeStyle = g.fillStyle = layer === maskLayer ? MASK_COLOR : EDGE_COLOR;
    }
  }

  function layersFor(tool) {
    if (tool === "brush") return [maskLayer];
    if (tool === "line") return [edgeLayer];
    return [maskLayer, edgeLayer]; // the eraser removes both
  }

  // Draw `stroke` from point index `from` on (so a stroke in progress is drawn incrementally).
  function drawStroke(stroke, from = 0) {
    const pts = stroke.points;
    for (const layer of layersFor(stroke.tool)) {
      const g = ctx(layer);
      g.save();
      strokeStyle(g, stroke.tool, layer);
      g.lineWidth = stroke.width;
      if (pts.length === 1) {
        g.beginPath();
        g.arc(pts[0][0], pts[0][1], stroke.width / 2, 0, Math.PI * 2);
        g.fill();
      } else {
        g.beginPath();
        const start = Math.max(0, from - 1);
        g.moveTo(pts[start][0], pts[start][1]);
        for (let i = start + 1; i < pts.length; i++) g.lineTo(pts[i][0], pts[i][1]);
        g.stroke();
      }
      g.restore();
    }
  }

  function redrawLayers() {
    for (const layer of [maskLayer, edgeLayer]) ctx(layer).clearRect(0, 0, width(), height());
    for (const s of activeStrokes()) drawStroke(s);
    if (state.stroke) drawStroke(state.stroke);
  }

  function renderImage() {
    const g = ctx(imageLayer);
    const cur = state.versions[currentVersion()];
    if (!cur) return;
    g.globalCompositeOperation = "copy";
    g.drawImage(cur, 0, 0);
    g.globalCompositeOperation = "source-over";
    const prev = previousVersion();
    const split = Number(compareInput.value) / 100;
    if (prev !== null && split > 0) {
      const x = Math.round(split * width());
      g.save();
      g.beginPath();
      g.rect(0, 0, x, height());
      g.clip();
      g.drawImage(state.versions[prev], 0, 0);
      g.restore();
      g.fillStyle = "rgba(255,255,255,0.9)";
      g.fillRect(x - Math.max(1, width() / 800), 0, Math.max(2, width() / 400), height());
    }
  }

  function render() {
    renderImage();
    redrawLayers();
    updateControls();
  }

  // ---------------------------------------------------------------- layout
  // Display scale = fitScale * zoom. fitScale makes the whole photo visible (up to 4x for small photos);
  // zoom (1 = fit, up to 16 display px per photo px) lets one paint small objects in large photos.
  function fitScale() {
    const r = stage.getBoundingClientRect();
    const cs = getComputedStyle(stage);
    const w = r.width - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    const h = r.height - parseFloat(cs.paddingTop) - parseFloat(cs.paddingBottom);
    return Math.max(1e-3, Math.min(w / width(), h / height(), 4));
  }
  function maxZoom() { return Math.max(1, 16 / fitScale()); }

  function fit() {
    if (!state.versions.length) return;
    const scale = fitScale() * state.zoom;
    wrap.style.width = `${Math.max(1, Math.round(width() * scale))}px`;
    wrap.style.height = `${Math.max(1, Math.round(height() * scale))}px`;
  }

  // Zoom keeping the photo point under (clientX, clientY) — the pointer, or the view's centre — in place.
  function setZoom(zoom, clientX, clientY) {
    if (!state.versions.length) return;
    const sr = stage.getBoundingClientRect();
    if (clientX === undefined) { clientX = sr.left + sr.width / 2; clientY = sr.top + sr.height / 2; }
    const r0 = imageLayer.getBoundingClientRect();
    const fx = (clientX - r0.left) / r0.width;
    const fy = (clientY - r0.top) / r0.height;
    state.zoom = Math.min(maxZoom(), Math.max(1, zoom));
    fit();
    const r1 = imageLayer.getBoundingClientRect();
    stage.scrollLeft += r1.left + fx * r1.width - clientX;
    stage.scrollTop += r1.top + fy * r1.height - clientY;
    updateCursorSize();
    updateControls();
  }

  function displayScale() {
    const r = imageLayer.getBoundingClientRect();
    return r.width / width() || 1;
  }

  function lineWidth() {
    // Structure lines are edges: thin, about what Canny gives at the model's 256 px scale.
    return Math.max(2, Math.round(Math.max(width(), height()) / 400));
  }

  function strokeWidth(tool) {
    return tool === "line" ? lineWidth() : Number(sizeInput.value) / displayScale();
  }

  // ---------------------------------------------------------------- history
  function pushAction(action) {
    state.actions.push(action);
    state.redo = [];
    if (action.type === "run") squashOldest();
  }

  // Keep memory bounded: at most MAX_VERSIONS inpaintings can be undone. Past that, everything up to the
  // oldest inpainting is dropped and its result becomes the base image (strokes are tiny; canvases are not).
  function squashOldest() {
    let runs = state.actions.filter((a) => a.type === "run").length;
    while (runs > MAX_VERSIONS) {
      const a = state.actions.shift();
      if (a.type !== "run") continue;
      runs -= 1;
      state.versions[0] = state.versions[a.version];
      for (const b of state.actions) if (b.type === "run" && b.from === a.version) b.from = 0;
    }
    const kept = new Set([0]);
    for (const b of state.actions) if (b.type === "run") { kept.add(b.from); kept.add(b.version); }
    state.versions = state.versions.map((v, i) => (kept.has(i) ? v : null)); // let the rest be collected
  }

  function undo() {
    if (state.busy || !state.actions.length) return;
    state.redo.push(state.actions.pop());
    afterHistoryChange();
  }
  function redo() {
    if (state.busy || !state.redo.length) return;
    state.actions.push(state.redo.pop());
    afterHistoryChange();
  }
  function clearStrokes() {
    if (state.busy || !activeStrokes().length) return;
    pushAction({ type: "clear" });
    afterHistoryChange();
  }
  function afterHistoryChange() {
    if (previousVersion() === null) compareInput.value = 0;
    render();
    refreshDownload();
  }

  // ---------------------------------------------------------------- controls
  function updateControls() {
    const loaded = state.versions.length > 0;
    const b = state.busy;
    const strokes = activeStrokes();
    $("undo").disabled = b || !state.actions.length;
    $("redo").disabled = b || !state.redo.length;
    $("clear").disabled = b || !strokes.length;
    $("run").disabled = b || !strokes.some((s) => s.tool === "brush");
    compareInput.disabled = b || previousVersion() === null;
    $("zoom-in").disabled = !loaded || state.zoom >= maxZoom() - 1e-9;
    $("zoom-out").disabled = $("zoom-fit").disabled = !loaded || state.zoom <= 1;
    $("compare-bar").hidden = previousVersion() === null;
    downloadLink.classList.toggle("disabled", !loaded || b || !state.downloadUrl);
    downloadLink.setAttribute("aria-disabled", String(!loaded || b || !state.downloadUrl));
    document.body.dataset.state = b ? "busy" : loaded ? "ready" : "empty";
    if (loaded) {
      const mp = megapixels(width() * height());
      $("status-image").textContent = `${width()} × ${height()} px (${mp} MP)` +
        (currentVersion() > 0 ? ` · edit ${currentVersion()}` : "") + ` · ${Math.round(displayScale() * 100)}%`;
    }
  }

  function setTool(tool) {
    state.tool = tool;
    for (const btn of document.querySelectorAll(".tool")) {
      const on = btn.dataset.tool === tool;
      btn.classList.toggle("active", on);
      btn.setAttribute("aria-checked", String(on));
    }
    cursor.className = tool;
    updateCursorSize();
  }

  function setMessage(text, kind = "") {
    const el = $("status-message");
    el.textContent = text;
    el.className = kind;
  }

  function setBusy(busy) {
    state.busy = busy;
    $("busy").hidden = !busy;
    updateControls();
  }

  function updateCursorSize() {
    const px = state.tool === "line" ? Math.max(6, lineWidth() * displayScale()) : Number(sizeInput.value);
    cursor.style.width = cursor.style.height = `${px}px`;
  }

  // PNG of a version: the server's answer for results (already PNG), encoded once for the opened photo.
  const pngCache = new WeakMap();
  async function pngOf(canvas) {
    if (!pngCache.has(canvas)) pngCache.set(canvas, await toBlob(canvas));
    return pngCache.get(canvas);
  }

  async function refreshDownload() {
    const version = state.versions[currentVersion()];
    if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
    state.downloadUrl = null;
    updateControls();
    if (!version) return;
    const blob = await pngOf(version).catch(() => null);
    if (!blob || state.versions[currentVersion()] !== version || state.downloadUrl) return;
    state.downloadUrl = URL.createObjectURL(blob);
    downloadLink.href = state.downloadUrl;
    updateControls();
  }

  // ---------------------------------------------------------------- opening a photo
  const megapixels = (n) => (n / 1e6).toFixed(n < 1e6 ? 2 : n < 1e7 ? 1 : 0);

  function canvasFrom(source, w, h) {
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    ctx(c).drawImage(source, 0, 0);
    return c;
  }

  // PNG, JPEG or WebP by the file's first bytes (as the server decides), for files the browser gives no
  // type (no extension, say).
  async function sniffedType(file) {
    const b = new Uint8Array(await file.slice(0, 12).arrayBuffer());
    const ascii = (from, to) => String.fromCharCode(...b.slice(from, to));
    if (b[0] === 0x89 && ascii(1, 4) === "PNG") return "image/png";
    if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "image/jpeg";
    if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "image/webp";
    return "";
  }

  // An 8-bit PNG with an alpha channel (colour type 4 or 6 in its header). The canvas stores colours
  // premultiplied by alpha, so a transparent pixel's stored colour comes back black; such a photo is sent
  // to the server as the file itself, whose decoder keeps them, as the API and the CLI read them.
  async function pngWithAlpha(file) {
    const b = new Uint8Array(await file.slice(0, 26).arrayBuffer());
    return b.length === 26 && b[0] === 0x89 && b[1] === 0x50 && b[24] === 8 && (b[25] === 4 || b[25] === 6);
  }

  async function openFile(file) {
    if (!file || state.busy) return;
    const type = file.type || (await sniffedType(file));
    if (!/^image\/(png|jpeg|webp)$/.test(type)) {
      setMessage(`${file.name || "That file"} is not a PNG, JPEG or WebP image.`, "error");
      return;
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none" });
    } catch (e) {
      setMessage(`Could not read ${file.name}: the file looks corrupt.`, "error");
      return;
    }
    const lim = state.limits;
    if (lim && (bitmap.width * bitmap.height > lim.max_pixels || Math.max(bitmap.width, bitmap.height) > lim.max_side)) {
      setMessage(`${file.name} is ${bitmap.width} × ${bitmap.height}; this server accepts up to ` +
        `${megapixels(lim.max_pixels)} MP. Downscale it first.`, "error");
      bitmap.close();
      return;
    }
    for (const layer of [imageLayer, maskLayer, edgeLayer]) {
      layer.width = bitmap.width;
      layer.height = bitmap.height;
    }
    state.versions = [canvasFrom(bitmap, bitmap.width, bitmap.height)];
    bitmap.close();
    if (await pngWithAlpha(file)) pngCache.set(state.versions[0], file); // its own bytes, not the canvas's
    state.actions = [];
    state.redo = [];
    compareInput.value = 0;
    state.zoom = 1;
    $("dropzone").hidden = true;
    wrap.hidden = false;
    fit();
    render();
    refreshDownload();
    updateCursorSize();
    setMessage(`Opened ${file.name}. Paint over what to remove.`);
  }

  // ---------------------------------------------------------------- painting
  function toImage(e) {
    const r = imageLayer.getBoundingClientRect();
    return [((e.clientX - r.left) * width()) / r.width, ((e.clientY - r.top) * height()) / r.height];
  }

  function moveCursor(e) {
    const r = wrap.getBoundingClientRect();
    cursor.style.left = `${e.clientX - r.left}px`;
    cursor.style.top = `${e.clientY - r.top}px`;
  }

  // Two fingers pan and pinch-zoom; one finger paints. The canvas takes every touch (touch-action: none, so that a
  // finger paints instead of scrolling the page), so a touch screen, which has no wheel and no scroll bars to drag,
  // would otherwise have no way to the rest of a zoomed photo. A second finger cancels the stroke the first one
  // began; no stroke starts again until every finger is up.
  const touches = new Map(); // pointerId -> [clientX, clientY] of each finger on the canvas
  let gesture = null; // while two fingers are down: where they started (the photo point under their midpoint)
  let fingersAfterGesture = false; // a gesture happened and some finger is still down

  function twoFingers() {
    const [a, b] = [...touches.values()];
    return [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2, Math.max(1, Math.hypot(a[0] - b[0], a[1] - b[1]))];
  }

  function startGesture() {
    if (state.stroke) { state.stroke = null; redrawLayers(); } // the first finger's stroke was not meant
    fingersAfterGesture = true;
    if (!state.versions.length) return;
    const [x, y, dist] = twoFingers();
    const r = imageLayer.getBoundingClientRect();
    gesture = { fx: (x - r.left) / r.width, fy: (y - r.top) / r.height, zoom: state.zoom, dist };
  }

  // The zoom follows the fingers' distance (pinch) and the photo point that was under their midpoint at the start
  // stays under it (pan), both from the start of the gesture, so that whole-pixel scrolling adds up no error.
  function moveGesture() {
    const [x, y, dist] = twoFingers();
    const zoom = Math.min(maxZoom(), Math.max(1, (gesture.zoom * dist) / gesture.dist));
    if (zoom !== state.zoom) {
      state.zoom = zoom;
      fit();
      updateCursorSize();
      updateControls();
    }
    const r = imageLayer.getBoundingClientRect();
    stage.scrollLeft += r.left + gesture.fx * r.width - x;
    stage.scrollTop += r.top + gesture.fy * r.height - y;
  }

  function liftFinger(e) {
    if (e.pointerType !== "touch") return;
    touches.delete(e.pointerId);
    if (touches.size >= 2) startGesture(); // a third finger stays: the gesture goes on from the two now down
    else gesture = null;
    if (touches.size === 0) fingersAfterGesture = false;
  }

  wrap.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "touch") {
      touches.set(e.pointerId, [e.clientX, e.clientY]);
      if (touches.size === 2) startGesture();
      if (touches.size >= 2 || fingersAfterGesture) { // a gesture's finger: followed even off the canvas
        wrap.setPointerCapture(e.pointerId);
        e.preventDefault();
        return;
      }
    }
    if (state.busy || e.button !== 0 || !state.versions.length) return;
    wrap.setPointerCapture(e.pointerId);
    const p = toImage(e);
    state.stroke = { type: "stroke", tool: state.tool, width: strokeWidth(state.tool), points: [p], straight: false };
    drawStroke(state.stroke);
    e.preventDefault();
  });

  wrap.addEventListener("pointermove", (e) => {
    if (e.pointerType === "touch" && touches.has(e.pointerId)) {
      touches.set(e.pointerId, [e.clientX, e.clientY]);
      if (gesture) { moveGesture(); return; }
    }
    moveCursor(e);
    const s = state.stroke;
    if (!s) return;
    const p = toImage(e);
    if (s.tool === "line" && e.shiftKey) {
      s.points = [s.points[0], p]; // a straight structure line: redraw from scratch
      s.straight = true;
      redrawLayers();
      return;
    }
    const last = s.points[s.points.length - 1];
    if (Math.hypot(p[0] - last[0], p[1] - last[1]) < 0.5) return;
    s.points.push(p);
    drawStroke(s, s.points.length - 1);
  });

  function endStroke() {
    const s = state.stroke;
    if (!s) return;
    state.stroke = null;
    delete s.straight;
    pushAction(s);
    redrawLayers(); // the layers always equal a replay of the history (incremental segments anti-alias differently)
    updateControls();
    if (s.tool === "brush" && !$("status-message").classList.contains("error")) {
      setMessage("Press Inpaint (Enter) when the region is covered.");
    }
  }
  wrap.addEventListener("pointerup", (e) => { liftFinger(e); endStroke(); });
  wrap.addEventListener("pointercancel", (e) => { liftFinger(e); endStroke(); });
  wrap.addEventListener("pointerenter", () => { cursor.hidden = false; wrap.classList.add("painting"); });
  wrap.addEventListener("pointerleave", () => { cursor.hidden = true; wrap.classList.remove("painting"); });

  // ---------------------------------------------------------------- inpainting
  const toBlob = (canvas) => new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("could not encode the canvas"))), "image/png"));

  // Whether a layer still holds paint the server will read (opacity over one half), after the eraser:
  // the history may hold strokes whose pixels were all rubbed out.
  function hasPaint(layer) {
    const data = ctx(layer).getImageData(0, 0, layer.width, layer.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 127) return true;
    return false;
  }

  // A layer -> black/white PNG of the photo's size: white where the layer has paint.
  function exportBinary(layer) {
    const c = document.createElement("canvas");
    c.width = width();
    c.height = height();
    const g = ctx(c);
    g.drawImage(layer, 0, 0);
    g.globalCompositeOperation = "source-in";
    g.fillStyle = "#fff";
    g.fillRect(0, 0, c.width, c.height);
    g.globalCompositeOperation = "destination-over";
    g.fillStyle = "#000";
    g.fillRect(0, 0, c.width, c.height);
    return toBlob(c);
  }

  async function runInpaint() {
    if (state.busy || $("run").disabled) return;
    if (!hasPaint(maskLayer)) {
      setMessage("Nothing to fill: the strokes were erased. Paint over what to remove.", "error");
      return;
    }
    setBusy(true);
    setMessage("");
    const from = currentVersion();
    const t0 = performance.now();
    try {
      const form = new FormData();
      form.append("image", await pngOf(state.versions[from]), "image.png");
      form.append("mask", await exportBinary(maskLayer), "mask.png");
      if (activeStrokes().some((s) => s.tool === "line") && hasPaint(edgeLayer)) {
        form.append("edges", await exportBinary(edgeLayer), "edges.png");
      }
      if (state.blends) form.append("blend", $("blend").checked ? "poisson" : "none");
      let resp;
      try {
        resp = await fetch("api/v1/inpaint", { method: "POST", body: form });
      } catch (_) {
        throw new Error("Cannot reach the server. Is `ctsdg serve` still running?");
      }
      if (!resp.ok) {
        let message = `The server answered ${resp.status}.`;
        try { message = (await resp.json()).message || message; } catch (_) { /* not JSON */ }
        if (resp.status === 429) message = `Busy: ${message}`;
        throw new Error(message);
      }
      const png = await resp.blob();
      const bitmap = await createImageBitmap(png, { colorSpaceConversion: "none" });
      if (bitmap.width !== width() || bitmap.height !== height()) {
        throw new Error(`The server returned ${bitmap.width} × ${bitmap.height}, expected ${width()} × ${height()}.`);
      }
      const result = canvasFrom(bitmap, bitmap.width, bitmap.height);
      bitmap.close();
      pngCache.set(result, png); // the next run uploads the server's own PNG, no re-encoding
      state.versions.push(result);
      pushAction({ type: "run", from, version: state.versions.length - 1 });
      compareInput.value = 0;
      document.body.dataset.runs = String(Number(document.body.dataset.runs || 0) + 1);
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      setMessage(`Done in ${secs} s. Drag Before/After to compare; paint again to keep editing.`, "ok");
    } catch (e) {
      setMessage(e.message || String(e), "error");
      document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
    } finally {
      setBusy(false);
      render();
      refreshDownload();
    }
  }

  // ---------------------------------------------------------------- wiring
  $("file").addEventListener("change", (e) => { openFile(e.target.files[0]); e.target.value = ""; });
  for (const btn of document.querySelectorAll(".tool")) btn.addEventListener("click", () => setTool(btn.dataset.tool));
  sizeInput.addEventListener("input", () => { $("size-out").value = sizeInput.value; updateCursorSize(); });
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", clearStrokes);
  $("run").addEventListener("click", runInpaint);
  compareInput.addEventListener("input", renderImage);
  window.addEventListener("resize", () => { state.zoom = Math.min(state.zoom, maxZoom()); fit(); updateCursorSize(); updateControls(); });
  $("zoom-in").addEventListener("click", () => setZoom(state.zoom * 1.5));
  $("zoom-out").addEventListener("click", () => setZoom(state.zoom / 1.5));
  $("zoom-fit").addEventListener("click", () => setZoom(1));
  stage.addEventListener("wheel", (e) => {
    if (!(e.ctrlKey || e.metaKey) || !state.versions.length) return; // plain wheel scrolls
    e.preventDefault();
    setZoom(state.zoom * Math.exp(-e.deltaY * 0.002), e.clientX, e.clientY);
  }, { passive: false });

  // A photo dropped anywhere on the page opens (the browser would otherwise open the file in the tab,
  // dropping the session).
  document.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragover"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) stage.classList.remove("dragover"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("dragover");
    if (e.dataTransfer?.files?.length) openFile(e.dataTransfer.files[0]);
  });

  // A control clicked with the mouse gives the focus back, so that the shortcuts keep working after it
  // (a focused checkbox or button would take them); keyboard activation (detail 0) keeps the focus.
  document.addEventListener("click", (e) => {
    const control = e.target.closest?.("button, a, input[type=checkbox]");
    if (control && e.detail > 0) control.blur();
  });

  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) { e.preventDefault(); openFile(item.getAsFile()); }
  });

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t instanceof HTMLInputElement && !["range", "checkbox"].includes(t.type)) return; // typing in a field
    const k = e.key.toLowerCase();
    if ((k === "enter" || k === " ") && (t instanceof HTMLButtonElement || t instanceof HTMLAnchorElement)) return;
    if ((e.ctrlKey || e.metaKey) && k === "z") { e.preventDefault(); e.shiftKey ? redo() : undo(); return; }
    if ((e.ctrlKey || e.metaKey) && k === "y") { e.preventDefault(); redo(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (k === "b") setTool("brush");
    else if (k === "e") setTool("eraser");
    else if (k === "l") setTool("line");
    else if (k === "o") $("file").click();
    else if (k === "enter") runInpaint();
    else if (k === "+" || k === "=") setZoom(state.zoom * 1.5);
    else if (k === "-" || k === "_") setZoom(state.zoom / 1.5);
    else if (k === "0") setZoom(1);
    else if (k === "[" || k === "]") {
      sizeInput.value = Number(sizeInput.value) + (k === "]" ? 4 : -4);
      sizeInput.dispatchEvent(new Event("input"));
    }
  });

  // Model and limits, shown in the status bar.
  fetch("api/v1/model").then((r) => (r.ok ? r.json() : Promise.reject(r.status))).then((d) => {
    state.limits = d.limits || null;
    // The Blend switch, only where the model reports a blend (so it takes the field); it starts at the
    // server's --blend.
    state.blends = d.blend === "poisson" || d.blend === "none";
    $("blend-switch").hidden = !state.blends;
    if (state.blends) $("blend").checked = d.blend === "poisson";
    const arch = typeof d.architecture === "string" ? d.architecture : "";
    const cfg = d.model_config || {};
    const parts = [arch.startsWith("CTSDG") ? "CTSDG" : arch || "unknown model"];
    if (cfg.base_width) parts.push(`width ${cfg.base_width}`);
    if (d.parameters) parts.push(`${(d.parameters / 1e6).toFixed(1)} M params`);
    if (d.checkpoint_sha256) parts.push(`sha256 ${String(d.checkpoint_sha256).slice(0, 12)}`);
    const el = $("status-model");
    el.textContent = `Model: ${parts.join(" · ")}`;
    el.title = [arch, d.checkpoint_sha256 ? `checkpoint sha256 ${d.checkpoint_sha256}` : "",
      d.mask_convention ? `mask: ${d.mask_convention}` : ""].filter(Boolean).join("\n");
  }).catch(() => { $("status-model").textContent = "Model: unavailable"; });

  setTool("brush");
  updateControls();
})();
