// Products (AC-01) of the caller's vendor, drafts included for admins.

import { h } from '../dom.js';
import { get } from '../api.js';
import { t } from '../i18n.js';
import { pager, table, yuan } from '../ui.js';

const STATES = { 0: 'draft', 1: 'published', 2: 'retired' };

export default {
  path: '/products',
  nav: 'products',
  async render(main, { signal }) {
    const box = h('div', { id: 'product-list' });
    main.append(h('h1', null, t('nav.products')), box);
    const columns = [
      { label: t('col.id'), cell: (p) => h('span', { class: 'mono' }, p.prod_id) },
      { label: t('col.name'), key: 'name' },
      { label: t('col.vid'), key: 'vid' },
      { label: t('col.price'), cell: (p) => yuan(p.price) },
      { label: t('col.billing'), key: 'billing' },
      { label: t('col.state'), cell: (p) => STATES[p.state] || String(p.state) },
    ];
    await pager(box, (limit, offset) => get(`/products?limit=${limit}&offset=${offset}`, { signal }),
      (rows) => table(columns, rows)).show();
  },
};
