// Fleet overview: live counts from the event stream of GET /fleet/overview, the online count
// over the last 24 h as sampled by this tab, and water per day summed from each device's
// statistics (GET /devices/{did}/statistics, the first STATS_DEVICES devices).

import { h, fill } from '../dom.js';
import { get, stream } from '../api.js';
import { t } from '../i18n.js';
import { barChart, lineChart } from '../chart.js';
import { failure, num, section } from '../ui.js';

const CARDS = ['devices', 'online', 'offline', 'locked', 'in_rental', 'alarms', 'records_per_s'];
const SAMPLES = 'aq.online-samples';
const DAY_MS = 86_400_000;
const STATS_DEVICES = 50;

function samples() {
  try { return JSON.parse(sessionStorage.getItem(SAMPLES) || '[]'); } catch { return []; }
}

function addSample(value) {
  const now = Date.now();
  const kept = samples().filter((p) => p.t > now - DAY_MS);
  const last = kept[kept.length - 1];
  if (!last || now - last.t >= 10_000 || last.value !== value) kept.push({ t: now, value });
  sessionStorage.setItem(SAMPLES, JSON.stringify(kept.slice(-2000)));
  return kept;
}

async function waterChart(box, signal) {
  const list = await get(`/devices?limit=${STATS_DEVICES}`, { signal });
  const days = new Map();
  let today = 0;
  const queue = [...list.data];
  async function worker() {
    while (queue.length) {
      const d = queue.shift();
      const stats = (await get(`/devices/${encodeURIComponent(d.did)}/statistics`, { signal })).data;
      today += stats.water_ml_today;
      for (const day of stats.daily) days.set(day.date, (days.get(day.date) || 0) + day.water_ml);
    }
  }
  await Promise.all([worker(), worker(), worker(), worker()]);
  const points = [...days.entries()].sort().map(([date, value]) => ({ label: date.slice(5), value }));
  fill(box,
    h('p', null, `${t('fleet.water_today')}: `, h('strong', { id: 'water-today' }, num(today)), ' ml · ',
      t('fleet.water_of', { n: list.data.length, total: list.total })),
    barChart(points, t('fleet.water_chart'), 5));
}

export default {
  path: '/',
  nav: 'overview',
  async render(main, { signal }) {
    const values = Object.fromEntries(CARDS.map((k) => [k, h('strong', { class: 'value', id: `count-${k}` }, '…')]));
    const status = h('span', { class: 'status', id: 'feed-status' }, t('fleet.reconnecting'));
    const note = h('p', { class: 'note', hidden: true }, t('fleet.truncated'));
    const online = h('div', { id: 'online-chart' });
    const water = h('div', { id: 'water-chart' }, '…');
    fill(main,
      h('div', { class: 'title' }, h('h1', null, t('nav.overview')), status),
      h('div', { class: 'cards' }, CARDS.map((k) => h('div', { class: `stat ${k}` }, h('span', null, t(`fleet.${k}`)), values[k]))),
      note,
      section(t('fleet.online_chart'), online),
      section(t('fleet.water_chart'), water));
    const drawOnline = (points) => {
      const now = Date.now();
      fill(online, lineChart(points, t('fleet.online_chart'), now - DAY_MS, now));
    };
    drawOnline(samples());
    waterChart(water, signal).catch((error) => { if (!signal.aborted) fill(water, failure(error)); });
    // The live feed: reconnect (bounded back-off) whenever the stream ends or fails.
    let backoff = 500;
    while (!signal.aborted) {
      try {
        await stream('/fleet/overview', (name, envelope) => {
          if (name !== 'overview') return;
          const data = envelope.data;
          for (const k of CARDS) values[k].textContent = data[k] === null ? '—' : num(data[k]);
          note.hidden = !data.truncated;
          status.textContent = t('fleet.live');
          status.classList.add('live');
          backoff = 500;
          drawOnline(addSample(data.online));
        }, signal);
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 401 || error.status === 403) throw error;
      }
      status.textContent = t('fleet.reconnecting');
      status.classList.remove('live');
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 15_000);
    }
  },
};
