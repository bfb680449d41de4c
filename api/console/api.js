// The console's only way to the server: /api/v1 with a bearer token in a header (never a
// cookie, so no other site can make the browser send it: CSRF-safe). Tokens live in this
// tab's sessionStorage, readable by scripts of this origin only; the page's
// Content-Security-Policy lets no other script run here (docs/console.md, "Security").

import { md5 } from './md5.js';

const PREFIX = '/api/v1';
const KEY = 'aq.session';

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || 'http_error';
    this.data = body ? body.data : null;
    this.retryAfter = retryAfter; // seconds, from a 429's Retry-After
  }
}

export const session = {
  get() {
    try { return JSON.parse(sessionStorage.getItem(KEY) || 'null'); } catch { return null; }
  },
  set(value) { sessionStorage.setItem(KEY, JSON.stringify(value)); },
  clear() { sessionStorage.removeItem(KEY); },
};

const listeners = new Set();
/** Called with no argument when the session ends (logout, or a refresh that failed). */
export function onSessionEnd(callback) { listeners.add(callback); }
function ended() { session.clear(); listeners.forEach((callback) => callback()); }

function remember(data, user) {
  const previous = session.get() || {};
  session.set({
    user: user || previous.user,
    access: data.access_token,
    refresh: data.refresh_token,
    role: data.role || previous.role,
    vid: data.vid === undefined ? previous.vid : data.vid,
    agent_id: data.agent_id === undefined ? previous.agent_id : data.agent_id,
  });
}

async function send(method, path, body, token, signal) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(PREFIX + path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit', cache: 'no-store',
  });
  const parsed = response.status === 204 ? null : await response.json().catch(() => null);
  return { response, parsed };
}

let refreshing = null;
/** One refresh at a time: tokens rotate, and a second use of the old one ends the session. */
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const current = session.get();
      if (!current || !current.refresh) return false;
      const { response, parsed } = await send('POST', '/auth/refresh', { refresh_token: current.refresh });
      if (!response.ok || !parsed || !parsed.status) return false;
      remember(parsed.data);
      return true;
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

/** A call; answers the envelope, throws ApiError. An expired access token is refreshed once. */
export async function call(method, path, body, { signal } = {}) {
  let current = session.get();
  let { response, parsed } = await send(method, path, body, current && current.access, signal);
  if (response.status === 401 && current) {
    if (await refresh()) {
      current = session.get();
      ({ response, parsed } = await send(method, path, body, current.access, signal));
    }
    if (response.status === 401) ended();
  }
  if (!response.ok || (parsed && parsed.status === false)) {
    throw new ApiError(response.status, parsed, Number(response.headers.get('Retry-After')) || null);
  }
  return parsed;
}

export const get = (path, options) => call('GET', path, undefined, options);

/** A file the API answers (a CSV), fetched with the bearer header like every call (a plain
 * link would carry no token) and handed to the browser as a Blob download; an expired access
 * token is refreshed once. Throws ApiError with the envelope's message on a failed answer. */
export async function download(path, { accept = 'text/csv', fallbackName = 'download', signal } = {}) {
  const fetchIt = () => {
    const current = session.get();
    return fetch(PREFIX + path, {
      headers: { Accept: accept, Authorization: `Bearer ${current && current.access}` },
      signal, credentials: 'omit', cache: 'no-store',
    });
  };
  let response = await fetchIt();
  if (response.status === 401 && session.get()) {
    if (await refresh()) response = await fetchIt();
    if (response.status === 401) ended();
  }
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const blob = await response.blob();
  const named = /filename="([^"\\/]+)"/.exec(response.headers.get('Content-Disposition') || '');
  const name = named ? named[1] : fallbackName;
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { name, size: blob.size };
}

export async function login(user, password) {
  const { response, parsed } = await send('POST', '/auth/login', { user, pwd: md5(password) });
  if (!response.ok || !parsed || !parsed.status) throw new ApiError(response.status, parsed);
  remember(parsed.data, user);
  return session.get();
}

export async function logout() {
  const current = session.get();
  if (current) {
    await send('POST', '/auth/logout', undefined, current.access).catch(() => null);
  }
  ended();
}

/** Server-sent events read through fetch (EventSource cannot send the bearer header):
 * calls onEvent(name, envelope) until the stream ends; throws on a failed answer. */
export async function stream(path, onEvent, signal) {
  const current = session.get();
  const response = await fetch(PREFIX + path, {
    headers: { Accept: 'text/event-stream', Authorization: `Bearer ${current && current.access}` },
    signal, credentials: 'omit', cache: 'no-store',
  });
  if (response.status === 401) {
    if (await refresh()) return stream(path, onEvent, signal);
    ended();
  }
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')));
    }
  }
}
