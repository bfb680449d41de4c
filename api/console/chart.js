// Small SVG charts drawn by hand: a bar per day, a line over time. Sizes are in the SVG's own
// units (viewBox); CSS scales the chart to its container.

import { s } from './dom.js';

const W = 900, H = 220, PAD = { left: 52, right: 8, top: 10, bottom: 24 };

function niceMax(value) {
  if (value <= 2) return 2; // whole numbers on the 0 / half / max grid lines
  const step = 10 ** Math.floor(Math.log10(value));
  return Math.ceil(value / step) * step;
}

function frame(max, title) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title });
  svg.append(s('title', null, title));
  const y0 = H - PAD.bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = y0 - fraction * (y0 - PAD.top);
    svg.append(s('line', { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: 'grid' }));
    svg.append(s('text', { x: PAD.left - 4, y: y + 4, class: 'axis', 'text-anchor': 'end' },
      Math.round(max * fraction).toLocaleString()));
  }
  return svg;
}

/** Bars for `points` [{label, value}], labels under every `every`-th bar. */
export function barChart(points, title, every = 5) {
  const max = niceMax(Math.max(0, ...points.map((p) => p.value)));
  const svg = frame(max, title);
  const width = (W - PAD.left - PAD.right) / Math.max(points.length, 1);
  const y0 = H - PAD.bottom;
  points.forEach((point, i) => {
    const height = (point.value / max) * (y0 - PAD.top);
    const x = PAD.left + i * width;
    svg.append(s('rect', { x: x + 1, y: y0 - height, width: Math.max(width - 2, 1), height, class: 'bar' },
      s('title', null, `${point.label}: ${point.value.toLocaleString()}`)));
    if (i % every === 0) {
      svg.append(s('text', { x: x + width / 2, y: H - 6, class: 'axis', 'text-anchor': 'middle' }, point.label));
    }
  });
  svg.setAttribute('data-points', String(points.length));
  return svg;
}

/** A line through `points` [{t (ms), value}] over [from, to] (ms). */
export function lineChart(points, title, from, to) {
  const max = niceMax(Math.max(0, ...points.map((p) => p.value)));
  const svg = frame(max, title);
  const y0 = H - PAD.bottom;
  const x = (time) => PAD.left + ((time - from) / Math.max(to - from, 1)) * (W - PAD.left - PAD.right);
  const y = (value) => y0 - (value / max) * (y0 - PAD.top);
  if (points.length) {
    const path = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.value).toFixed(1)}`).join(' ');
    svg.append(s('path', { d: path, class: 'line' }));
    const last = points[points.length - 1];
    svg.append(s('circle', { cx: x(last.t), cy: y(last.value), r: 3, class: 'dot' }));
  }
  for (const [time, anchor] of [[from, 'start'], [to, 'end']]) {
    const label = new Date(time).toISOString().slice(5, 16).replace('T', ' ');
    svg.append(s('text', { x: x(time), y: H - 6, class: 'axis', 'text-anchor': anchor }, label));
  }
  svg.setAttribute('data-points', String(points.length));
  return svg;
}
