// The notebook widget's view (anywidget). Python prepends duplex-audio.js to this file, so DuplexAudio,
// FRAME_MS and the other exports are in scope: anywidget loads one module and it cannot import siblings.
//
// Page -> kernel (model.send): {type: "start", brain}, {type: "stop"}, {type: "frame"} + one binary
// frame, {type: "page_stats", stats} every second. Kernel -> page: {type: "step", ...} + one binary
// system frame (msg:custom); status, error, text and stats arrive as synced traits.

const FIGURES = [
  ["roundTrip", "round trip", "capture of a frame's first sample -> the reply to that frame starts to play"],
  ["capture", "capture buffer", "filling one 80 ms frame"],
  ["transport", "transport", "page -> kernel -> page, without the kernel's time"],
  ["kernel", "kernel", "arrival in the kernel -> reply sent (queue + compute)"],
  ["playback", "playback buffer", "arrival in the player -> start of playback (adaptive jitter buffer)"],
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

/** The three figures a learner asks about, from the page's medians and the kernel's report (ms). */
export function headline(page, stats, brainDelayMs) {
  const m = (k) => page.latency[k].median;
  const d = page.device || {};
  const device = (d.baseLatencyMs || 0) + (d.outputLatencyMs || 0) + (d.inputLatencyMs || 0);
  const added = m("transport") + m("kernel") + m("playback");
  const session = (stats && stats.session) || {};
  const response = session.latency_ms && session.latency_ms.response;
  return {
    mouthToEar: m("roundTrip") + brainDelayMs + device, // what you hear: your echo, or the reply to your frame
    added, // the pipeline's own: transport + kernel + playback buffer
    device,
    response: response ? response.p50 + m("roundTrip") - FRAME_MS + device : NaN, // end of speech -> first reply heard
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
  const notice = h("div", "csmlab-notice");
  const mic = meter("mic");
  const sys = meter("system");
  const heads = h("table", "csmlab-headline");
  const headCells = {};
  for (const [key, label, title] of [
    ["mouthToEar", "you hear it after (mouth to ear)", "round trip + the brain's own delay + the device's latency (AudioContext baseLatency + outputLatency)"],
    ["added", "pipeline adds", "transport + kernel + playback buffer (medians)"],
    ["response", "response time", "end of your speech -> first reply audio heard (answering brains)"],
  ]) {
    const row = heads.insertRow();
    row.title = title;
    row.insertCell().textContent = label;
    headCells[key] = row.insertCell();
  }
  const figures = h("table", "csmlab-figures");
  const cells = {};
  for (const [key, label, title] of FIGURES) {
    const row = figures.insertRow();
    row.title = title;
    row.insertCell().textContent = label;
    cells[key] = row.insertCell();
  }
  const player = h("div", "csmlab-counts csmlab-player");
  const counts = h("div", "csmlab-counts");
  const compute = h("div", "csmlab-compute");
  const text = h("div", "csmlab-text");
  const error = h("div", "csmlab-error");
  root.append(top, notice, mic.row, sys.row, heads, figures, compute, player, counts, text, error);
  el.append(root);

  let audio = null;
  let last = null; // the page's last stats: the counts stay on screen after Stop
  let statsTimer = null;
  let firstError = ""; // a later failure (e.g. the socket closing) must not hide the first one

  const showError = (message) => {
    if (!firstError) firstError = message;
    error.textContent = firstError;
  };

  const drawState = () => {
    const overload = model.get("overload") || {};
    const state = model.get("status") === "running" && overload.state && overload.state !== "ok" ? overload.state : model.get("status");
    status.textContent = state;
    status.dataset.status = state;
    notice.textContent = overload.state && overload.state !== "ok" ? overload.message : "";
    notice.dataset.state = overload.state || "ok";
    error.textContent = firstError || model.get("error");
    text.textContent = model.get("text") || "(the brain's text appears here)";
    compute.textContent = `kernel compute per step: ${kernelCompute(model.get("stats"))}`;
    if (audio) audio.sending = model.get("status") === "running";
    drawCounts();
  };

  const drawCounts = () => {
    const k = model.get("stats");
    const p = audio ? audio.stats() : last;
    const parts = [
      `frames sent ${p ? p.counts.sent : 0}`,
      `kernel received ${k.received ?? 0}`,
      `dropped ${k.dropped ?? 0} (${((k.dropped ?? 0) * FRAME_MS).toFixed(0)} ms)`,
      `late ${k.late ?? 0}`,
      `concealed ${k.concealed ?? 0}`,
      `malformed ${k.malformed ?? 0}`,
    ];
    counts.textContent = parts.join(" · ");
    if (p) {
      const b = p.player;
      player.textContent = `playback buffer: target ${ms(b.targetMs)}, now ${ms(b.bufferedMs)} · shed ${ms(b.shedMs)} ` +
        `(${b.shedCuts} cuts) · dropped ${ms(b.droppedMs)} · underruns ${b.underruns} (${ms(b.underrunMs)} silence)`;
    }
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
    last = s;
    mic.set(s.levels.input);
    sys.set(s.levels.output);
    for (const [key] of FIGURES) cells[key].textContent = `${ms(s.latency[key].median)} (last ${ms(s.latency[key].last)})`;
    const head = headline(s, model.get("stats"), model.get("brain_delay_ms"));
    headCells.mouthToEar.textContent = `${ms(head.mouthToEar)} (brain's delay ${ms(model.get("brain_delay_ms"))}, device ${ms(head.device)})`;
    headCells.added.textContent = ms(head.added);
    headCells.response.textContent = Number.isFinite(head.response) ? ms(head.response) : "– (no reply yet, or a brain that does not answer)";
    drawCounts();
  };

  const start = async () => {
    button.disabled = true;
    firstError = "";
    error.textContent = "";
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
      select.disabled = true; // one brain per run: Stop, choose, Start
    } catch (e) {
      showError(microphoneError(e));
      stop();
    }
    button.disabled = false;
  };

  const stop = () => {
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
    if (audio) {
      last = audio.stats();
      model.send({ type: "page_stats", stats: last });
      audio.stop();
      model.send({ type: "stop" });
    }
    audio = null;
    button.textContent = "Start";
    select.disabled = false;
    drawCounts();
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
  const traits = ["status", "error", "text", "stats", "overload"];
  for (const name of traits) model.on(`change:${name}`, drawState);
  drawState();

  return () => {
    // the view is removed (cell cleared, notebook closed): release the mic and stop the kernel's worker
    stop();
    model.off("msg:custom", onCustom);
    for (const name of traits) model.off(`change:${name}`, drawState);
  };
}

export default { render };
