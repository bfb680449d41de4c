// The frame: sign-in, the navigation, the language switch and a hash router. Each resource
// page is a module of pages/ exporting {path, nav, roles, render}; adding one is one import
// and one entry in PAGES.

import { h, fill } from './dom.js';
import { ApiError, login, logout, onSessionEnd, session } from './api.js';
import { lang, setLang, setPerson, t } from './i18n.js';
import overview from './pages/overview.js';
import map from './pages/map.js';
import devices from './pages/devices.js';
import device from './pages/device.js';
import members from './pages/members.js';
import agents from './pages/agents.js';
import products from './pages/products.js';
import orders from './pages/orders.js';
import tickets from './pages/tickets.js';
import commissions from './pages/commissions.js';
import agentCommissions from './pages/agent-commissions.js';

const PAGES = [overview, map, devices, device, members, agents, products, orders, tickets, commissions, agentCommissions];
const root = document.getElementById('app');
let current = null; // {controller}: the page on screen, aborted when it is left

function loginPage() {
  const message = h('p', { class: 'error', role: 'alert', hidden: true });
  const user = h('input', { name: 'user', autocomplete: 'username', required: true, id: 'login-user' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true, id: 'login-password' });
  const form = h('form', { class: 'login card', onsubmit: async (event) => {
    event.preventDefault();
    message.hidden = true;
    try {
      await login(user.value.trim(), password.value);
      password.value = '';
      route();
    } catch (error) {
      message.textContent = error instanceof ApiError && error.code !== 'login_failed' ? error.message : t('login.failed');
      message.hidden = false;
    }
  } },
  h('h1', null, t('app.title')),
  h('label', { for: 'login-user' }, t('login.user')), user,
  h('label', { for: 'login-password' }, t('login.password')), password,
  message,
  h('button', { type: 'submit', class: 'primary' }, t('login.submit')),
  langButton());
  fill(root, h('main', { class: 'center' }, form));
  user.focus();
}

function langButton() {
  return h('button', { type: 'button', class: 'link lang', onclick: () => { setLang(lang() === 'zh' ? 'en' : 'zh'); route(); } }, t('app.lang'));
}

function visible(page, me) {
  return !page.roles || page.roles.includes(me.role);
}

function frame(me, active) {
  const nav = h('nav', { class: 'nav' }, PAGES.filter((p) => p.nav && visible(p, me)).map((p) =>
    h('a', { href: `#${p.path}`, class: p === active ? 'active' : null, 'data-nav': p.nav }, t(`nav.${p.nav}`))));
  const main = h('main', { id: 'page' });
  fill(root,
    h('header', { class: 'top' },
      h('a', { href: '#/', class: 'brand' }, 'aquafleet'),
      h('span', { class: 'who' }, `${me.user || ''} · ${me.role}${me.vid ? ` · ${me.vid}` : ''}`),
      langButton(),
      h('button', { type: 'button', class: 'link', id: 'logout', onclick: () => logout() }, t('app.logout'))),
    nav, main);
  return main;
}

function route() {
  if (current) current.controller.abort();
  current = null;
  const me = session.get();
  setPerson(me && me.user);
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
  if (!me) { loginPage(); return; }
  const path = decodeURIComponent(location.hash.slice(1)) || '/';
  let match = null;
  const page = PAGES.find((p) => visible(p, me) && (match = p.match ? path.match(p.match) : (path === p.path ? [] : null)))
    || overview;
  const main = frame(me, page);
  const controller = new AbortController();
  current = { controller };
  document.title = `${t(`nav.${page.title || page.nav || 'devices'}`)} · aquafleet`;
  Promise.resolve(page.render(main, { me, signal: controller.signal, params: match || [] })).catch((error) => {
    if (error.name !== 'AbortError') main.append(h('p', { class: 'error', role: 'alert' }, t('error.load', { message: error.message })));
  });
}

onSessionEnd(() => { location.hash = ''; route(); });
window.addEventListener('hashchange', route);
route();
