// Commissions (分销佣金, AE-01..03 of the commission API): the summary of the caller's scope
// (a vendor: its earners'; an agent or dealer: its own), the commissions with a state filter,
// the withdrawals, a node's commission list (佣金列表, pages/agent-commissions.js), and for an
// agent or a dealer (the earners who sign in here) a withdrawal request (AE-03): the amount is
// typed in yuan and sent as integer fen parsed from the decimal text (never a float),
// confirmed, with the API's refusal (over what is available, below the minimum, too soon)
// shown under the form; then the summary and the withdrawals are read again.

import { h, fill } from '../dom.js';
import { call, get } from '../api.js';
import { t } from '../i18n.js';
import { cards, confirmDialog, failure, pager, parseYuan, query, requestId, section, select, table, when, yuan } from '../ui.js';

const SUMMARY = ['available', 'pending', 'payout', 'withdrawn', 'reversed', 'debt', 'earned'];
const EARNERS = new Set(['agent', 'dealer']); // POST /commission: members too, who use the app

/** The node picker: opens a node's commission list. */
function nodePicker(agents) {
  if (!agents.length) return null;
  const choice = h('select', { name: 'agent', id: 'agentc-pick' },
    agents.map((a) => h('option', { value: a.id }, `${a.name} (${t(`level.${a.level}`)} #${a.id})`)));
  return h('form', { class: 'toolbar', id: 'agentc-open', onsubmit: (event) => {
    event.preventDefault();
    location.hash = `#/agents/${encodeURIComponent(choice.value)}/commissions`;
  } }, h('label', null, t('agentc.node'), choice), h('button', { type: 'submit', class: 'secondary' }, t('agentc.open')));
}

/** The API's refusal of a withdrawal in the reader's language where it is a known one (the
 * API's own words otherwise). */
function refusal(error, fen, available) {
  const minimum = /at least (\d+) fen/.exec(error.message);
  if (error.code === 'insufficient_funds') return t('withdraw.insufficient', { amount: yuan(fen), available: yuan(available) });
  if (error.code === 'rate_limited' && error.retryAfter) return t('withdraw.too_soon', { s: error.retryAfter });
  if (error.code === 'invalid_input' && minimum) return t('withdraw.minimum', { amount: yuan(Number(minimum[1])) });
  return t('withdraw.failed', { message: error.message });
}

/** The withdrawal form; `done()` after the API took a request. */
function withdrawForm(signal, available, done) {
  const error = h('p', { class: 'error', role: 'alert', id: 'withdraw-error', hidden: true });
  const amount = h('input', { name: 'amount', id: 'withdraw-amount', required: true, inputmode: 'decimal',
    autocomplete: 'off', placeholder: '100.00' });
  const submit = h('button', { type: 'submit', class: 'primary' }, t('withdraw.submit'));
  let pending = null; // {fen, id}: kept after a request whose answer never came, so a retry is the same request
  const fail = (message) => { error.textContent = message; error.hidden = false; };
  const form = h('form', { class: 'withdraw', id: 'withdraw-form', onsubmit: async (event) => {
    event.preventDefault();
    error.hidden = true;
    const fen = parseYuan(amount.value);
    if (fen === null || fen <= 0) { fail(t('withdraw.bad_amount')); return; }
    if (!(await confirmDialog(t('withdraw.confirm', { amount: yuan(fen) })))) return;
    if (!pending || pending.fen !== fen) pending = { fen, id: requestId('console') };
    submit.disabled = true;
    try {
      const answer = await call('POST', '/commission', { amount: fen, request_id: pending.id }, { signal });
      pending = null;
      amount.value = '';
      await done(answer.data);
    } catch (failed) {
      if (signal.aborted) return;
      if (failed.status) pending = null; // the API answered: nothing was taken, a new try is a new request
      fail(refusal(failed, fen, available()));
    } finally { submit.disabled = false; }
  } },
  h('label', null, t('withdraw.amount'), amount),
  h('div', { class: 'buttons' }, submit),
  h('p', { class: 'note' }, t('withdraw.note')),
  error);
  return form;
}

export default {
  path: '/commissions',
  nav: 'commissions',
  async render(main, { me, signal }) {
    const summary = h('div', { id: 'commission-summary' }, '…');
    const status = h('p', { class: 'action-status', id: 'withdraw-status', role: 'status' });
    const form = h('form', { class: 'filters', id: 'commission-filters' },
      select('state', t('col.state'), [1, 2, 3].map((s) => [s, t(`commission.state.${s}`)])),
      h('button', { type: 'submit', class: 'primary' }, t('list.apply')));
    const box = h('div', { id: 'commission-list' });
    const withdrawals = h('div', { id: 'withdrawal-list' });
    const picker = h('div', { id: 'agentc-picker' });
    let available = null;
    const withdraw = EARNERS.has(me.role) ? withdrawForm(signal, () => available, async (w) => {
      status.textContent = t('withdraw.requested', { amount: yuan(w.amount), id: w.id });
      status.dataset.state = 'succeeded';
      await Promise.all([showSummary(), withdrawalList.reset()]);
    }) : null;
    main.append(h('h1', null, t('nav.commissions')), summary,
      withdraw ? section(t('withdraw.title'), withdraw, status) : null,
      section(t('commission.list'), form, box),
      section(t('commission.withdrawals'), withdrawals),
      section(t('agentc.heading'), picker));

    async function showSummary() {
      try {
        const data = (await get('/commission/summary', { signal })).data;
        available = data.available;
        fill(summary, cards('commission', SUMMARY.map((k) => [k, t(`commission.${k}`), yuan(data[k])])));
      } catch (error) { if (!signal.aborted) fill(summary, failure(error)); }
    }

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
      { label: t('col.amount'), cell: (w) => h('span', { class: 'amount', title: t('withdraw.fen', { fen: w.amount }) }, yuan(w.amount)) },
      { label: t('col.state'), cell: (w) => t(`withdrawal.state.${w.state}`) },
      { label: t('col.channel'), key: 'channel' },
      { label: t('col.created'), cell: (w) => when(w.create_tms) },
    ];
    const withdrawalList = pager(withdrawals,
      (limit, offset) => get(`/commission/withdrawals?limit=${limit}&offset=${offset}`, { signal }),
      (rows) => table(withdrawalColumns, rows, { class: 'withdrawals stack' }));
    const showPicker = async () => {
      const agents = await get('/agents?limit=100', { signal }).then((a) => a.data).catch(() => []);
      fill(picker, nodePicker(agents) || h('p', { class: 'empty' }, t('list.empty')));
    };
    await Promise.all([showSummary(), list.show(), withdrawalList.show(), showPicker()]);
  },
};
