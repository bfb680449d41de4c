// An agent's or dealer's commission list (佣金列表: GET /agents/{id}/commissions): what the node
// and the dealers under it earned, with totals per level, per month and per earner, the
// commissions newest first, a period filter (UTC days), and the CSV of every commission. The
// CSV is fetched with the bearer header (a plain link would carry no token) and handed to the
// browser as a Blob download. Reached from the agents tree and the commissions page.

import { h, fill } from '../dom.js';
import { download, get } from '../api.js';
import { t } from '../i18n.js';
import { cards, pager, query, section, table, when, yuan } from '../ui.js';

const DAY_MS = 86_400_000;

/** "2026-12-06" (a day, UTC) -> its start as ISO 8601 with Z; `next` the day after's. */
function dayStart(day, next = false) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(day || '')) return '';
  const start = Date.parse(`${day}T00:00:00Z`);
  if (Number.isNaN(start)) return '';
  return `${new Date(start + (next ? DAY_MS : 0)).toISOString().slice(0, 19)}Z`;
}

const totalsColumns = (first) => [
  first,
  { label: t('agentc.count'), key: 'count' },
  { label: t('col.amount'), cell: (x) => yuan(x.amount) },
  { label: t('col.reversed'), cell: (x) => yuan(x.reversed) },
  { label: t('agentc.kept'), cell: (x) => yuan(x.kept) },
];

export default {
  match: /^\/agents\/([1-9][0-9]{0,9})\/commissions$/,
  path: '/agents/:id/commissions',
  title: 'commissions',
  async render(main, { signal, params }) {
    const id = params[1];
    const head = h('h1', { id: 'agentc-title' }, t('agentc.title', { name: `#${id}` }));
    const since = h('input', { type: 'date', name: 'since' });
    const until = h('input', { type: 'date', name: 'until' });
    const csvStatus = h('p', { class: 'action-status', id: 'agentc-csv-status', role: 'status' });
    const csv = h('button', { type: 'button', class: 'secondary', id: 'agentc-csv' }, t('agentc.csv'));
    const form = h('form', { class: 'toolbar', id: 'agentc-filters' },
      h('label', null, t('agentc.since'), since),
      h('label', null, t('agentc.until'), until),
      h('button', { type: 'submit', class: 'primary' }, t('list.apply')), csv);
    const totals = h('div', { id: 'agentc-totals' }, '…');
    const byLevel = h('div', { id: 'agentc-levels' });
    const byMonth = h('div', { id: 'agentc-months' });
    const byEarner = h('div', { id: 'agentc-earners' });
    const box = h('div', { id: 'agentc-list' });
    main.append(h('p', null, h('a', { href: '#/agents' }, `← ${t('nav.agents')}`), ' · ',
      h('a', { href: '#/commissions' }, t('nav.commissions'))),
    head, form, csvStatus, totals,
    h('div', { class: 'totals' }, section(t('agentc.by_level'), byLevel), section(t('agentc.by_month'), byMonth)),
    section(t('agentc.by_earner'), byEarner),
    section(t('commission.list'), box));

    const [agent, agents] = await Promise.all([
      get(`/agents/${encodeURIComponent(id)}`, { signal }).then((a) => a.data), // 404 outside the subtree
      get('/agents?limit=100', { signal }).then((a) => a.data).catch(() => []),
    ]);
    fill(head, t('agentc.title', { name: agent.name }), ' ',
      h('span', { class: 'badge' }, t(`level.${agent.level}`)), ' ', h('span', { class: 'muted' }, `#${agent.id}`));
    const names = new Map(agents.map((a) => [`agent:${a.id}`, a.name]));
    const earner = (key) => (names.has(key)
      ? [names.get(key), ' ', h('span', { class: 'muted mono' }, key)]
      : h('span', { class: 'mono' }, key));

    const period = () => ({ since: dayStart(since.value), until: dayStart(until.value, true) });
    const path = `/agents/${encodeURIComponent(id)}/commissions`;
    const columns = [
      { label: t('col.order'), cell: (c) => h('span', { class: 'mono' }, c.order_id) },
      { label: t('col.level'), key: 'level' },
      { label: t('col.earner'), cell: (c) => earner(c.earner) },
      { label: t('col.buyer'), cell: (c) => h('span', { class: 'mono' }, c.user_id) },
      { label: t('col.amount'), cell: (c) => yuan(c.amount) },
      { label: t('col.reversed'), cell: (c) => yuan(c.reversed) },
      { label: t('col.state'), cell: (c) => t(`commission.state.${c.state}`) },
      { label: t('col.created'), cell: (c) => when(c.create_tms) },
    ];
    function showTotals(data) {
      fill(totals, cards('agentc', [
        ['count', t('agentc.count'), String(data.totals.count)],
        ['amount', t('col.amount'), yuan(data.totals.amount)],
        ['reversed', t('col.reversed'), yuan(data.totals.reversed)],
        ['kept', t('agentc.kept'), yuan(data.totals.kept)],
      ]));
      fill(byLevel, table(totalsColumns({ label: t('col.level'), key: 'level' }), data.by_level, { class: 'stack' }));
      fill(byMonth, table(totalsColumns({ label: t('agentc.month'), key: 'month' }), data.by_month, { class: 'stack' }));
      fill(byEarner, table(totalsColumns({ label: t('col.earner'), cell: (x) => earner(x.earner) }), data.by_earner, { class: 'stack' }));
    }
    const list = pager(box, async (limit, offset) => {
      let answer;
      try { answer = await get(`${path}${query({ ...period(), limit, offset })}`, { signal }); } catch (error) {
        fill(totals);
        throw error;
      }
      showTotals(answer.data);
      return { total: answer.data.totals.count, data: answer.data.commissions };
    }, (rows) => table(columns, rows, { class: 'commissions stack' }));
    form.addEventListener('submit', (event) => { event.preventDefault(); list.reset(); });
    csv.addEventListener('click', async () => {
      csv.disabled = true;
      csvStatus.textContent = '…';
      delete csvStatus.dataset.state;
      try {
        const file = await download(`${path}${query({ ...period(), format: 'csv' })}`,
          { fallbackName: `commissions-agent-${id}.csv`, signal });
        csvStatus.textContent = t('agentc.csv_done', { name: file.name });
        csvStatus.dataset.state = 'succeeded';
      } catch (error) {
        if (signal.aborted) return;
        csvStatus.textContent = t('agentc.csv_failed', { message: error.message });
        csvStatus.dataset.state = 'error';
      } finally { csv.disabled = false; }
    });
    await list.show();
  },
};
