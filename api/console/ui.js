// Pieces every page uses: tables, formats, a confirmation dialog, errors.

import { h, fill } from './dom.js';
import { t } from './i18n.js';

export const dash = () => t('none');

/** "2026-12-06 03:04" from an ISO 8601 UTC timestamp (shown in UTC, marked as such). */
export function when(iso) {
  return iso ? `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC` : dash();
}

/** Yuan from integer fen, without floating point: 298000 -> "2,980.00". */
export function yuan(fen) {
  if (fen === null || fen === undefined) return dash();
  const sign = fen < 0 ? '-' : '';
  const abs = Math.abs(fen);
  return `${sign}${Math.floor(abs / 100).toLocaleString('en')}.${String(abs % 100).padStart(2, '0')}`;
}

/** Integer fen from a yuan amount typed by a person ("12", "12.3", "12.34", "1,200.50"),
 * parsed as a decimal string, never through floating point; null when it is not one (a sign,
 * more than two decimals, letters, or more than `maxFen`). */
export function parseYuan(text, maxFen = 10 ** 11) {
  const match = /^(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{0,2}))?$/.exec(String(text ?? '').trim());
  if (!match) return null;
  const whole = match[1].replace(/,/g, '').replace(/^0+(?=\d)/, '');
  if (whole.length > 12) return null;
  const fen = Number(whole) * 100 + Number((match[2] || '').padEnd(2, '0'));
  return Number.isSafeInteger(fen) && fen <= maxFen ? fen : null;
}

/** A client request id (for requests the API makes idempotent): time and 64 random bits. */
export function requestId(prefix) {
  const bits = crypto.getRandomValues(new Uint32Array(2));
  return `${prefix}-${Date.now().toString(36)}-${bits[0].toString(36)}${bits[1].toString(36)}`;
}

export const num = (value) => (value === null || value === undefined ? dash() : Number(value).toLocaleString('en'));

export function badge(on, yes, no) {
  return h('span', { class: `badge ${on ? 'on' : 'off'}` }, on ? yes : no);
}

/** A table: columns [{key, label, cell(row) -> node or text}]. */
export function table(columns, rows, attrs = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, t('list.empty'));
  return h('div', { class: 'scroll' },
    h('table', attrs,
      h('thead', null, h('tr', null, columns.map((c) => h('th', null, c.label)))),
      h('tbody', null, rows.map((row) => h('tr', null,
        columns.map((c) => h('td', { 'data-label': c.label }, c.cell ? c.cell(row) : row[c.key] ?? dash())))))));
}

/** Label/value pairs as a definition list. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.flatMap(([label, value]) => [h('dt', null, label), h('dd', null, value ?? dash())]));
}

export function section(title, ...body) {
  return h('section', { class: 'card' }, h('h2', null, title), ...body);
}

export function failure(error) {
  return h('p', { class: 'error', role: 'alert' }, t('error.load', { message: error.message }));
}

/** Ask before doing: resolves with the form's values, or null when cancelled. A field with
 * `options` [[value, text]] is a select. */
export function confirmDialog(text, fields = []) {
  return new Promise((resolve) => {
    const inputs = fields.map((f) => h('label', null, f.label, f.options
      ? h('select', { name: f.name, required: f.required },
        f.options.map(([value, text]) => h('option', { value, selected: String(value) === String(f.value ?? '') }, text)))
      : h('input', { name: f.name, type: f.type || 'text', value: f.value ?? '', required: f.required, min: f.min, maxlength: f.maxlength })));
    const dialog = h('dialog', { class: 'confirm' });
    const close = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    const form = h('form', { method: 'dialog', onsubmit: (event) => {
      event.preventDefault();
      if (!form.reportValidity()) return;
      close(Object.fromEntries(fields.map((f, i) => [f.name, inputs[i].querySelector('input, select').value])));
    } },
    h('p', null, text), ...inputs,
    h('div', { class: 'buttons' },
      h('button', { type: 'button', class: 'secondary', onclick: () => close(null) }, t('act.cancel')),
      h('button', { type: 'submit', class: 'primary' }, t('act.confirm'))));
    dialog.append(form);
    dialog.addEventListener('cancel', () => close(null));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Loads a list page by page: renders into `box`, with previous/next. */
export function pager(box, load, render, limit = 20) {
  let offset = 0;
  async function show() {
    let answer;
    try { answer = await load(limit, offset); } catch (error) { fill(box, failure(error)); return; }
    const total = answer.total;
    const to = Math.min(offset + limit, total);
    fill(box, render(answer.data), h('nav', { class: 'pager' },
      h('button', { type: 'button', disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - limit); show(); } }, t('list.prev')),
      h('span', null, t('list.page', { from: total ? offset + 1 : 0, to, total })),
      h('button', { type: 'button', disabled: to >= total, onclick: () => { offset += limit; show(); } }, t('list.next'))));
  }
  return { show, reset() { offset = 0; return show(); } };
}

export function query(params) {
  const pairs = Object.entries(params).filter(([, v]) => v !== '' && v !== null && v !== undefined);
  return pairs.length ? `?${new URLSearchParams(pairs)}` : '';
}

/** Count cards: [[key, label, value]] -> the overview's stat cards (ids `${prefix}-${key}`). */
export function cards(prefix, items) {
  return h('div', { class: 'cards' }, items.map(([key, label, value]) =>
    h('div', { class: `stat ${key}` }, h('span', null, label), h('strong', { class: 'value', id: `${prefix}-${key}` }, value))));
}

/** A select of a list's filter form, with "all" first. */
export function select(name, label, options, value = '') {
  return h('label', null, label, h('select', { name },
    h('option', { value: '' }, t('list.all')),
    options.map(([v, text]) => h('option', { value: v, selected: String(v) === String(value) }, text))));
}
