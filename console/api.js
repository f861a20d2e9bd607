// The /v1 client, and the little state the views share.

import { h } from './dom.js';

export const KEY_STORE = 'openbatch.apiKey';

export const state = {
  key: sessionStorage.getItem(KEY_STORE),
  timer: null,
  // Cursor stack for the batches list: the `after` ids of the pages already seen.
  cursors: [],
  // Set by app.js: draw the current route again; show the sign-in form after a 401.
  rerender: () => {},
  unauthorized: () => {},
};

export class ApiError extends Error {
  constructor(status, message, code, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

export async function api(method, path, { json, form, raw } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  let res;
  try {
    res = await fetch(`/v1${path}`, { method, headers, body, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`);
  }
  if (res.ok && raw) return res;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    const e = (data && data.error) || {};
    const err = new ApiError(res.status, e.message || `HTTP ${res.status}`, e.code || null, e.param || null);
    if (res.status === 401) {
      state.unauthorized(err);
    }
    throw err;
  }
  return data;
}

export async function download(fileId, name) {
  const res = await api('GET', `/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
