// Line charts on a <canvas>, drawn by hand: a few series over time, a zero-based
// y axis with "nice" steps, gaps where a value is missing (null).
//
// Colours come from CSS custom properties (--chart-1 ... --chart-4, --muted, --grid),
// so light and dark schemes need no code here. Not handled: zooming, tooltips.

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function shortNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(0) + "k";
  return String(Math.round(v * 100) / 100);
}

export class LineChart {
  /** series: [{key, label}]; the nth series uses colour --chart-n. */
  constructor(parent, { title, unit, series, windowS }) {
    this.series = series;
    this.unit = unit;
    this.windowS = windowS;
    this.samples = [];
    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "chart-title";
    name.textContent = title;
    this.legend = document.createElement("span");
    this.legend.className = "chart-legend";
    caption.append(name, this.legend);
    this.canvas = document.createElement("canvas");
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", `${title} over the last ${Math.round(windowS / 60)} minutes`);
    this.figure.append(caption, this.canvas);
    parent.append(this.figure);
    this._legendItems = series.map((s, k) => {
      const item = document.createElement("span");
      item.className = `legend-item series-${k + 1}`;
      this.legend.append(item);
      return item;
    });
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  /** samples: [{t: seconds, values: {key: number|null}}], oldest first. */
  update(samples) {
    this.samples = samples;
    const last = samples[samples.length - 1];
    this.series.forEach((s, k) => {
      const v = last ? last.values[s.key] : null;
      this._legendItems[k].textContent = `${s.label} ${v == null ? "–" : shortNumber(v)}`;
    });
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return; // hidden tab: drawn when shown
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const css = getComputedStyle(canvas);
    const color = (name) => css.getPropertyValue(name).trim() || "#888";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = `11px ${css.fontFamily}`;

    const left = 42, right = 8, top = 8, bottom = 18;
    const pw = w - left - right, ph = h - top - bottom;
    let max = 0;
    for (const s of this.samples) for (const { key } of this.series) max = Math.max(max, s.values[key] ?? 0);
    const ymax = niceMax(max);
    const now = this.samples.length ? this.samples[this.samples.length - 1].t : 0;
    const x = (t) => left + pw * (1 - (now - t) / this.windowS);
    const y = (v) => top + ph * (1 - v / ymax);

    ctx.strokeStyle = color("--grid");
    ctx.fillStyle = color("--muted");
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let k = 0; k <= 4; k++) {
      const v = (ymax * k) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(w - right, yy);
      ctx.stroke();
      ctx.fillText(shortNumber(v), left - 6, yy);
    }
    ctx.textBaseline = "alphabetic";
    ctx.textAlign = "left";
    ctx.fillText(`−${Math.round(this.windowS / 60)} min`, left, h - 4);
    ctx.textAlign = "right";
    ctx.fillText("now", w - right, h - 4);
    if (this.unit) {
      ctx.textAlign = "left";
      ctx.fillText(this.unit, left + 4, top + 8);
    }

    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top - 2, pw, ph + 4);
    ctx.clip();
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    this.series.forEach(({ key }, k) => {
      ctx.strokeStyle = color(`--chart-${k + 1}`);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      let drawing = false;
      let lone = null;
      for (const s of this.samples) {
        const v = s.values[key];
        if (v == null) {
          drawing = false;
          continue;
        }
        if (drawing) {
          ctx.lineTo(x(s.t), y(v));
          lone = null;
        } else {
          ctx.moveTo(x(s.t), y(v));
          lone = [x(s.t), y(v)];
        }
        drawing = true;
      }
      ctx.stroke();
      if (lone) ctx.fillRect(lone[0] - 2, lone[1] - 2, 4, 4); // a single point has no line
    });
    ctx.restore();
  }
}
