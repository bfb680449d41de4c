// Orders (AD-01), newest first.

import { h } from '../dom.js';
import { get } from '../api.js';
import { t } from '../i18n.js';
import { pager, table, when, yuan } from '../ui.js';

export default {
  path: '/orders',
  nav: 'orders',
  async render(main, { signal }) {
    const box = h('div', { id: 'order-list' });
    main.append(h('h1', null, t('nav.orders')), box);
    const columns = [
      { label: t('col.order'), cell: (o) => h('span', { class: 'mono' }, o.order_id) },
      { label: t('col.state'), key: 'state_name' },
      { label: t('col.uid'), key: 'user_id' },
      { label: t('col.total'), cell: (o) => yuan(o.amounts.total) },
      { label: t('col.created'), cell: (o) => when(o.create_tms) },
    ];
    await pager(box, (limit, offset) => get(`/orders?sort=create_tms&order=desc&limit=${limit}&offset=${offset}`, { signal }),
      (rows) => table(columns, rows)).show();
  },
};
