// Tickets (AE-01..03): the queue of the caller's scope with its counts, filters by status and
// type, and the moves an operator makes: approve or refuse, dispatch (to a technician, or by
// hierarchy or distance), cancel; each confirmed, then the queue is read again. A ticket's id
// opens its history (its moves with their notes). "Open a ticket" (AE-03) names a device of
// the caller's scope, a type, a priority and the detail; it is confirmed, and the API's answer
// (an unknown device, one outside the scope) is shown under the form, which keeps its values.

import { h, fill } from '../dom.js';
import { call, get } from '../api.js';
import { t } from '../i18n.js';
import { cards, confirmDialog, failure, num, pager, query, select, table, when } from '../ui.js';
import { deviceLink } from './devices.js';

const STATUSES = [1, 2, 3, 4, 5, 6, 7];
const TYPES = [1, 2, 3, 4, 5, 6];
const OPEN = new Set([1, 2, 3, 4, 5]);
const MAX_DETAIL = 500; // models/tickets.py

/** The form that opens a ticket; calls `opened(ticket)` after the API created it. */
function newTicketForm(did, signal, opened) {
  const error = h('p', { class: 'error', role: 'alert', id: 'ticket-new-error', hidden: true });
  const device = h('input', { name: 'device_id', required: true, value: did || '', maxlength: 16,
    // api/tickets/shaping.py's DID_PATTERN in either case (the browser checks it before the submit
    // event; the value is upper-cased when it is sent)
    pattern: '[A-Za-z0-9]{4}[0-9]{8}[0-9A-Fa-f]{4}', title: t('ticket.new.did_hint'),
    autocomplete: 'off', spellcheck: 'false', class: 'mono upper', placeholder: 'AAAA00000001B90A' });
  const type = h('select', { name: 'type', required: true },
    h('option', { value: '' }, '…'), TYPES.map((x) => h('option', { value: x }, t(`ticket.type.${x}`))));
  const priority = h('select', { name: 'priority' },
    [1, 2, 3].map((x) => h('option', { value: x, selected: x === 2 }, t(`priority.${x}`))));
  const detail = h('textarea', { name: 'detail', rows: 3, maxlength: MAX_DETAIL });
  const submit = h('button', { type: 'submit', class: 'primary' }, t('ticket.new.submit'));
  const form = h('form', { class: 'new-ticket', id: 'ticket-new', onsubmit: async (event) => {
    event.preventDefault();
    error.hidden = true;
    device.value = device.value.trim().toUpperCase();
    if (!form.reportValidity()) return;
    const typeName = t(`ticket.type.${type.value}`);
    const confirmed = await confirmDialog(t('ticket.new.confirm', { type: typeName, did: device.value }));
    if (!confirmed) return;
    submit.disabled = true;
    try {
      const answer = await call('POST', '/tickets', {
        type: Number(type.value), device_id: device.value, priority: Number(priority.value), detail: detail.value,
      }, { signal });
      detail.value = '';
      type.value = '';
      await opened(answer.data);
    } catch (failed) {
      if (signal.aborted) return;
      // A 404 is a device that does not exist or is outside the caller's scope (the API
      // answers both alike); anything else in the API's words.
      error.textContent = t('ticket.new.failed', { message: failed.status === 404
        ? t('ticket.new.not_found', { did: device.value }) : failed.message });
      error.hidden = false;
    } finally { submit.disabled = false; }
  } },
  h('label', null, t('col.did'), device),
  h('label', null, t('col.ticket_type'), type),
  h('label', null, t('col.priority'), priority),
  h('label', { class: 'wide' }, t('col.detail'), detail),
  error,
  h('div', { class: 'buttons' }, submit));
  return h('details', { class: 'card', id: 'ticket-new-box', open: Boolean(did) },
    h('summary', null, t('ticket.new')), form);
}

/** The moves an admin may make on a ticket in `status`: [action, ...]. */
function movesOf(status) {
  if (status === 1) return ['approve', 'refuse', 'cancel'];
  if (status === 2) return ['dispatch', 'cancel'];
  if (status === 3) return ['redispatch', 'cancel'];
  return OPEN.has(status) ? ['cancel'] : [];
}

/** A ticket's moves (who, when, what, with notes) in a dialog; notes are shown as text. */
async function showMoves(tid, signal) {
  const box = h('div', { id: 'ticket-moves' }, '…');
  const dialog = h('dialog', { class: 'confirm moves' },
    h('h2', null, t('ticket.moves', { tid: `T${tid}` })), box,
    h('div', { class: 'buttons' }, h('button', { type: 'button', class: 'secondary', onclick: () => { dialog.close(); dialog.remove(); } }, t('act.close'))));
  document.body.append(dialog);
  dialog.showModal();
  try {
    const moves = (await get(`/tickets/${encodeURIComponent(tid)}/moves`, { signal })).data;
    fill(box, table([
      { label: t('col.at'), cell: (m) => when(m.tms) },
      { label: t('ticket.move'), cell: (m) => `${t(`ticket.status.${m.from_status}`)} → ${t(`ticket.status.${m.to_status}`)}` },
      { label: t('col.issuer'), cell: (m) => `${m.actor_role}:${m.actor_id}` },
      { label: t('ticket.note'), key: 'note' },
    ], moves, { class: 'stack' }));
  } catch (error) { if (!signal.aborted) fill(box, failure(error)); }
}

export default {
  path: '/tickets',
  match: /^\/tickets(?:\/new\/([A-Z0-9]{16}))?$/, // #/tickets/new/{did}: the form, for that device
  nav: 'tickets',
  async render(main, { signal, params }) {
    const counts = h('div', { id: 'ticket-counts' }, '…');
    const status = h('p', { class: 'action-status', id: 'ticket-status', role: 'status' });
    const box = h('div', { id: 'ticket-list' });
    const form = h('form', { class: 'filters', id: 'ticket-filters' },
      select('status', t('col.state'), STATUSES.map((s) => [s, t(`ticket.status.${s}`)])),
      select('type', t('col.ticket_type'), TYPES.map((s) => [s, t(`ticket.type.${s}`)])),
      h('button', { type: 'submit', class: 'primary' }, t('list.apply')));
    const opening = newTicketForm(params[1], signal, async (ticket) => {
      status.textContent = t('ticket.new.opened', { tid: `T${ticket.ticket_id}` });
      status.dataset.state = 'succeeded';
      await Promise.all([showCounts(), list.reset()]);
    });
    main.append(h('h1', null, t('nav.tickets')), counts, opening, form, status, box);

    const technicians = await get('/technicians?limit=100', { signal }).then((a) => a.data).catch(() => []);
    const byId = new Map(technicians.map((x) => [x.id, x]));
    const technicianName = (id) => (id === null ? t('none') : (byId.get(id)?.name ?? `#${id}`));

    async function showCounts() {
      try {
        const s = (await get('/tickets/summary', { signal })).data;
        fill(counts, cards('tickets', [
          ['open', t('ticket.open'), num(s.open)],
          ['overdue', t('ticket.overdue'), num(s.overdue)],
          ...[1, 2, 3, 4].map((k) => [`s${k}`, t(`ticket.status.${k}`), num(s.by_status[k] ?? 0)]),
        ]));
      } catch (error) { if (!signal.aborted) fill(counts, failure(error)); }
    }

    async function act(ticket, action) {
      const tid = ticket.ticket_id;
      const note = { name: 'note', label: t('ticket.note'), maxlength: 255 };
      const dispatching = action === 'dispatch' || action === 'redispatch';
      const fields = dispatching ? [{
        name: 'to', label: t('ticket.technician'), required: true, value: 'hierarchy',
        options: [['hierarchy', t('ticket.by_hierarchy')], ['distance', t('ticket.by_distance')],
          ...technicians.map((x) => [`id:${x.id}`, `${x.name} (${t(`work.${x.work_state}`)})`])],
      }, note] : [note];
      const label = t(`ticket.act.${action}`);
      const values = await confirmDialog(t('ticket.confirm', { action: label, tid: `T${tid}` }), fields);
      if (!values) return;
      const path = `/tickets/${encodeURIComponent(tid)}`;
      status.textContent = '…';
      delete status.dataset.state;
      try {
        if (action === 'approve' || action === 'refuse') {
          await call('POST', `${path}/approve`, { check_result: action === 'approve', note: values.note }, { signal });
        } else if (dispatching) {
          const to = values.to.startsWith('id:') ? { technician_id: Number(values.to.slice(3)) } : { mode: values.to };
          const answer = await call('POST', `${path}/dispatch`, { ...to, note: values.note }, { signal });
          status.textContent = t('ticket.dispatched', { tid: `T${tid}`, name: technicianName(answer.data.technician_id) });
        } else {
          await call('POST', `${path}/cancel`, { note: values.note }, { signal });
        }
        if (!dispatching) status.textContent = t('act.applied', { action: label });
        status.dataset.state = 'succeeded';
      } catch (error) {
        status.textContent = t('act.failed', { action: label, message: error.message });
        status.dataset.state = 'error';
      }
      await Promise.all([showCounts(), list.show()]);
    }

    const columns = [
      { label: t('col.ticket'), cell: (x) => h('button', { type: 'button', class: 'link mono', 'data-moves': x.ticket_id, title: t('ticket.history'),
        onclick: () => showMoves(x.ticket_id, signal) }, `T${x.ticket_id}`) },
      { label: t('col.ticket_type'), cell: (x) => t(`ticket.type.${x.type}`) },
      { label: t('col.state'), cell: (x) => h('span', { class: `badge ticket-${x.status}` }, t(`ticket.status.${x.status}`)) },
      { label: t('col.priority'), cell: (x) => t(`priority.${x.priority}`) },
      { label: t('device.actions'), cell: (x) => h('span', { class: 'actions' }, movesOf(x.status).map((action) =>
        h('button', { type: 'button', class: action === 'cancel' || action === 'refuse' ? 'secondary small' : 'primary small',
          'data-action': action, 'data-ticket': x.ticket_id, onclick: () => act(x, action) }, t(`ticket.act.${action}`)))) },
      { label: t('ticket.technician'), cell: (x) => technicianName(x.technician_id) },
      { label: t('col.did'), cell: (x) => (x.device_id ? deviceLink({ did: x.device_id }) : t('none')) },
      { label: t('col.detail'), cell: (x) => h('span', { class: 'detail', title: x.detail }, x.detail || t('none')) },
      { label: t('col.appoint'), cell: (x) => when(x.appoint_tms) },
      { label: t('col.created'), cell: (x) => when(x.create_tms) },
    ];
    let filters = {};
    const list = pager(box,
      (limit, offset) => get(`/tickets${query({ ...filters, sort: 'create_tms', order: 'desc', limit, offset })}`, { signal }),
      (rows) => table(columns, rows, { class: 'tickets stack' }));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      filters = Object.fromEntries(new FormData(form));
      list.reset();
    });
    await Promise.all([showCounts(), list.show()]);
  },
};
