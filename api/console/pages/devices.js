// Device list (AB-01) with search and the list's own filters (state, mode, online, agent,
// vendor, low balance, filter due: docs/api-devices.md); a device id opens its page.

import { h } from '../dom.js';
import { get } from '../api.js';
import { t } from '../i18n.js';
import { badge, pager, query, select, table } from '../ui.js';

const DID = /^[A-Z0-9]{16}$/;

export function deviceLink(d) {
  return h('a', { href: `#/devices/${encodeURIComponent(d.did)}`, class: 'mono' }, d.did);
}

export default {
  path: '/devices',
  nav: 'devices',
  async render(main, { me, signal }) {
    const agents = await get('/agents?limit=100', { signal }).then((a) => a.data).catch(() => []);
    const form = h('form', { class: 'filters', id: 'device-filters' },
      h('label', null, t('list.search'), h('input', { name: 'search', type: 'search', id: 'device-search' })),
      select('state', t('list.state'), [0, 1, 2, 3].map((s) => [s, t(`state.${s}`)])),
      select('type', t('list.type'), [0, 1, 2, 3, 4, 8].map((s) => [s, t(`type.${s}`)])),
      select('online', t('list.online'), [['true', t('yes')], ['false', t('no')]]),
      select('low_balance', t('list.low_balance'), [['true', t('yes')], ['false', t('no')]]),
      select('filter_due', t('list.filter_due'), [['true', t('yes')], ['false', t('no')]]),
      agents.length ? select('agent_id', t('list.agent'), agents.map((a) => [a.id, `${a.name} (${t(`level.${a.level}`)})`])) : null,
      me.role === 'platform' ? h('label', null, t('list.vid'), h('input', { name: 'vid', maxlength: 4, size: 5 })) : null,
      h('button', { type: 'submit', class: 'primary' }, t('list.apply')));
    const box = h('div', { id: 'device-list' });
    main.append(h('h1', null, t('nav.devices')), form, box);
    const columns = [
      { label: t('col.did'), cell: deviceLink },
      { label: t('col.name'), cell: (d) => d.name || t('none') },
      { label: t('col.vid'), key: 'vid' },
      { label: t('col.type'), cell: (d) => t(`type.${d.type}`) },
      { label: t('col.state'), cell: (d) => t(`state.${d.state}`) },
      { label: t('col.online'), cell: (d) => badge(d.online, t('yes'), t('no')) },
    ];
    let filters = {};
    const list = pager(box, (limit, offset) => get(`/devices${query({ ...filters, limit, offset })}`, { signal }),
      (rows) => table(columns, rows, { class: 'devices' }));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const values = Object.fromEntries(new FormData(form));
      const search = (values.search || '').trim();
      delete values.search;
      if (DID.test(search.toUpperCase())) { location.hash = `#/devices/${search.toUpperCase()}`; return; }
      if (values.vid) values.vid = values.vid.toUpperCase();
      filters = { ...values, model: search };
      list.reset();
    });
    await list.show();
  },
};
