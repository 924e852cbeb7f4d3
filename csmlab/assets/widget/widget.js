// The notebook widget's view (anywidget). Python prepends duplex-audio.js to this file, so DuplexAudio,
// FRAME_MS and the other exports are in scope: anywidget loads one module and it cannot import siblings.
//
// Page -> kernel (model.send): {type: "start", brain}, {type: "stop"}, {type: "frame"} + one binary
// frame, {type: "page_stats", stats} every second. Kernel -> page: {type: "step", ...} + one binary
// system frame (msg:custom); status, error, text and stats arrive as synced traits.

const FIGURES = [
  ["roundTrip", "round trip", "capture of a frame's first sample -> the matching system frame starts to play"],
  ["capture", "capture buffer", "filling one 80 ms frame"],
  ["transport", "transport", "page -> kernel -> page, without the kernel's time"],
  ["kernel", "kernel", "arrival in the kernel -> reply sent (queue + compute)"],
  ["playback", "playback buffer", "arrival in the player -> start of playback (jitter margin)"],
];

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function ms(x) {
  return Number.isFinite(x) ? `${x.toFixed(0)} ms` : "–";
}

function meter(label) {
  const row = h("div", "csmlab-meter");
  const bar = h("div", "csmlab-meter-bar");
  const fill = h("div", "csmlab-meter-fill");
  const value = h("span", "csmlab-meter-db", "–");
  bar.append(fill);
  row.append(h("span", "csmlab-meter-label", label), bar, value);
  return {
    row,
    set(db) {
      fill.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
      value.textContent = `${db.toFixed(0)} dBFS`;
    },
  };
}

function kernelCompute(stats) {
  const layers = (stats.session && stats.session.compute_ms) || {};
  const parts = Object.entries(layers).map(([k, v]) => `${k} ${Number(v.p50 ?? v).toFixed(1)}`);
  return parts.length ? `${parts.join(" · ")} ms (p50)` : "–";
}

function render({ model, el }) {
  const root = h("div", "csmlab-duplex");
  const top = h("div", "csmlab-top");
  const select = h("select", "csmlab-brain");
  for (const b of model.get("brains")) select.append(new Option(b, b, false, b === model.get("brain")));
  const button = h("button", "csmlab-start", "Start");
  const status = h("span", "csmlab-status");
  top.append(h("b", "", "csmlab live duplex"), select, button, status);
  const mic = meter("mic");
  const sys = meter("system");
  const figures = h("table", "csmlab-figures");
  const cells = {};
  for (const [key, label, title] of FIGURES) {
    const row = figures.insertRow();
    row.title = title;
    row.insertCell().textContent = label;
    cells[key] = row.insertCell();
  }
  const counts = h("div", "csmlab-counts");
  const compute = h("div", "csmlab-compute");
  const text = h("div", "csmlab-text");
  const error = h("div", "csmlab-error");
  root.append(top, mic.row, sys.row, figures, compute, counts, text, error);
  el.append(root);

  let audio = null;
  let statsTimer = null;

  const drawState = () => {
    status.textContent = model.get("status");
    status.dataset.status = model.get("status");
    error.textContent = model.get("error");
    text.textContent = model.get("text") || "(the brain's text appears here)";
    compute.textContent = `kernel compute per step: ${kernelCompute(model.get("stats"))}`;
    if (audio) audio.sending = model.get("status") === "running";
    drawCounts();
  };

  const drawCounts = () => {
    const k = model.get("stats");
    const p = audio ? audio.stats() : null;
    const parts = [
      `frames sent ${p ? p.counts.sent : 0}`,
      `kernel received ${k.received ?? 0}`,
      `dropped ${k.dropped ?? 0}`,
      `late ${k.late ?? 0}`,
      `concealed ${k.concealed ?? 0}`,
      `malformed ${k.malformed ?? 0}`,
      `underruns ${p ? p.player.underruns : 0}`,
    ];
    counts.textContent = parts.join(" · ");
  };

  let drawPending = false;
  const drawStats = () => {
    // at most one redraw per animation frame: the page's main thread also carries every audio frame
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      if (audio) drawFigures(audio.stats());
    });
  };

  const drawFigures = (s) => {
    mic.set(s.levels.input);
    sys.set(s.levels.output);
    for (const [key] of FIGURES) cells[key].textContent = `${ms(s.latency[key].median)} (last ${ms(s.latency[key].last)})`;
    drawCounts();
  };

  const start = async () => {
    button.disabled = true;
    try {
      audio = new DuplexAudio({
        send: (buffer) => model.send({ type: "frame" }, undefined, [buffer]),
        onUpdate: drawStats,
        jitterMs: model.get("jitter_ms"),
      });
      audio.sending = false; // until the kernel's session is running
      await audio.start();
      root.duplex = audio; // for tests and the console: root.duplex.stats(), root.duplex.recording()
      model.send({ type: "start", brain: select.value });
      statsTimer = setInterval(() => model.send({ type: "page_stats", stats: audio.stats() }), 1000);
      button.textContent = "Stop";
    } catch (e) {
      error.textContent = `could not start the microphone: ${e.name}: ${e.message}`;
      stop();
    }
    button.disabled = false;
  };

  const stop = () => {
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
    if (audio) {
      model.send({ type: "page_stats", stats: audio.stats() });
      audio.stop();
      model.send({ type: "stop" });
    }
    audio = null;
    button.textContent = "Start";
  };

  button.addEventListener("click", () => (audio ? stop() : start()));
  select.addEventListener("change", () => {
    model.set("brain", select.value);
    model.save_changes();
  });
  const onCustom = (msg, buffers) => {
    if (msg.type !== "step" || !audio) return;
    try {
      audio.receive(buffers[0]);
    } catch (e) {
      error.textContent = `bad frame from the kernel: ${e.message}`;
    }
  };
  model.on("msg:custom", onCustom);
  for (const name of ["status", "error", "text", "stats"]) model.on(`change:${name}`, drawState);
  drawState();

  return () => {
    // the view is removed (cell cleared, notebook closed): release the mic and stop the kernel's worker
    stop();
    model.off("msg:custom", onCustom);
    for (const name of ["status", "error", "text", "stats"]) model.off(`change:${name}`, drawState);
  };
}

export default { render };
