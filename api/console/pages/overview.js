// Fleet overview: live counts from the event stream of GET /fleet/overview; online devices over
// 24 h and 30 days and water poured per day from GET /fleet/statistics (the server's samples
// and the ledger's per-day rollups, over the caller's whole scope), refreshed every minute.

import { h, fill } from '../dom.js';
import { get, stream } from '../api.js';
import { t } from '../i18n.js';
import { barChart, lineChart } from '../chart.js';
import { failure, num, section } from '../ui.js';

const CARDS = ['devices', 'online', 'offline', 'locked', 'in_rental', 'alarms', 'records_per_s'];
const DAY_MS = 86_400_000;
const STATS_EVERY_MS = 60_000;

const points = (samples) => samples.map((s) => ({ t: Date.parse(s.at), value: s.online }));

export default {
  path: '/',
  nav: 'overview',
  async render(main, { signal }) {
    const values = Object.fromEntries(CARDS.map((k) => [k, h('strong', { class: 'value', id: `count-${k}` }, '…')]));
    const status = h('span', { class: 'status', id: 'feed-status' }, t('fleet.reconnecting'));
    const note = h('p', { class: 'note', hidden: true }, t('fleet.truncated'));
    const online = h('div', { id: 'online-chart' }, '…');
    const month = h('div', { id: 'online-30d-chart' }, '…');
    const water = h('div', { id: 'water-chart' }, '…');
    fill(main,
      h('div', { class: 'title' }, h('h1', null, t('nav.overview')), status),
      h('div', { class: 'cards' }, CARDS.map((k) => h('div', { class: `stat ${k}` }, h('span', null, t(`fleet.${k}`)), values[k]))),
      note,
      section(t('fleet.online_chart'), online),
      section(t('fleet.water_chart'), water),
      section(t('fleet.online_30d_chart'), month));

    let stats = null; // the latest GET /fleet/statistics
    let live = null; // the online count of the latest live event
    const drawOnline = () => {
      if (!stats) return;
      const now = Date.now();
      const day = points(stats.online_24h);
      if (live !== null) day.push({ t: now, value: live }); // now, from the live feed
      fill(online, lineChart(day, t('fleet.online_chart'), now - DAY_MS, now),
        stats.online_24h.length ? null : h('p', { class: 'note' }, t('fleet.no_samples', { minutes: Math.ceil(stats.sample_interval_s / 60) })));
    };
    const drawHistory = () => {
      const now = Date.now();
      fill(month, lineChart(points(stats.online_30d), t('fleet.online_30d_chart'), now - 30 * DAY_MS, now));
      fill(water,
        h('p', null, `${t('fleet.water_today')}: `, h('strong', { id: 'water-today' }, num(stats.water_ml_today)), ' ml · ',
          `${t('fleet.water_30d')}: `, h('strong', { id: 'water-30d' }, num(stats.water_ml_30d)), ' ml'),
        barChart(stats.water_daily.map((d) => ({ label: d.date.slice(5), value: d.water_ml })), t('fleet.water_chart'), 5));
      drawOnline();
    };
    const loadStats = async () => {
      try {
        stats = (await get('/fleet/statistics', { signal })).data;
        drawHistory();
      } catch (error) {
        if (!signal.aborted) for (const box of [online, month, water]) fill(box, failure(error));
      }
    };
    loadStats();
    (async () => {
      while (!signal.aborted) {
        await new Promise((resolve) => setTimeout(resolve, STATS_EVERY_MS));
        if (!signal.aborted) await loadStats();
      }
    })();

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
          live = data.online;
          drawOnline();
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
