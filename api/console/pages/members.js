// Members (AA-01 list) of the caller's subtree.

import { h } from '../dom.js';
import { get } from '../api.js';
import { t } from '../i18n.js';
import { pager, query, table, when } from '../ui.js';

export default {
  path: '/members',
  nav: 'members',
  async render(main, { signal }) {
    const name = h('input', { name: 'name', type: 'search' });
    const box = h('div', { id: 'member-list' });
    const columns = [
      { label: t('col.uid'), cell: (m) => h('span', { class: 'mono' }, m.uid) },
      { label: t('col.name'), key: 'name' },
      { label: t('col.mobile'), key: 'mobile' },
      { label: t('col.vid'), key: 'vid' },
      { label: t('col.state'), cell: (m) => t(`state.${m.state}`) },
      { label: t('col.reg'), cell: (m) => when(m.reg_tms) },
    ];
    const list = pager(box, (limit, offset) => get(`/users${query({ name: name.value.trim(), limit, offset })}`, { signal }),
      (rows) => table(columns, rows));
    main.append(h('h1', null, t('nav.members')),
      h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); list.reset(); } },
        h('label', null, t('col.name'), name), h('button', { type: 'submit', class: 'primary' }, t('list.apply'))),
      box);
    await list.show();
  },
};
