// Commissions (分销佣金, AE-01..03 of the commission API): the summary of the caller's scope
// (a vendor: its earners'; an agent or dealer: its own), the commissions with a state filter,
// and the withdrawals; amounts in yuan from integer fen.

import { h, fill } from '../dom.js';
import { get } from '../api.js';
import { t } from '../i18n.js';
import { cards, failure, pager, query, section, select, table, when, yuan } from '../ui.js';

const SUMMARY = ['available', 'pending', 'payout', 'withdrawn', 'reversed', 'debt', 'earned'];

export default {
  path: '/commissions',
  nav: 'commissions',
  async render(main, { signal }) {
    const summary = h('div', { id: 'commission-summary' }, '…');
    const form = h('form', { class: 'filters', id: 'commission-filters' },
      select('state', t('col.state'), [1, 2, 3].map((s) => [s, t(`commission.state.${s}`)])),
      h('button', { type: 'submit', class: 'primary' }, t('list.apply')));
    const box = h('div', { id: 'commission-list' });
    const withdrawals = h('div', { id: 'withdrawal-list' });
    main.append(h('h1', null, t('nav.commissions')), summary,
      section(t('commission.list'), form, box),
      section(t('commission.withdrawals'), withdrawals));

    get('/commission/summary', { signal }).then((answer) => {
      fill(summary, cards('commission', SUMMARY.map((k) => [k, t(`commission.${k}`), yuan(answer.data[k])])));
    }).catch((error) => { if (!signal.aborted) fill(summary, failure(error)); });

    const columns = [
      { label: t('col.order'), cell: (c) => h('span', { class: 'mono' }, c.order_id) },
      { label: t('col.level'), key: 'level' },
      { label: t('col.earner'), cell: (c) => h('span', { class: 'mono' }, c.earner) },
      { label: t('col.buyer'), cell: (c) => h('span', { class: 'mono' }, c.user_id) },
      { label: t('col.amount'), cell: (c) => yuan(c.amount) },
      { label: t('col.reversed'), cell: (c) => yuan(c.reversed) },
      { label: t('col.state'), cell: (c) => t(`commission.state.${c.state}`) },
      { label: t('col.created'), cell: (c) => when(c.create_tms) },
    ];
    let filters = {};
    const list = pager(box,
      (limit, offset) => get(`/commission${query({ ...filters, sort: 'create_tms', order: 'desc', limit, offset })}`, { signal }),
      (rows) => table(columns, rows, { class: 'commissions stack' }));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      filters = Object.fromEntries(new FormData(form));
      list.reset();
    });
    const withdrawalColumns = [
      { label: t('col.id'), key: 'id' },
      { label: t('col.earner'), cell: (w) => h('span', { class: 'mono' }, w.earner) },
      { label: t('col.amount'), cell: (w) => yuan(w.amount) },
      { label: t('col.state'), cell: (w) => t(`withdrawal.state.${w.state}`) },
      { label: t('col.channel'), key: 'channel' },
      { label: t('col.created'), cell: (w) => when(w.create_tms) },
    ];
    await Promise.all([
      list.show(),
      pager(withdrawals, (limit, offset) => get(`/commission/withdrawals?limit=${limit}&offset=${offset}`, { signal }),
        (rows) => table(withdrawalColumns, rows, { class: 'stack' })).show(),
    ]);
  },
};
