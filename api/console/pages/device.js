// One device: presence and its history, telemetry, service state with its locks, filters,
// water per day, the ledger's latest records, command log, and the actions, each confirmed and
// followed until the device answers.

import { h, fill } from '../dom.js';
import { call, get } from '../api.js';
import { t } from '../i18n.js';
import { barChart } from '../chart.js';
import { badge, confirmDialog, dash, facts, failure, num, pager, section, table, when } from '../ui.js';

const FOLLOW_MAX = 40; // polls of one command (each waits up to 10 s for a final state)
const SESSIONS_PER_PAGE = 10;

/** Why a connection ended, in words (the code itself in data-reason). */
function reason(code) {
  return code ? h('span', { class: 'reason', 'data-reason': code }, t(`offline.${code}`)) : dash();
}

/** "3 d 4 h", "2 h 5 min", "4 min 10 s", "42 s": the two largest units. */
function duration(total) {
  const d = Math.floor(total / 86400), hr = Math.floor((total % 86400) / 3600);
  const m = Math.floor((total % 3600) / 60), sec = total % 60;
  if (d) return t('dur.dh', { d, h: hr });
  if (hr) return t('dur.hm', { h: hr, m });
  if (m) return t('dur.ms', { m, s: sec });
  return t('dur.s', { s: sec });
}

function presence(stat) {
  return facts([
    [t('col.online'), badge(stat.online, t('yes'), t('no'))],
    [t('device.since'), when(stat.since)],
    [t('device.last_seen'), when(stat.last_seen)],
    [t('device.offline_at'), when(stat.offline_at)],
    [t('device.offline_reason'), reason(stat.offline_reason)],
    [t('device.node'), stat.node || dash()],
  ]);
}

function telemetry(stat) {
  const tds = stat.tds_in_ppm === null && stat.tds_out_ppm === null ? dash() : `${num(stat.tds_in_ppm)} / ${num(stat.tds_out_ppm)}`;
  return facts([
    [t('device.signal'), num(stat.signal)],
    [t('device.tds'), tds],
    [t('device.temperature'), stat.temperature_dc === null ? dash() : `${Math.trunc(stat.temperature_dc / 10)}.${Math.abs(stat.temperature_dc % 10)}`],
    [t('device.flow_total'), num(stat.flow_total_ml)],
    [t('device.faults'), stat.fault_bits ? h('span', { class: 'badge alarm' }, `0x${stat.fault_bits.toString(16)}`) : num(stat.fault_bits)],
  ]);
}

function service(svc) {
  return facts([
    [t('device.mode'), svc.mode === null ? dash() : t(`type.${svc.mode}`)],
    [t('device.remaining'), num(svc.remaining_ml)],
    [t('device.expires'), when(svc.rental_expires_at)],
    [t('device.locked'), h('span', { id: 'svc-locked' }, badge(!svc.locked, t('no'), t('yes')))],
    [t('device.reasons'), h('span', { id: 'svc-reasons' }, svc.lock_reasons.map((r) => t(`reason.${r}`)).join(', ') || dash())],
  ]);
}

function filters(stat) {
  return table([
    { label: t('col.filter'), cell: (f) => `${f.order}. ${f.name}` },
    { label: t('col.life'), cell: (f) => h('span', { class: f.below_threshold ? 'badge alarm' : '' }, `${f.remaining_pct}% · ${num(f.remaining_h)} h`) },
  ], stat.filters);
}

function sessionLog(rows) {
  return table([
    { label: t('col.since'), cell: (s) => when(s.since) },
    { label: t('col.ended'), cell: (s) => (s.online ? badge(true, t('fleet.online'), '') : when(s.ended_at)) },
    { label: t('col.duration'), cell: (s) => duration(s.duration_s) },
    { label: t('device.offline_reason'), cell: (s) => reason(s.reason) },
    { label: t('device.last_seen'), cell: (s) => when(s.last_seen) },
    { label: t('device.node'), cell: (s) => s.node || dash() },
  ], rows, { id: 'session-log' });
}

function records(rows) {
  return table([
    { label: t('col.rec'), cell: (r) => h('span', { class: 'mono' }, `${r.boot}/${r.rec}`) },
    { label: t('col.kind'), cell: (r) => (r.kind === 'event' ? `${t('record.event')} ${r.event_kind}` : t('record.telemetry')) },
    { label: t('col.delta'), cell: (r) => num(r.delta_ml) },
    { label: t('device.flow_total'), cell: (r) => num(r.flow_total_ml) },
    { label: t('col.received'), cell: (r) => when(r.received_tms) },
    { label: t('col.device_time'), cell: (r) => when(r.device_tms) },
  ], rows, { id: 'record-log' });
}

function commandLog(rows) {
  return table([
    { label: '#', key: 'cid' },
    { label: t('col.op'), key: 'op' },
    { label: t('col.cmdstate'), cell: (c) => h('span', { class: `cmd ${c.state}` }, c.state) },
    { label: t('col.issuer'), key: 'issuer' },
    { label: t('col.at'), cell: (c) => when(c.created_at) },
  ], rows, { id: 'command-log' });
}

export default {
  match: /^\/devices\/([A-Z0-9]{16})$/,
  path: '/devices/:did',
  async render(main, { me, signal, params }) {
    const did = params[1];
    const base = `/devices/${encodeURIComponent(did)}`;
    const boxes = Object.fromEntries(['presence', 'sessions', 'telemetry', 'service', 'filters', 'water', 'records', 'commands']
      .map((k) => [k, h('div', { id: `device-${k}` }, '…')]));
    const status = h('p', { class: 'action-status', id: 'action-status', role: 'status' });
    const head = h('div', { class: 'title' }, h('h1', { id: 'device-name' }, did));
    const actions = h('div', { class: 'actions', id: 'device-actions' });
    fill(main, head,
      h('div', { class: 'grid' },
        section(t('device.presence'), boxes.presence),
        section(t('device.telemetry'), boxes.telemetry),
        section(t('device.service'), boxes.service),
        section(t('device.filters'), boxes.filters)),
      section(t('device.actions'), actions, status),
      section(t('device.sessions'), boxes.sessions),
      section(t('device.water'), boxes.water),
      section(t('device.records'), boxes.records),
      section(t('device.commands'), boxes.commands));

    const device = (await get(base, { signal })).data; // 404 outside the caller's subtree
    fill(head, h('h1', { id: 'device-name' }, device.name || did),
      h('span', { class: 'mono' }, did), badge(device.online, t('fleet.online'), t('fleet.offline')));

    const load = async (key, path, render) => {
      try { fill(boxes[key], render((await get(path, { signal })).data)); }
      catch (error) { if (!signal.aborted) fill(boxes[key], failure(error)); }
    };
    const sessions = pager(boxes.sessions,
      (limit, offset) => get(`${base}/sessions?limit=${limit}&offset=${offset}`, { signal }),
      sessionLog, SESSIONS_PER_PAGE);
    const refresh = () => Promise.all([
      load('presence', `${base}/stat`, presence),
      sessions.show(),
      load('telemetry', `${base}/stat`, telemetry),
      load('filters', `${base}/stat`, filters),
      load('service', `${base}/svc`, service),
      load('commands', `${base}/commands?limit=20`, commandLog),
      load('records', `${base}/records?limit=20`, records),
    ]);
    load('water', `${base}/statistics`, (stats) => barChart(
      stats.daily.map((d) => ({ label: d.date.slice(5), value: d.water_ml })), t('device.water'), 5));

    async function follow(label, answer) {
      let command = answer.data;
      for (let i = 0; i < FOLLOW_MAX && !signal.aborted; i++) {
        status.textContent = t('act.command', { cid: command.cid, state: command.state });
        status.dataset.state = command.state;
        if (command.final) break;
        command = (await get(`${base}/commands/${command.cid}?wait_ms=10000`, { signal })).data;
      }
      await refresh();
    }

    async function act(op, fields, send) {
      const label = t(`act.${op}`);
      const values = await confirmDialog(t('act.confirm_text', { action: label, did }), fields);
      if (!values) return;
      status.textContent = '…';
      delete status.dataset.state;
      try {
        const answer = await send(values);
        if (answer.data && answer.data.cid !== undefined) await follow(label, answer);
        else { status.textContent = t('act.applied', { action: label }); await refresh(); }
      } catch (error) {
        status.textContent = t('act.failed', { action: label, message: error.message });
        status.dataset.state = 'error';
        await refresh();
      }
    }
    const command = (body) => call('POST', `${base}/commands`, body, { signal });
    const change = (body) => call('PUT', `${base}/svc`, body, { signal });
    const reason = { name: 'reason', label: t('act.reason') };
    const buttons = [
      ['lock', [reason], (v) => command({ op: 'lock', reason: v.reason })],
      ['unlock', [reason], (v) => command({ op: 'unlock', reason: v.reason })],
      ['top_up', [{ name: 'ml', label: t('act.ml'), type: 'number', min: 1, required: true }], (v) => change({ op: 'top_up', ml: Number(v.ml) }), true],
      ['extend', [{ name: 'days', label: t('act.days'), type: 'number', min: 1, required: true, value: 30 }], (v) => change({ op: 'extend', days: Number(v.days) }), true],
      ['dispense', [{ name: 'ml', label: t('act.ml'), type: 'number', min: 1, required: true, value: 250 }], (v) => command({ op: 'dispense', ml: Number(v.ml) })],
      ['reset_filter', [{ name: 'filter', label: t('act.filter'), type: 'number', min: 0, required: true, value: 1 }], (v) => command({ op: 'reset_filter', filter: Number(v.filter) })],
    ];
    const mayChange = ['platform', 'vendor'].includes(me.role);
    fill(actions, buttons.filter(([, , , svc]) => !svc || mayChange).map(([op, fields, send]) =>
      h('button', { type: 'button', class: op === 'lock' ? 'danger' : 'secondary', 'data-action': op, onclick: () => act(op, fields, send) }, t(`act.${op}`))),
    h('a', { href: `#/tickets/new/${encodeURIComponent(did)}`, class: 'button secondary', id: 'device-new-ticket' }, t('ticket.new')));
    await refresh();
  },
};
