// The dashboard: polls `/api/stats` every POLL_MS while the page is visible, shows
// the current numbers as text and the recent history as charts (charts.js).
//
// Every number is a <dd data-stat="requests.total" data-value="..."> so a test can
// compare it with `/api/stats`. Polling runs even while the chat tab is shown, so
// the charts have history when the dashboard is opened.

import { api } from "./api.js";
import { LineChart } from "./charts.js";

const POLL_MS = 1500;
const WINDOW_S = 300; // seconds of history kept and drawn
const MiB = 1024 * 1024;

const int = (v) => (v == null ? "–" : Math.round(v).toLocaleString("en-US"));
const ms = (v) => (v == null ? "–" : `${Number(v).toFixed(v < 100 ? 1 : 0)} ms`);
const rate = (v) => (v == null ? "–" : `${Number(v).toFixed(1)} tok/s`);
const mib = (v) => (v == null ? "–" : `${(v / MiB).toFixed(1)} MiB`);
const secs = (v) => {
  if (v == null) return "–";
  const s = Math.floor(v);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
};

/** [group title, [[path in the stats object, label, format]]] */
const GROUPS = [
  ["Server", [["model", "Model", String], ["uptime_s", "Uptime", secs], ["startup_ms", "Start-up", ms]]],
  ["Requests", [["requests.total", "Total", int], ["requests.active", "Active", int],
    ["requests.generating", "Generating", int], ["requests.queued", "Queued", int],
    ["requests.failed", "Failed", int], ["requests.cancelled", "Cancelled", int]]],
  ["Tokens", [["tokens.prompt", "Prompt", int], ["tokens.completion", "Completion", int]]],
  ["Latency", [["latency_ms.p50", "p50", ms], ["latency_ms.p95", "p95", ms], ["latency_ms.p99", "p99", ms],
    ["latency_ms.count", "Samples", int]]],
  ["Time to first token", [["ttft_ms.p50", "p50", ms], ["ttft_ms.p95", "p95", ms]]],
  ["Decode speed", [["decode_tokens_per_s.last", "Last", rate], ["decode_tokens_per_s.mean", "Mean", rate]]],
  ["Memory", [["memory.rss_bytes", "RSS", mib], ["memory.peak_rss_bytes", "Peak RSS", mib]]],
];

function get(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

export class Dashboard {
  constructor(panel, onStats) {
    this.panel = panel;
    this.onStats = onStats;
    this.updated = panel.querySelector("#dash-updated");
    this.samples = [];
    this.cells = new Map();
    this._timer = 0;
    this._lastTotal = null;
    this._buildNumbers(panel.querySelector("#dash-numbers"));
    const charts = panel.querySelector("#dash-charts");
    this.charts = [
      new LineChart(charts, { title: "Decode speed", unit: "tokens/s", windowS: WINDOW_S,
        series: [{ key: "tps_last", label: "last" }, { key: "tps_mean", label: "mean" }] }),
      new LineChart(charts, { title: "Time to first token", unit: "ms", windowS: WINDOW_S,
        series: [{ key: "ttft_p50", label: "p50" }, { key: "ttft_p95", label: "p95" }] }),
      new LineChart(charts, { title: "Request latency", unit: "ms", windowS: WINDOW_S,
        series: [{ key: "lat_p50", label: "p50" }, { key: "lat_p95", label: "p95" },
          { key: "lat_p99", label: "p99" }] }),
      new LineChart(charts, { title: "Requests", unit: "count", windowS: WINDOW_S,
        series: [{ key: "started", label: "started" }, { key: "active", label: "active" },
          { key: "queued", label: "queued" }] }),
      new LineChart(charts, { title: "Memory", unit: "MiB", windowS: WINDOW_S,
        series: [{ key: "rss", label: "RSS" }, { key: "peak", label: "peak" }] }),
    ];
    document.addEventListener("visibilitychange", () => this._schedule(0));
  }

  start() {
    this._schedule(0);
  }

  /** Draw again (the panel was hidden, so the canvases had no size). */
  redraw() {
    for (const c of this.charts) c.update(this.samples);
  }

  _buildNumbers(root) {
    for (const [title, fields] of GROUPS) {
      const group = document.createElement("section");
      group.className = "stat-group";
      const h = document.createElement("h3");
      h.textContent = title;
      const dl = document.createElement("dl");
      for (const [path, label, format] of fields) {
        const dt = document.createElement("dt");
        dt.textContent = label;
        const dd = document.createElement("dd");
        dd.dataset.stat = path;
        dd.textContent = "–";
        dl.append(dt, dd);
        this.cells.set(path, [dd, format]);
      }
      group.append(h, dl);
      root.append(group);
    }
  }

  _schedule(delay) {
    clearTimeout(this._timer);
    if (document.visibilityState === "hidden") return;
    this._timer = setTimeout(() => this._poll(), delay);
  }

  async _poll() {
    try {
      const s = await api.stats();
      this._show(s);
      this.updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      this.updated.classList.remove("error");
      this.onStats(s);
    } catch (err) {
      this.updated.textContent = `cannot reach the server (${err.message}); retrying`;
      this.updated.classList.add("error");
    }
    this._schedule(POLL_MS);
  }

  _show(s) {
    for (const [path, [dd, format]] of this.cells) {
      const v = get(s, path);
      dd.dataset.value = v == null ? "" : String(v);
      dd.textContent = v == null ? "–" : format(v);
    }
    const t = performance.now() / 1000;
    const started = this._lastTotal == null ? 0 : Math.max(0, s.requests.total - this._lastTotal);
    this._lastTotal = s.requests.total;
    this.samples.push({ t, values: {
      tps_last: s.decode_tokens_per_s.last, tps_mean: s.decode_tokens_per_s.mean,
      ttft_p50: s.ttft_ms.p50, ttft_p95: s.ttft_ms.p95,
      lat_p50: s.latency_ms.p50, lat_p95: s.latency_ms.p95, lat_p99: s.latency_ms.p99,
      started, active: s.requests.active, queued: s.requests.queued,
      rss: s.memory.rss_bytes / MiB, peak: s.memory.peak_rss_bytes / MiB,
    } });
    while (this.samples.length && this.samples[0].t < t - WINDOW_S) this.samples.shift();
    if (!this.panel.hidden) for (const c of this.charts) c.update(this.samples);
    else for (const c of this.charts) c.samples = this.samples;
  }
}
