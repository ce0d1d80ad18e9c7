// Omixa charts: a thin layer over uPlot (web/http/static/vendor, MIT) that every console page
// uses, so charts look and behave alike: a time x axis in the browser's time zone, at least
// five labelled y ticks, a grid, a legend, and a tooltip with each series' exact value at the
// hovered bucket. Needs vendor/uplot-*.iife.min.js (the global uPlot) and console.js.
"use strict";

const CHART_COLORS = ["#3355ff", "#e0861a", "#1f9d55", "#a23fd1", "#d23a3a", "#0d8fa8", "#7a6a00", "#c2457a"];
const Y_TICKS = 5;  // intervals: six labels, 0 included

// Evenly spaced y splits: Y_TICKS intervals from 0 to a "nice" maximum at or above max;
// whole steps when integer (counts: no "0.2 requests" tick).
function niceSplits(max, integer = false) {
  if (!(max > 0)) max = 1;
  const raw = integer ? Math.max(1, max / Y_TICKS) : max / Y_TICKS;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw && (!integer || Number.isInteger(s)));
  return Array.from({ length: Y_TICKS + 1 }, (_, i) => +(i * step).toPrecision(12));
}

// The tooltip reads the container's current spec, so a redraw with new data keeps it.
function tooltipPlugin(container) {
  let tip;
  return {
    hooks: {
      init: (u) => {
        tip = el("div", { class: "chart-tip", role: "status", hidden: "" });
        u.over.append(tip);
      },
      setCursor: (u) => {
        const spec = container._spec;
        const i = u.cursor.idx;
        if (i === null || i === undefined || u.cursor.left < 0) { tip.hidden = true; return; }
        const when = spec.timeLabel(spec.x[i]);
        const rows = spec.series.map((s) => {
          const swatch = el("i", { class: "sw" });
          swatch.style.background = s.color;  // CSSOM, not a style attribute: the CSP allows it
          return el("div", {}, swatch, `${s.label}: `, el("b", {}, pointText(spec, s, i)));
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

function pointText(spec, s, i) {
  return s.texts ? s.texts[i] : spec.exact(s.values[i]);
}

// Draws (or redraws) a chart into container.
// spec: { x: [epoch ms], series: [{ label, values, color?, texts? }], kind: "bars"|"lines",
//         stacked: bool, integer?: bool (whole y ticks), format: (v) => axis label, exact: (v) => tooltip text,
//         timeLabel: (ms) => tooltip heading, height?: px }
// A series' texts (optional, one per x) are what its tooltip shows instead of exact(value):
// e.g. exact decimal strings of amounts that values holds as (inexact) numbers. null values
// leave a gap in a line. The container gets data-ticks (how many y ticks) and data-y-labels
// (their labels, JSON), since uPlot draws the axes on a canvas. A redraw with the same
// series, kind and axis width only replaces the data (a tooltip being read stays open).
function drawChart(container, spec) {
  spec.series.forEach((s, i) => { s.color = s.color || CHART_COLORS[i % CHART_COLORS.length]; });
  const xs = spec.x.map((t) => t / 1000);
  // Stacked bars: each series drawn at its cumulative height, the tallest first.
  const drawn = spec.series.map((s) => s.values.slice());
  if (spec.stacked) for (let k = 1; k < drawn.length; k++) drawn[k] = drawn[k].map((v, i) => v + drawn[k - 1][i]);
  const order = spec.stacked ? drawn.map((_, k) => drawn.length - 1 - k) : drawn.map((_, k) => k);
  const top = Math.max(0, ...drawn.flat());
  const splits = niceSplits(top, !!spec.integer);
  const labels = splits.map(spec.format);
  // Room for the longest label: about 7.5 px a character at 12 px, the tick and its gap.
  const labelWidth = Math.ceil(Math.max(40, 24 + 7.5 * Math.max(...labels.map((l) => String(l).length))));
  const shape = JSON.stringify([spec.kind, !!spec.stacked, spec.height, labelWidth, spec.series.map((s) => [s.label, s.color])]);
  container._spec = spec;
  container._splits = splits;
  container.dataset.ticks = String(splits.length);
  container.dataset.yLabels = JSON.stringify(labels);
  const data = [xs, ...order.map((k) => drawn[k])];
  if (container._chart && container._shape === shape) {
    container._chart.setData(data);
    return container._chart;
  }
  if (container._chart) { container._chart.destroy(); container._chart = null; }
  container._shape = shape;
  const current = () => container._spec;
  const bars = spec.kind !== "lines" && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 60] }) : null;
  const series = [{ label: "Time", value: (u, v) => (v === null ? "–" : current().timeLabel(v * 1000)) }].concat(order.map((k) => ({
    label: spec.series[k].label,
    stroke: spec.series[k].color,
    fill: spec.kind === "lines" ? undefined : spec.series[k].color,
    width: spec.kind === "lines" ? 2 : 0,
    paths: bars || undefined,
    points: { show: spec.kind === "lines" && xs.length <= 100 },  // a lone value between gaps shows
    value: (u, v, si, i) => (i === null || i === undefined ? "–" : pointText(current(), current().series[k], i)),
  })));
  const width = Math.max(280, container.clientWidth || 600);
  const options = {
    width,
    height: spec.height || 220,
    series,
    scales: { x: { time: true }, y: { range: () => [0, container._splits[container._splits.length - 1]] } },
    axes: [
      { grid: { stroke: "rgba(128,128,128,0.18)" }, stroke: "#5d6673" },
      {
        size: labelWidth, stroke: "#5d6673", grid: { stroke: "rgba(128,128,128,0.18)" },
        splits: () => container._splits, values: (u, vals) => vals.map(current().format),
      },
    ],
    cursor: { points: { show: false }, drag: { x: false, y: false } },
    legend: { show: true, live: false },
    plugins: [tooltipPlugin(container)],
  };
  const chart = new uPlot(options, data, container);
  chart.root.setAttribute("aria-hidden", "true");  // the tables and tooltips carry the numbers
  container._chart = chart;
  if (!container._resizing && window.ResizeObserver) {
    container._resizing = new ResizeObserver(() => {
      const c = container._chart;
      if (c && Math.abs(c.width - container.clientWidth) > 4) c.setSize({ width: Math.max(280, container.clientWidth), height: c.height });
    });
    container._resizing.observe(container);
  }
  return chart;
}
