// trainer web: the pages (runs list, one run, compare, one sweep), drawn from the JSON API and
// Server-Sent Events. No build step. Everything a run carries is inserted as text, never HTML.
// Hooks for tests and the benchmark: window.chartData (what each chart draws),
// window.receivedPoints (every metric point received, with its stream entry id) and
// window.drawLog ({id, at}: when the chart holding a point was drawn, Date.now() ms).
"use strict";

(function () {
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
  window.chartData = {};
  window.receivedPoints = [];
  window.drawLog = [];
  window.streamOpens = 0;
  // A split keeps its colour on every chart: train first, then in order of appearance.
  const splitColors = new Map([["train", COLORS[0]], ["val", COLORS[1]]]);
  function colorOf(name) {
    if (!splitColors.has(name)) splitColors.set(name, COLORS[splitColors.size % COLORS.length]);
    return splitColors.get(name);
  }

  // -- small helpers -----------------------------------------------------------------------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function $(id) { return document.getElementById(id); }

  function fill(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) =>
      el("tr", {}, cells.map((cell) => cell instanceof Node && cell.tagName === "TD" ? cell : el("td", {}, [cell])))));
  }

  function number(value) {
    if (value === null || value === undefined) return "-";
    if (!isFinite(value)) return String(value);
    const size = Math.abs(value);
    if (value !== 0 && (size >= 1e5 || size < 1e-3)) return value.toPrecision(4);
    return value.toFixed(4);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + "s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + "m " + String(seconds % 60).padStart(2, "0") + "s";
    return Math.floor(minutes / 60) + "h " + String(minutes % 60).padStart(2, "0") + "m";
  }

  function when(ts) {
    return ts ? new Date(ts * 1000).toLocaleString() : "-";
  }

  function badge(status) {
    return el("span", { class: "badge s-" + (status || "unknown"), text: status || "unknown" });
  }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error : response.status + " " + response.statusText;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function showBus(bus) {
    const node = $("bus");
    if (!node || !bus) return;
    const state = bus.ok === false ? "unreachable: showing what was read and the tracking store"
      : bus.ok ? "answers" : "…";
    node.textContent = "bus " + bus.url + " · " + state;
    node.title = bus.ok === false ? bus.problem || "" : "";
    node.className = "bus " + (bus.ok === false ? "error" : "");
  }

  function finishText(finish) {
    if (!finish) return "";
    let text = finish.status;
    if (finish.by) text += " by " + finish.by;
    if (finish.reason && finish.reason !== finish.status) text += ": " + finish.reason;
    if (finish.epochs !== null && finish.epochs !== undefined && finish.iteration !== null && finish.iteration !== undefined) {
      // a count of completed epochs, not an epoch number
      text += " (after " + finish.epochs + " epoch" + (finish.epochs === 1 ? "" : "s") + ", " + finish.iteration + " iterations)";
    }
    return text;
  }

  // -- charts (uPlot, vendored) ------------------------------------------------------------

  // One line chart: x values and named series; redraws in place, rebuilds when series change.
  class LineChart {
    constructor(container, title, xLabel, colorFor) {
      this.colorFor = colorFor || colorOf;
      this.box = el("div", { class: "chart" });
      container.append(this.box);
      this.title = title;
      this.xLabel = xLabel;
      this.plot = null;
      this.names = [];
      this.pending = [];
    }

    set(xs, series, ids) {
      const names = Object.keys(series);
      const data = [xs].concat(names.map((name) => series[name]));
      this.pending = this.pending.concat(ids || []);
      if (this.plot === null || names.join("\u0000") !== this.names.join("\u0000")) {
        if (this.plot !== null) this.plot.destroy();
        this.names = names;
        this.plot = new uPlot(this.options(names), data, this.box);
      } else {
        this.plot.setData(data);
      }
    }

    options(names) {
      const width = Math.max(320, this.box.clientWidth - 8);
      return {
        title: this.title,
        width: width,
        height: 240,
        scales: { x: { time: false } },
        axes: [{ label: this.xLabel }, {}],
        series: [{ label: this.xLabel }].concat(names.map((name, i) => ({
          label: name, stroke: this.colorFor(name, i), width: 2, spanGaps: true,
          points: { size: 5 },
        }))),
        hooks: { draw: [() => this.drawn()] },
      };
    }

    drawn() {
      const at = Date.now();
      for (const id of this.pending) window.drawLog.push({ id: id, at: at });
      this.pending = [];
    }

    resize() {
      if (this.plot !== null) this.plot.setSize({ width: Math.max(320, this.box.clientWidth - 8), height: 240 });
    }
  }

  // Points by metric, split and epoch; a split with the aggregator's METRICS shows those,
  // else the trainer's own EPOCH_COMPLETED values (as the terminal monitor does).
  class Curves {
    constructor(container) {
      this.container = container;
      this.byMetric = new Map(); // metric -> split -> kind -> Map(x -> [value, id])
      this.aggregated = new Set(); // splits that have METRICS points
      this.charts = new Map();
      this.dirty = new Map(); // metric -> ids added since the last draw
      this.scheduled = false;
      window.addEventListener("resize", () => this.charts.forEach((chart) => chart.resize()));
    }

    add(point) {
      if (point.kind === "METRICS") this.aggregated.add(point.split);
      for (const [name, value] of Object.entries(point.values)) {
        if (!this.byMetric.has(name)) this.byMetric.set(name, new Map());
        const splits = this.byMetric.get(name);
        if (!splits.has(point.split)) splits.set(point.split, new Map());
        const kinds = splits.get(point.split);
        if (!kinds.has(point.kind)) kinds.set(point.kind, new Map());
        kinds.get(point.kind).set(point.x, [value, point.id]);
        if (!this.dirty.has(name)) this.dirty.set(name, []);
        this.dirty.get(name).push(point.id);
      }
      this.schedule();
    }

    schedule() {
      if (this.scheduled) return;
      this.scheduled = true;
      // One redraw per frame, however many points arrived (a history comes in a burst).
      requestAnimationFrame(() => { this.scheduled = false; this.draw(); });
    }

    draw() {
      const names = Array.from(this.byMetric.keys()).sort();
      for (const name of names) {
        if (!this.dirty.has(name)) continue;
        const ids = this.dirty.get(name);
        this.dirty.delete(name);
        const splits = this.byMetric.get(name);
        const chosen = {};
        for (const split of Array.from(splits.keys()).sort(splitOrder)) {
          const kinds = splits.get(split);
          const kind = this.aggregated.has(split) ? "METRICS" : "EPOCH_COMPLETED";
          if (kinds.has(kind)) chosen[split || "(no split)"] = kinds.get(kind);
        }
        const xs = Array.from(new Set([].concat(...Object.values(chosen).map((m) => Array.from(m.keys()))))).sort((a, b) => a - b);
        const series = {};
        const record = { x: xs, series: {}, ids: {} };
        for (const [split, byX] of Object.entries(chosen)) {
          series[split] = xs.map((x) => (byX.has(x) ? byX.get(x)[0] : null));
          record.series[split] = series[split];
          record.ids[split] = xs.map((x) => (byX.has(x) ? byX.get(x)[1] : null));
        }
        if (!this.charts.has(name)) this.charts.set(name, new LineChart(this.container, name, "epoch"));
        this.charts.get(name).set(xs, series, ids);
        window.chartData[name] = record;
      }
    }
  }

  function splitOrder(a, b) {
    if (a === b) return 0;
    if (a === "train") return -1;
    if (b === "train") return 1;
    return a < b ? -1 : 1;
  }

  // -- the runs list -----------------------------------------------------------------------

  function progressCell(run) {
    const parts = [];
    if (run.epochs !== null && run.epochs !== undefined) {
      parts.push("epoch " + run.epochs + (run.max_epochs ? "/" + run.max_epochs : ""));
    }
    if (run.iteration !== null && run.iteration !== undefined) {
      parts.push("it " + run.iteration + (run.total_iterations ? "/" + run.total_iterations : ""));
    }
    const cell = el("td", {}, [parts.join(" · ") || "-"]);
    if (run.total_iterations && run.iteration !== null && run.iteration !== undefined) {
      cell.append(" ", el("progress", { max: run.total_iterations, value: Math.min(run.iteration, run.total_iterations) }));
    }
    return cell;
  }

  function runsPage() {
    const selected = new Set();
    const button = $("compare");
    button.addEventListener("click", () => {
      location.href = "/compare?runs=" + Array.from(selected).map(encodeURIComponent).join(",");
    });
    function render(body) {
      showBus(body.bus);
      const runs = body.runs || [];
      $("empty").hidden = runs.length > 0;
      fill($("runs").querySelector("tbody"), runs.map((run) => {
        const box = el("input", { type: "checkbox", "data-run": run.id });
        box.checked = selected.has(run.id);
        box.addEventListener("change", () => {
          if (box.checked) selected.add(run.id); else selected.delete(run.id);
          button.disabled = selected.size < 2;
        });
        const best = run.best ? run.best.metric + " " + number(run.best.value) : "-";
        const ended = run.by ? run.by + (run.reason ? ": " + run.reason : "") : (run.reason || "");
        return [
          box,
          el("a", { href: "/runs/" + encodeURIComponent(run.id), text: run.id }),
          run.name || "",
          badge(run.status),
          progressCell(run),
          best,
          when(run.started_at),
          ended,
        ];
      }));
      button.disabled = selected.size < 2;
    }
    api("/api/runs").then(render).catch((e) => { $("empty").hidden = false; $("empty").textContent = e.message; });
    api("/api/sweeps").then((body) => {
      const ids = body.sweeps || [];
      $("sweeps-box").hidden = ids.length === 0;
      $("sweeps").replaceChildren(...ids.map((id) =>
        el("li", {}, [el("a", { href: "/sweeps/" + encodeURIComponent(id), text: id })])));
    }).catch(() => {});
    const source = new EventSource("/api/runs/stream");
    source.addEventListener("runs", (message) => render(JSON.parse(message.data)));
  }

  // -- one run -----------------------------------------------------------------------------

  function runPage() {
    const runId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    document.title = runId + " · trainer web";
    $("run-id").textContent = runId;
    const curves = new Curves($("charts"));
    let received = 0;
    let state = null;
    let stateAt = Date.now();

    function addPoint(point) {
      window.receivedPoints.push(Object.assign({ conn: window.streamOpens }, point));
      received += 1;
      curves.add(point);
    }

    function renderState(view) {
      state = view;
      stateAt = Date.now();
      if (view.bus) showBus(view.bus);
      $("run-name").textContent = view.name ? "(" + view.name + ")" : "";
      const status = $("status");
      status.textContent = view.status;
      status.className = "badge s-" + view.status;
      let line = view.finish ? finishText(view.finish) : view.status;
      if (!view.finish && view.started_at) line += " since " + when(view.started_at);
      if (view.origin === "store") line += " · from the tracking store" + (view.dir ? " (" + view.dir + ")" : "");
      $("status-line").textContent = line;
      const exception = $("exception");
      exception.hidden = !view.exception;
      if (view.exception) exception.textContent = "exception: " + view.exception.error_type + ": " + view.exception.message;
      $("terminates").replaceChildren(...(view.terminate_requests || []).slice(-3).map((t) =>
        el("li", { text: "TERMINATE requested by " + t.source + ": " + (t.reason || "(no reason)") })));
      $("stop-box").hidden = !view.can_stop;
      renderRanks(view);
      renderWorkers(view);
      renderCheckpoints(view);
      const letters = view.dead_letters;
      $("dead-letters").textContent = letters
        ? "dead letters: " + letters.count + (letters.count ? ", last" + (letters.last_group ? " (group " + letters.last_group + ")" : "") + ": " + letters.last_reason : "")
          + " · undecodable entries: " + (view.undecodable || 0)
        : "";
      if (view.config && Object.keys(view.config).length) $("config").textContent = JSON.stringify(view.config, null, 2);
    }

    function renderRanks(view) {
      fill($("ranks").querySelector("tbody"), (view.ranks || []).map((rank) => {
        const total = view.total_iterations;
        const bar = total ? el("progress", { max: total, value: Math.min(rank.iteration, total) }) : "";
        const outputs = Object.entries(rank.outputs || {}).slice(0, 4).map(([k, v]) => k + " " + number(v)).join("  ");
        return [
          String(rank.rank),
          rank.host || "?",
          rank.epoch + (view.max_epochs ? "/" + view.max_epochs : ""),
          rank.iteration + (total ? "/" + total : ""),
          bar,
          rank.rate === null || rank.rate === undefined ? "-" : rank.rate.toFixed(1),
          rank.finished ? "done" : duration(rank.eta),
          outputs,
        ];
      }));
    }

    function renderWorkers(view) {
      const elapsed = (Date.now() - stateAt) / 1000;
      fill($("workers").querySelector("tbody"), (view.workers || []).map((worker) => {
        const age = worker.age === null || worker.age === undefined ? null : worker.age + elapsed;
        // Between two snapshots a silent worker goes past the heartbeat timeout here too.
        const gone = worker.state === "live" && age !== null && view.heartbeat_timeout && age > view.heartbeat_timeout;
        const status = gone ? "gone" : worker.state;
        let vote = worker.votes ? "-" : "";
        if (worker.vote) {
          vote = el("span", {}, [
            el("span", { class: worker.vote.stop ? "vote-stop" : "vote-continue", text: worker.vote.stop ? "stop" : "continue" }),
            worker.vote.epoch !== null ? " @ epoch " + worker.vote.epoch : "",
            worker.vote.reason ? ": " + worker.vote.reason : "",
          ]);
        }
        return [
          worker.name,
          worker.kind + (worker.votes ? " (voter)" : ""),
          el("span", { class: "w-" + status, text: status }),
          age === null ? "-" : duration(age) + " ago",
          vote,
        ];
      }));
    }

    function renderCheckpoints(view) {
      const kept = view.checkpoints || [];
      $("checkpoints-title").textContent = "Checkpoints, " + kept.length + " kept" + (view.being_filed ? ", " + view.being_filed + " being filed" : "");
      fill($("checkpoints").querySelector("tbody"), kept.map((c) => [
        el("span", { title: c.path, text: c.name }),
        c.epoch === null ? "-" : String(c.epoch),
        c.iteration === null ? "-" : String(c.iteration),
        number(c.score),
        (c.aliases || []).join(", "),
      ]));
    }

    function fromSeries(view) {
      // A run read from the tracking store: its curves come whole, with no stream ids.
      for (const [split, metrics] of Object.entries(view.series || {})) {
        for (const [name, pairs] of Object.entries(metrics)) {
          for (const [x, value] of pairs) {
            addPoint({ id: null, kind: "EPOCH_COMPLETED", split: split, x: x, values: { [name]: value } });
          }
        }
      }
    }

    function follow() {
      const source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/stream");
      const link = $("link");
      source.addEventListener("open", () => {
        window.streamOpens += 1;
        link.textContent = "live";
        link.className = "link live";
      });
      source.addEventListener("error", () => {
        link.textContent = source.readyState === EventSource.CLOSED ? "not live" : "reconnecting…";
        link.className = "link error";
      });
      source.addEventListener("point", (message) => addPoint(JSON.parse(message.data)));
      source.addEventListener("state", (message) => {
        const view = JSON.parse(message.data);
        if (state && state.config && !view.config) view.config = state.config;
        renderState(view);
      });
      window.runStream = source;
    }

    setupStop(runId);
    setInterval(() => { if (state) renderWorkers(state); }, 1000);
    api("/api/runs/" + encodeURIComponent(runId) + "?series=0").then((view) => {
      renderState(view);
      if (view.origin === "store") {
        fromSeries(view); // the store sends a run whole, curves included
        $("link").textContent = "finished: read from the tracking store";
      } else {
        follow();
      }
    }).catch((e) => {
      $("status-line").textContent = e.message;
      $("status-line").className = "status-line error";
    });
  }

  function setupStop(runId) {
    const form = $("stop-form");
    const result = $("stop-result");
    $("stop").addEventListener("click", () => { form.hidden = false; $("stop-reason").focus(); });
    $("stop-cancel").addEventListener("click", () => { form.hidden = true; });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      window.stopClickedAt = Date.now();
      $("stop-confirm").disabled = true;
      result.textContent = "sending TERMINATE…";
      api("/api/runs/" + encodeURIComponent(runId) + "/stop", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ reason: $("stop-reason").value }),
      }).then((sent) => {
        result.textContent = "TERMINATE sent" + (sent.signed ? " (signed)" : "") + " as " + sent.source + ": " + sent.reason + "; the trainer stops at its next iteration";
        form.hidden = true;
      }).catch((e) => {
        result.textContent = "not stopped: " + e.message;
        result.className = "note error";
      }).finally(() => { $("stop-confirm").disabled = false; });
    });
  }

  // -- compare -----------------------------------------------------------------------------

  function comparePage() {
    const ids = (new URLSearchParams(location.search).get("runs") || "").split(",").map((s) => s.trim()).filter(Boolean);
    const select = $("metric");
    let runs = [];
    let chart = null;

    function keys() {
      const all = new Set();
      for (const run of runs) {
        for (const [split, metrics] of Object.entries(run.series || {})) {
          for (const name of Object.keys(metrics)) all.add(split ? split + "/" + name : name);
        }
      }
      return Array.from(all).sort((a, b) => (b.startsWith("val/") - a.startsWith("val/")) || (a < b ? -1 : 1));
    }

    function draw() {
      const key = select.value;
      if (!key) return;
      const cut = key.indexOf("/");
      const split = cut < 0 ? "" : key.slice(0, cut);
      const name = cut < 0 ? key : key.slice(cut + 1);
      const lines = {};
      for (const run of runs) {
        const pairs = ((run.series || {})[split] || {})[name];
        if (pairs) lines[run.id] = new Map(pairs.map(([x, v]) => [x, v]));
      }
      const xs = Array.from(new Set([].concat(...Object.values(lines).map((m) => Array.from(m.keys()))))).sort((a, b) => a - b);
      const series = {};
      for (const [id, byX] of Object.entries(lines)) series[id] = xs.map((x) => (byX.has(x) ? byX.get(x) : null));
      if (chart === null) chart = new LineChart($("chart"), key, "epoch", (name, i) => COLORS[i % COLORS.length]);
      chart.title = key;
      chart.set(xs, series, []);
      window.chartData = { [key]: { x: xs, series: series } };
    }

    function render() {
      const current = select.value;
      const options = keys();
      select.replaceChildren(...options.map((k) => el("option", { value: k, text: k })));
      if (options.includes(current)) select.value = current;
      fill($("compared").querySelector("tbody"), runs.map((run) => [
        el("a", { href: "/runs/" + encodeURIComponent(run.id), text: run.id }),
        run.name || "",
        badge(run.status),
        run.best ? run.best.metric + " " + number(run.best.value) : "-",
        run.finish ? finishText(run.finish) : "",
      ]));
      draw();
    }

    async function load() {
      const found = [];
      const missing = [];
      for (const id of ids) {
        try { found.push(await api("/api/runs/" + encodeURIComponent(id))); } catch (e) { missing.push(id + ": " + e.message); }
      }
      runs = found;
      if (runs.length && runs[0].bus) showBus(runs[0].bus);
      $("missing").hidden = missing.length === 0;
      $("missing").textContent = missing.join("; ");
      render();
      // Live runs move: fetch again while any of them runs.
      if (runs.some((run) => run.status === "running" || run.status === "waiting")) setTimeout(load, 2000);
    }

    select.addEventListener("change", () => { if (chart) { chart.plot && chart.plot.destroy(); chart.plot = null; } draw(); });
    load();
  }

  // -- one sweep ---------------------------------------------------------------------------

  function sweepPage() {
    const sweepId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    $("sweep-id").textContent = sweepId;
    document.title = "Sweep " + sweepId + " · trainer web";
    let plot = null;
    let drawn = "";

    function params(values) {
      return Object.entries(values || {}).map(([k, v]) => k + "=" + (typeof v === "number" ? number(v).replace(/\.?0+$/, "") : JSON.stringify(v))).join(" ");
    }

    function chart(sweep) {
      const trials = sweep.trials.filter((t) => t.curve.length > 0);
      const xs = Array.from(new Set([].concat(...trials.map((t) => t.curve.map((p) => p[0]))))).sort((a, b) => a - b);
      const best = sweep.best ? sweep.best.trial : null;
      const series = {};
      for (const t of trials) {
        const byX = new Map(t.curve.map(([x, v]) => [x, v]));
        series["trial " + t.trial] = xs.map((x) => (byX.has(x) ? byX.get(x) : null));
      }
      window.chartData = { [sweep.objective.key]: { x: xs, series: series } };
      const shape = trials.map((t) => t.trial + ":" + t.status + ":" + (t.trial === best)).join(",");
      const data = [xs].concat(Object.values(series));
      if (plot !== null && shape === drawn) { plot.setData(data); return; }
      if (plot !== null) plot.destroy();
      drawn = shape;
      const box = $("chart");
      plot = new uPlot({
        title: sweep.objective.key + " per epoch",
        width: Math.max(320, box.clientWidth - 8),
        height: 320,
        scales: { x: { time: false } },
        axes: [{ label: "epoch" }, {}],
        series: [{ label: "epoch" }].concat(trials.map((t, i) => ({
          label: "trial " + t.trial + (t.status === "pruned" ? " (pruned)" : ""),
          stroke: t.trial === best ? "#111827" : COLORS[i % COLORS.length],
          width: t.trial === best ? 3 : 1.5,
          dash: t.status === "pruned" ? [6, 4] : undefined,
          spanGaps: true,
          points: { size: 4 },
        }))),
      }, data, box);
    }

    function render(sweep) {
      if (sweep.bus) showBus(sweep.bus);
      const c = sweep.counts;
      const status = sweep.finished ? sweep.finished.status : (c.running > 0 ? "running" : "waiting");
      const badgeNode = $("sweep-status");
      badgeNode.textContent = status;
      badgeNode.className = "badge s-" + status;
      const total = sweep.total === null ? "?" : sweep.total;
      let line = c.running + " running, " + c.done + "/" + total + " done (" + c.pruned + " pruned, " + c.failed + " failed)";
      const bestTrial = sweep.best ? sweep.trials.find((t) => t.trial === sweep.best.trial) : null;
      if (bestTrial) line += "; best " + sweep.objective.key + " " + number(bestTrial.best) + " (trial " + bestTrial.trial + ")";
      $("progress").textContent = line;
      $("space").textContent = (sweep.sampler ? sweep.sampler + ": " : "") + Object.entries(sweep.params || {}).map(([k, v]) => k + " " + v).join(", ") + " · goal: " + sweep.objective.mode + " " + sweep.objective.key;
      fill($("trials").querySelector("tbody"), sweep.trials.map((t) => [
        String(t.trial),
        t.run_id ? el("a", { href: "/runs/" + encodeURIComponent(t.run_id), text: t.run_id }) : "-",
        params(t.params),
        badge(t.status),
        t.epochs + (t.max_epochs ? "/" + t.max_epochs : ""),
        t.best === null ? "-" : number(t.best),
        t.rung ? (t.voter || t.by || "") + " at rung " + t.rung[0] + " (epoch " + t.rung[1] + ")" : "",
        (t.agent || "") + (t.takeovers ? " (taken over " + t.takeovers + "x)" : ""),
      ]));
      chart(sweep);
    }

    // The stream alone draws the sweep: its first event is the whole sweep, and an answer to a
    // separate request could arrive after a newer event and draw an older sweep over it. The
    // request is for what the stream does not say: the bus's state, or why there is no sweep.
    api("/api/sweeps/" + encodeURIComponent(sweepId)).then((sweep) => {
      if (sweep.bus) showBus(sweep.bus);
    }).catch((e) => {
      $("error").hidden = false;
      $("error").textContent = e.message;
    });
    const source = new EventSource("/api/sweeps/" + encodeURIComponent(sweepId) + "/stream");
    source.addEventListener("sweep", (message) => render(JSON.parse(message.data)));
  }

  const page = document.body.dataset.page;
  if (page === "runs") runsPage();
  else if (page === "run") runPage();
  else if (page === "compare") comparePage();
  else if (page === "sweep") sweepPage();
})();
