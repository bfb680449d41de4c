// Devices by position (lbs, millionths of a degree) in Web Mercator. With a tile URL set
// (console_tile_url) the map provider's tiles lie under the markers; without one the markers
// are drawn over a plain background, so the map works offline.

import { h, s, fill } from '../dom.js';
import { get } from '../api.js';
import { t } from '../i18n.js';

const W = 600, H = 400, TILE = 256, PAGES = 5;

function mercator(lat, lng, zoom) {
  const scale = TILE * 2 ** zoom;
  const sin = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return [((lng + 180) / 360) * scale, (0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI)) * scale];
}

function tileUrl() {
  const meta = document.querySelector('meta[name="aq-tile-url"]');
  return meta && meta.content ? meta.content : null;
}

export function drawMap(points, template) {
  const lats = points.map((p) => p.lat), lngs = points.map((p) => p.lng);
  const [south, north] = [Math.min(...lats), Math.max(...lats)];
  const [west, east] = [Math.min(...lngs), Math.max(...lngs)];
  let zoom = 18;
  while (zoom > 1) { // the closest zoom that shows every marker
    const [x0, y0] = mercator(north, west, zoom), [x1, y1] = mercator(south, east, zoom);
    if (x1 - x0 <= W * 0.85 && y1 - y0 <= H * 0.85) break;
    zoom -= 1;
  }
  const [cx, cy] = mercator((north + south) / 2, (east + west) / 2, zoom);
  const left = cx - W / 2, top = cy - H / 2;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'map', id: 'device-map' },
    s('rect', { x: 0, y: 0, width: W, height: H, class: 'map-bg' }));
  if (template) {
    const count = 2 ** zoom;
    for (let tx = Math.floor(left / TILE); tx * TILE < left + W; tx++) {
      for (let ty = Math.max(0, Math.floor(top / TILE)); ty * TILE < top + H && ty < count; ty++) {
        const wrapped = ((tx % count) + count) % count;
        const href = template.replace('{z}', zoom).replace('{x}', wrapped).replace('{y}', ty);
        svg.append(s('image', { href, x: tx * TILE - left, y: ty * TILE - top, width: TILE, height: TILE }));
      }
    }
  } else {
    for (let i = 1; i < 6; i++) {
      svg.append(s('line', { x1: (W * i) / 6, x2: (W * i) / 6, y1: 0, y2: H, class: 'grid' }));
      svg.append(s('line', { x1: 0, x2: W, y1: (H * i) / 6, y2: (H * i) / 6, class: 'grid' }));
    }
  }
  for (const p of points) {
    const [x, y] = mercator(p.lat, p.lng, zoom);
    const link = s('a', { href: `#/devices/${encodeURIComponent(p.did)}`, class: 'marker', 'data-did': p.did },
      s('circle', { cx: x - left, cy: y - top, r: 7, class: p.online ? 'on' : 'off' }),
      s('text', { x: x - left + 11, y: y - top + 4, class: 'marker-label' }, p.name || p.did),
      s('title', null, `${p.name || p.did} (${p.did})`));
    svg.append(link);
  }
  return svg;
}

export default {
  path: '/map',
  nav: 'map',
  async render(main, { signal }) {
    const box = h('div', { class: 'card' }, '…');
    main.append(h('h1', null, t('nav.map')), box);
    const devices = [];
    for (let page = 0; page < PAGES; page++) {
      const answer = await get(`/devices?limit=100&offset=${page * 100}`, { signal });
      devices.push(...answer.data);
      if (devices.length >= answer.total) break;
    }
    const points = devices.filter((d) => d.lbs).map((d) => ({
      did: d.did, name: d.name, online: d.online, lat: d.lbs.lat_e6 / 1e6, lng: d.lbs.lng_e6 / 1e6,
    }));
    const template = tileUrl();
    fill(box,
      points.length ? drawMap(points, template) : null,
      template ? null : h('p', { class: 'note' }, t('map.plain')),
      h('p', { class: 'note' }, t('map.no_position', { n: devices.length - points.length })));
  },
};
