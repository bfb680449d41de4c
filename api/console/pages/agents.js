// Vendors, agents and dealers as a tree (the caller's subtree: GET /vendors for the platform,
// GET /agents for everyone); each node links to its commission list (pages/agent-commissions.js).

import { h } from '../dom.js';
import { get } from '../api.js';
import { t } from '../i18n.js';
import { section } from '../ui.js';

async function all(path, signal) {
  const rows = [];
  for (let offset = 0; offset < 1000; offset += 100) {
    const answer = await get(`${path}${path.includes('?') ? '&' : '?'}limit=100&offset=${offset}`, { signal });
    rows.push(...answer.data);
    if (rows.length >= answer.total) break;
  }
  return rows;
}

function node(a, children) {
  return h('li', { 'data-agent': a.id },
    h('span', { class: 'badge' }, t(`level.${a.level}`)), ' ', a.name, ' ',
    h('span', { class: 'muted' }, `#${a.id} · ${a.user || ''} · ${t(`state.${a.state}`)}`), ' ',
    h('a', { href: `#/agents/${a.id}/commissions`, 'data-commissions': a.id }, t('agentc.link')),
    children.length ? h('ul', null, children.map((c) => node(c, []))) : null);
}

export default {
  path: '/agents',
  nav: 'agents',
  roles: ['platform', 'vendor', 'agent', 'dealer'],
  async render(main, { me, signal }) {
    const [agents, vendors] = await Promise.all([
      all('/agents', signal),
      me.role === 'platform' ? all('/vendors', signal) : Promise.resolve([]),
    ]);
    const byParent = new Map();
    for (const a of agents) {
      const key = a.parent ?? `v:${a.vid}`;
      byParent.set(key, [...(byParent.get(key) || []), a]);
    }
    const ids = new Set(agents.map((a) => a.id));
    // Roots: agents under a vendor, and nodes whose parent the caller cannot see (itself).
    const roots = agents.filter((a) => a.parent === null || !ids.has(a.parent));
    const vids = [...new Set([...vendors.map((v) => v.vid), ...roots.map((a) => a.vid)])].sort();
    const names = new Map(vendors.map((v) => [v.vid, v.name]));
    main.append(h('h1', null, t('nav.agents')), ...vids.map((vid) => section(
      `${t('agents.vendor')} ${vid}${names.get(vid) ? ` · ${names.get(vid)}` : ''}`,
      h('ul', { class: 'tree' }, roots.filter((a) => a.vid === vid).map((a) => node(a, byParent.get(a.id) || []))))));
  },
};
