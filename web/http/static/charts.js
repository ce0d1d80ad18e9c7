// Omixa charts: a thin layer over uPlot (web/http/static/vendor, MIT) that every console page
// uses, so charts look and behave alike: a time x axis in the browser's time zone, at least
// five labelled y ticks, a grid, a legend, and a tooltip with each series' exact value at the
// hovered bucket. Needs vendor/uplot-*.iife.min.js (the global uPlot) and console.js.
"use strict";

const CHART_COLORS = ["#3355ff", "#e0861a", "#1f9d55", "#a23fd1", "#d23a3a", "#0d8fa8", "#7a6a00", "#c2457a"];
const Y_TICKS = 5;  // intervals: six labels, 0 included

// Evenly spaced y splits: Y_TICKS intervals from 0 to a "nice" maximum at or above max.
function niceSplits(max) {
  if (!(max > 0)) max = 1;
  const raw = max / Y_TICKS;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  return Array.from({ length: Y_TICKS + 1 }, (_, i) => +(i * step).toPrecision(12));
}

function tooltipPlugin(spec) {
  let tip;
  return {
    hooks: {
      init: (u) => {
        tip = el("div", { class: "chart-tip", role: "status", hidden: "" });
        u.over.append(tip);
      },
      setCursor: (u) => {
        const i = u.cursor.idx;
        if (i === null || i === undefined || u.cursor.left < 0) { tip.hidden = true; return; }
        const when = spec.timeLabel(spec.x[i]);
        const rows = spec.series.map((s) => {
          const swatch = el("i", { class: "sw" });
          swatch.style.background = s.color;  // CSSOM, not a style attribute: the CSP allows it
          return el("div", {}, swatch, `${s.label}: `, el("b", {}, s.texts ? s.texts[i] : spec.exact(s.values[i])));
        });
        tip.replaceChildren(el("div", { class: "chart-tip-time" }, when), ...rows);
        tip.hidden = false;
        const left = Math.min(u.cursor.left + 12, u.over.clientWidth - tip.offsetWidth - 4);
        tip.style.left = `${Math.max(0, left)}px`;
        tip.style.top = `${Math.max(0, u.cursor.top - tip.offsetHeight - 8)}px`;
      },
    },
  };
}

// Draws (or redraws) a chart into container.
// spec: { x: [epoch ms], series: [{ label, values, color?, texts? }], kind: "bars"|"lines",
//         stacked: bool, format: (v) => axis label, exact: (v) => tooltip text,
//         timeLabel: (ms) => tooltip heading, height?: px }
// A series' texts (optional, one per x) are what its tooltip shows instead of exact(value):
// e.g. exact decimal strings of amounts that values holds as (inexact) numbers. null values
// leave a gap in a line. The container gets data-ticks (how many y ticks) and data-y-labels
// (their labels, JSON), since uPlot draws the axes on a canvas.
function drawChart(container, spec) {
  if (container._chart) { container._chart.destroy(); container._chart = null; }
  spec.series.forEach((s, i) => { s.color = s.color || CHART_COLORS[i % CHART_COLORS.length]; });
  const xs = spec.x.map((t) => t / 1000);
  // Stacked bars: each series drawn at its cumulative height, the tallest first.
  const drawn = spec.series.map((s) => s.values.slice());
  if (spec.stacked) for (let k = 1; k < drawn.length; k++) drawn[k] = drawn[k].map((v, i) => v + drawn[k - 1][i]);
  const order = spec.stacked ? drawn.map((_, k) => drawn.length - 1 - k) : drawn.map((_, k) => k);
  const top = Math.max(0, ...drawn.flat());
  const splits = niceSplits(top);
  const bars = spec.kind !== "lines" && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 60] }) : null;
  const series = [{ label: "Time", value: (u, v) => (v === null ? "–" : spec.timeLabel(v * 1000)) }].concat(order.map((k) => ({
    label: spec.series[k].label,
    stroke: spec.series[k].color,
    fill: spec.kind === "lines" ? undefined : spec.series[k].color,
    width: spec.kind === "lines" ? 2 : 0,
    paths: bars || undefined,
    points: { show: spec.kind === "lines" && xs.length < 60 },
    value: (u, v, si, i) => (i === null || i === undefined ? "–"
      : spec.series[k].texts ? spec.series[k].texts[i] : spec.exact(spec.series[k].values[i])),
  })));
  const labels = splits.map(spec.format);
  const labelWidth = Math.max(40, 12 + 7 * Math.max(...labels.map((l) => String(l).length)));
  const width = Math.max(280, container.clientWidth || 600);
  const options = {
    width,
    height: spec.height || 220,
    series,
    scales: { x: { time: true }, y: { range: () => [0, splits[splits.length - 1]] } },
    axes: [
      { grid: { stroke: "rgba(128,128,128,0.18)" }, stroke: "#5d6673" },
      {
        size: labelWidth, stroke: "#5d6673", grid: { stroke: "rgba(128,128,128,0.18)" },
        splits: () => splits, values: (u, vals) => vals.map(spec.format),
      },
    ],
    cursor: { points: { show: false }, drag: { x: false, y: false } },
    legend: { show: true, live: false },
    plugins: [tooltipPlugin(spec)],
  };
  const chart = new uPlot(options, [xs, ...order.map((k) => drawn[k])], container);
  chart.root.setAttribute("aria-hidden", "true");  // the tables and tooltips carry the numbers
  container._chart = chart;
  container.dataset.ticks = String(splits.length);
  container.dataset.yLabels = JSON.stringify(labels);
  if (!container._resizing && window.ResizeObserver) {
    container._resizing = new ResizeObserver(() => {
      const c = container._chart;
      if (c && Math.abs(c.width - container.clientWidth) > 4) c.setSize({ width: Math.max(280, container.clientWidth), height: c.height });
    });
    container._resizing.observe(container);
  }
  return chart;
}
