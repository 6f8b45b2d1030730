"use strict";
// r1jax report: curves, eval tables, flags and a rollout browser drawn from the JSON in #report-data.
// No libraries, no network: everything below is plain DOM and SVG.
(function () {
  function showError(msg) {
    let box = document.getElementById("js-error");
    if (!box) {
      box = document.createElement("pre");
      box.id = "js-error";
      document.body.insertBefore(box, document.body.firstChild);
    }
    box.textContent += "report script error: " + msg + "\n";
  }
  window.addEventListener("error", function (e) { showError(e.message + " (line " + e.lineno + ")"); });

  const SVGNS = "http://www.w3.org/2000/svg";
  const DATA = JSON.parse(document.getElementById("report-data").textContent);

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "cls") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }
  function sv(tag, attrs) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    return node;
  }
  function short(x, span) {  // enough digits that the two labels of a narrow range differ
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e4 || a < 1e-2)) return x.toExponential(1);
    const digits = Math.max(3, Math.min(7, 2 + Math.ceil(Math.log10(Math.max(a, 1e-12) / Math.max(span, 1e-12)))));
    return String(Number(x.toPrecision(digits)));
  }
  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  }

  // ---------------------------------------------------------------- base64 float16 / uint16 arrays
  function bytes(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function half(h) {
    const sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return sign * Math.pow(2, -14) * (f / 1024);
    if (e === 31) return f ? NaN : sign * Infinity;
    return sign * Math.pow(2, e - 15) * (1 + f / 1024);
  }
  function f16(b64) {
    const u = bytes(b64), out = new Float32Array(u.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = half(u[2 * i] | (u[2 * i + 1] << 8));
    return out;
  }
  function u16(b64) {
    const u = bytes(b64), out = new Uint16Array(u.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = u[2 * i] | (u[2 * i + 1] << 8);
    return out;
  }

  // ---------------------------------------------------------------- flags
  function rolloutLink(id) {
    const [step, row] = id.split(":");
    const embedded = DATA.rollouts.some(function (r) { return String(r.step) === step; });
    if (!embedded) return el("span", { cls: "muted", title: "step not embedded (raise --max-steps)", text: id });
    return el("a", { href: "#r-" + step + "-" + row, text: id });
  }
  function flagsSection(app) {
    app.appendChild(el("h2", { text: "Flags" }));
    if (!DATA.flags.length) {
      app.appendChild(el("p", { cls: "muted", text: "No RL phase in this run." }));
      return;
    }
    const fired = DATA.flags.filter(function (f) { return f.fired; });
    app.appendChild(el("p", { text: fired.length + " of " + DATA.flags.length + " checks fired." }));
    const quiet = el("p", { cls: "quiet" }, [el("span", { cls: "muted", text: "quiet: " })]);
    for (const f of DATA.flags) {
      if (!f.fired) quiet.appendChild(el("span", { cls: "badge ok", id: "flag-" + f.phase + "-" + f.name, title: f.detail,
        text: f.phase + ": " + f.title }));
    }
    if (!fired.length) { app.appendChild(quiet); return; }
    const table = el("table", { cls: "flags" }, [el("tr", {}, ["", "phase", "check", "step", "what", "completions"]
      .map(function (h) { return el("th", { cls: "l", text: h }); }))]);
    for (const f of fired) {
      const links = el("td", { cls: "l" });
      f.evidence.forEach(function (id, j) { if (j) links.appendChild(document.createTextNode(" ")); links.appendChild(rolloutLink(id)); });
      table.appendChild(el("tr", { id: "flag-" + f.phase + "-" + f.name }, [
        el("td", {}, [el("span", { cls: "badge " + (f.fired ? "fired" : "ok"), text: f.fired ? "fired" : "ok" })]),
        el("td", { cls: "l", text: f.phase }), el("td", { cls: "l", text: f.title }),
        el("td", { text: f.step === null ? "" : String(f.step) }), el("td", { cls: "l", text: f.detail }), links]));
    }
    app.appendChild(table);
    app.appendChild(quiet);
  }

  // ---------------------------------------------------------------- curves
  const FIRST = ["reward/mean", "reward/accuracy", "reward/format", "eval/pass@1", "completion/length_mean",
    "completion/truncated_frac", "entropy", "kl", "clip_low_frac", "clip_high_frac", "ratio_mean", "loss"];
  function metricOrder(a, b) {
    const ia = FIRST.indexOf(a), ib = FIRST.indexOf(b);
    if (ia >= 0 || ib >= 0) return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function chart(name, xs, ys, marks) {
    const W = 240, H = 96, L = 42, R = 6, T = 6, B = 14;
    const box = el("div", { cls: "chart" }, [el("div", { cls: "name", title: name, text: name })]);
    const svg = sv("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", "data-metric": name });
    box.appendChild(svg);
    const pts = [];
    xs.forEach(function (x, i) { if (ys[i] !== null && Number.isFinite(ys[i])) pts.push([x, ys[i]]); });
    svg.appendChild(sv("rect", { class: "frame", x: L, y: T, width: W - L - R, height: H - T - B }));
    if (!pts.length) {
      svg.appendChild(sv("text", { class: "axis", x: L + 4, y: H / 2, text: "no finite values" }));
      return box;
    }
    let x0 = Math.min.apply(null, pts.map(function (p) { return p[0]; }));
    let x1 = Math.max.apply(null, pts.map(function (p) { return p[0]; }));
    let y0 = Math.min.apply(null, pts.map(function (p) { return p[1]; }));
    let y1 = Math.max.apply(null, pts.map(function (p) { return p[1]; }));
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 0.5; y0 -= d; y1 += d; }
    const px = function (x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
    const py = function (y) { return T + (1 - (y - y0) / (y1 - y0)) * (H - T - B); };
    for (const m of marks) {
      if (m.step >= x0 && m.step <= x1) {
        const line = sv("line", { class: "flagline", x1: px(m.step), x2: px(m.step), y1: T, y2: H - B });
        line.appendChild(sv("title", { text: m.title + " (step " + m.step + ")" }));
        svg.appendChild(line);
      }
    }
    let d = "";
    xs.forEach(function (x, i) {
      const y = ys[i];
      if (y === null || !Number.isFinite(y)) { d += " "; return; }
      d += (d === "" || d.endsWith(" ") ? "M" : "L") + px(x).toFixed(1) + " " + py(y).toFixed(1);
    });
    svg.appendChild(sv("path", { class: "curve", d: d.replace(/ +/g, " ").trim() }));
    if (pts.length <= 12) pts.forEach(function (p) { svg.appendChild(sv("circle", { class: "dot", cx: px(p[0]), cy: py(p[1]), r: 2 })); });
    svg.appendChild(sv("text", { class: "axis", x: L - 2, y: T + 8, "text-anchor": "end", text: short(y1, y1 - y0) }));
    svg.appendChild(sv("text", { class: "axis", x: L - 2, y: H - B, "text-anchor": "end", text: short(y0, y1 - y0) }));
    svg.appendChild(sv("text", { class: "axis", x: L, y: H - 2, text: String(x0) }));
    svg.appendChild(sv("text", { class: "axis", x: W - R, y: H - 2, "text-anchor": "end", text: String(x1) }));
    const hover = sv("text", { class: "hover", x: W - R - 2, y: T + 10, "text-anchor": "end" });
    svg.appendChild(hover);
    svg.addEventListener("mousemove", function (e) {
      const r = svg.getBoundingClientRect(), x = x0 + ((e.clientX - r.left) / r.width * W - L) / (W - L - R) * (x1 - x0);
      let best = pts[0];
      for (const p of pts) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
      hover.textContent = "step " + best[0] + ": " + fmt(best[1]);
    });
    svg.addEventListener("mouseleave", function () { hover.textContent = ""; });
    return box;
  }
  function curvesSection(app) {
    app.appendChild(el("h2", { text: "Curves by phase" }));
    for (const ph of DATA.phases) {
      const keys = Object.keys(ph.metrics).sort(metricOrder);
      const steps = [].concat.apply([], keys.map(function (k) { return ph.metrics[k][0]; }));
      const lo = Math.min.apply(null, steps), hi = Math.max.apply(null, steps);
      const det = el("details", ph.rl ? { open: "" } : {}, [el("summary", {
        text: ph.name + " — " + keys.length + " metrics, steps " + lo + (hi > lo ? "–" + hi : "") })]);
      if (keys.every(function (k) { return ph.metrics[k][0].length === 1; })) {
        const t = el("table", {}, [el("tr", {}, keys.map(function (k) { return el("th", { text: k }); }))]);
        t.appendChild(el("tr", {}, keys.map(function (k) { return el("td", { text: fmt(ph.metrics[k][1][0]) }); })));
        det.appendChild(el("div", { cls: "scroll" }, [t]));
      } else {
        const marks = DATA.flags.filter(function (f) { return f.fired && f.phase === ph.name; });
        const grid = el("div", { cls: "grid" }), evalGrid = el("div", { cls: "grid" });
        let evals = 0;
        for (const k of keys) {
          const inner = k.startsWith("eval/") && FIRST.indexOf(k) < 0;
          evals += inner ? 1 : 0;
          (inner ? evalGrid : grid).appendChild(chart(k, ph.metrics[k][0], ph.metrics[k][1], marks));
        }
        det.appendChild(grid);
        if (evals) det.appendChild(el("details", {}, [el("summary", { text: "eval/… curves (" + evals + ")" }), evalGrid]));
      }
      app.appendChild(det);
    }
  }
  function evalSection(app) {
    if (!DATA.evals.length) return;
    app.appendChild(el("h2", { text: "Evaluations" }));
    for (const t of DATA.evals) {
      app.appendChild(el("h3", { text: t.phase }));
      const table = el("table", {}, [el("tr", {}, ["step"].concat(t.columns).map(function (c) { return el("th", { text: c }); }))]);
      for (const row of t.rows) table.appendChild(el("tr", {}, row.map(function (v, j) { return el("td", { text: j ? fmt(v) : String(v) }); })));
      app.appendChild(el("div", { cls: "scroll" }, [table]));
    }
  }

  // ---------------------------------------------------------------- rollout browser
  const CHANNELS = {
    logp: { label: "log-prob (sampler)", legend: "linear-gradient(90deg,#fff,rgba(214,39,40,.85))", ends: ["0", "≤ −4"] },
    ent: { label: "entropy", legend: "linear-gradient(90deg,#fff,rgba(123,63,228,.75))", ends: ["0", "≥ 3 nats"] },
    ratio: { label: "ratio π_new/π_old", legend: "linear-gradient(90deg,rgba(31,119,180,.8),#fff,rgba(214,39,40,.8))", ends: ["≤ ×0.6", "≥ ×1.65"] },
    adv: { label: "advantage", legend: "linear-gradient(90deg,rgba(214,39,40,.75),#fff,rgba(44,160,44,.75))", ends: ["≤ −2", "≥ +2"] },
    kl: { label: "log π_old/π_ref", legend: "linear-gradient(90deg,#fff,rgba(255,127,14,.8))", ends: ["0", "≥ 1"] },
  };
  function clamp01(x) { return Math.max(0, Math.min(1, x)); }
  function colour(channel, t, row) {
    if (channel === "logp") return "rgba(214,39,40," + (0.85 * clamp01(-row.lp[t] / 4)).toFixed(3) + ")";
    if (channel === "ent") return "rgba(123,63,228," + (0.75 * clamp01(row.en[t] / 3)).toFixed(3) + ")";
    if (channel === "kl") return "rgba(255,127,14," + (0.8 * clamp01(Math.abs(row.ol[t] - row.rf[t]))).toFixed(3) + ")";
    if (channel === "ratio") {
      const lr = Math.log(Math.max(row.ra[t], 1e-6)), a = (0.8 * clamp01(Math.abs(lr) / 0.5)).toFixed(3);
      return lr >= 0 ? "rgba(214,39,40," + a + ")" : "rgba(31,119,180," + a + ")";
    }
    const a = (0.75 * clamp01(Math.abs(row.adv) / 2)).toFixed(3);
    return row.adv >= 0 ? "rgba(44,160,44," + a + ")" : "rgba(214,39,40," + a + ")";
  }
  function decoded(row) {
    if (!row.lp) {
      row.lp = f16(row.logp); row.en = f16(row.ent); row.ra = f16(row.ratio); row.ol = f16(row.old);
      row.rf = row.ref ? f16(row.ref) : null; row.ln = u16(row.lens);
    }
    return row;
  }
  const FILTERS = {
    all: function () { return true; }, correct: function (r) { return r.correct === true; },
    wrong: function (r) { return r.correct === false; }, truncated: function (r) { return r.trunc; },
    clipped: function (r) { return r.clipped; },
  };
  const state = { index: DATA.rollouts.length - 1, channel: "logp", filter: "all" };

  function tokensOf(rec, row) {
    const div = el("div", { cls: "text" });
    decoded(row);
    let pos = 0;
    for (let t = 0; t < row.n; t++) {
      const piece = row.text.slice(pos, pos + row.ln[t]);
      pos += row.ln[t];
      const span = el("span", { cls: "tok", text: piece });
      span.style.background = colour(state.channel, t, row);
      if (row.ra[t] < 1 - rec.eps[0] || row.ra[t] > 1 + rec.eps[1]) span.className = "tok out";
      span.title = JSON.stringify(piece) + "  log π " + fmt(row.lp[t]) + "  old " + fmt(row.ol[t]) +
        (row.rf ? "  ref " + fmt(row.rf[t]) : "") + "  ratio " + fmt(row.ra[t]) + "  H " + fmt(row.en[t]);
      div.appendChild(span);
    }
    if (pos < row.text.length) div.appendChild(document.createTextNode(row.text.slice(pos)));
    return div;
  }
  function rowElement(rec, row) {
    const meta = el("div", { cls: "meta" }, [
      el("span", { text: "#" + row.i }),
      el("span", { cls: row.correct === true ? "good" : row.correct === false ? "bad" : "", text: row.correct === true ? "✓ correct" : row.correct === false ? "✗ wrong" : "" }),
      el("span", { text: "reward " + fmt(row.reward) }), el("span", { text: "advantage " + fmt(row.adv) }),
      el("span", { text: rec.rewardNames.map(function (n, k) { return n + " " + fmt(row.values[k]); }).join(" · ") }),
      el("span", { cls: "muted", text: row.n + " tokens" })]);
    if (row.trunc) meta.appendChild(el("span", { cls: "badge warn", text: "truncated" }));
    if (row.clipped) meta.appendChild(el("span", { cls: "badge fired", text: "ratio clipped" }));
    return el("div", { cls: "row", id: "r-" + rec.step + "-" + row.i }, [meta, tokensOf(rec, row)]);
  }
  function renderRollouts() {
    const box = document.getElementById("rollout-list");
    box.textContent = "";
    const rec = DATA.rollouts[state.index];
    const legend = document.getElementById("legend");
    const ch = CHANNELS[state.channel];
    legend.textContent = "";
    legend.appendChild(document.createTextNode(ch.ends[0]));
    legend.appendChild(el("span", { cls: "legend", style: "background:" + ch.legend }));
    legend.appendChild(document.createTextNode(ch.ends[1] + (state.channel === "ratio" ? "  (underlined: outside the clip range)" : "")));
    box.appendChild(el("p", { cls: "muted", text: "phase " + rec.phase + ", phase step " + rec.phaseStep + ": " +
      rec.rows.length + " of " + rec.rowsTotal + " rows saved, groups of " + rec.G + ", sorted by reward" }));
    let shown = 0;
    for (let g = 0; g < rec.prompts.length; g++) {
      const rows = rec.rows.filter(function (r) { return r.g === g && FILTERS[state.filter](r); });
      if (!rows.length) continue;
      rows.sort(function (a, b) { return (b.reward || 0) - (a.reward || 0); });
      const all = rec.rows.filter(function (r) { return r.g === g; }).map(function (r) { return r.reward || 0; });
      const mean = all.reduce(function (a, b) { return a + b; }, 0) / all.length;
      const spread = Math.max.apply(null, all) - Math.min.apply(null, all);
      const group = el("div", { cls: "group" }, [
        el("div", { cls: "meta" }, [el("b", { text: "group " + g }), el("span", { text: rec.answers[g] ? "gold " + rec.answers[g] : "" }),
          el("span", { text: "reward mean " + fmt(mean) }), el("span", { cls: spread === 0 ? "badge warn" : "", text: "spread " + fmt(spread) })]),
        el("div", { cls: "prompt", title: rec.prompts[g], text: rec.prompts[g] })]);
      for (const row of rows) { group.appendChild(rowElement(rec, row)); shown++; }
      box.appendChild(group);
    }
    if (!shown) box.appendChild(el("p", { text: "No completion of this step matches the filter." }));
  }
  function select(id, options, value, onchange) {
    const s = el("select", { id: id }, options.map(function (o) { return el("option", { value: o[0], text: o[1] }); }));
    s.value = String(value);
    s.addEventListener("change", function () { onchange(s.value); renderRollouts(); });
    return s;
  }
  function rolloutSection(app) {
    app.appendChild(el("h2", { text: "Rollouts" }));
    if (!DATA.rollouts.length) {
      app.appendChild(el("p", { cls: "muted", text: "No saved rollouts in this workdir (RLPhase.rollout_log.every = 0, or no RL phase)." }));
      return;
    }
    const channels = Object.keys(CHANNELS).filter(function (c) { return c !== "kl" || DATA.rollouts[0].rows[0].ref; });
    const note = DATA.savedSteps.length > DATA.rollouts.length ? " (" + DATA.rollouts.length + " of " + DATA.savedSteps.length + " saved steps embedded)" : "";
    app.appendChild(el("div", { cls: "controls" }, [
      el("label", {}, ["step ", select("step-select", DATA.rollouts.map(function (r, i) { return [i, r.step + " (" + r.phase + " " + r.phaseStep + ")"]; }), state.index, function (v) { state.index = Number(v); })]),
      el("label", {}, ["colour by ", select("channel-select", channels.map(function (c) { return [c, CHANNELS[c].label]; }), state.channel, function (v) { state.channel = v; })]),
      el("label", {}, ["show ", select("filter-select", Object.keys(FILTERS).map(function (f) { return [f, f]; }), state.filter, function (v) { state.filter = v; })]),
      el("span", { id: "legend" }), el("span", { cls: "muted", text: note })]));
    app.appendChild(el("div", { id: "rollout-list" }));
    renderRollouts();
  }
  function goToHash() {  // #r-STEP-ROW: that completion; #step=S&colour=C&show=F: that view
    const view = new URLSearchParams(location.hash.slice(1));
    if (view.has("step") || view.has("colour") || view.has("show")) {
      const index = DATA.rollouts.findIndex(function (r) { return String(r.step) === view.get("step"); });
      if (index >= 0) state.index = index;
      if (CHANNELS[view.get("colour")]) state.channel = view.get("colour");
      if (FILTERS[view.get("show")]) state.filter = view.get("show");
      document.getElementById("step-select").value = String(state.index);
      document.getElementById("channel-select").value = state.channel;
      document.getElementById("filter-select").value = state.filter;
      renderRollouts();
      return;
    }
    const m = /^#r-(\d+)-(\d+)$/.exec(location.hash);
    if (!m) return;
    const index = DATA.rollouts.findIndex(function (r) { return String(r.step) === m[1]; });
    if (index < 0) return;
    state.index = index; state.filter = "all";
    document.getElementById("step-select").value = String(index);
    document.getElementById("filter-select").value = "all";
    renderRollouts();
    const target = document.getElementById("r-" + m[1] + "-" + m[2]);
    if (target) { target.classList.add("target"); target.scrollIntoView({ block: "center" }); }
  }

  const app = document.getElementById("app");
  app.textContent = "";
  app.appendChild(el("p", { cls: "muted", text: DATA.workdir + " · generated " + DATA.generated }));
  flagsSection(app);
  curvesSection(app);
  rolloutSection(app);
  evalSection(app);
  window.addEventListener("hashchange", goToHash);
  if (DATA.rollouts.length) goToHash();
  document.body.appendChild(el("div", { id: "report-ready", hidden: "" }));
})();
