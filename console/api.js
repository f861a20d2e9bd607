// The /v1 client, and the little state the views share.

export const KEY_STORE = 'openbatch.apiKey';

export const state = {
  key: sessionStorage.getItem(KEY_STORE),
  timer: null,
  // The event stream the current view follows (an AbortController), if any.
  stream: null,
  // After a stream failed: { hash, until } — that view polls until then, then tries again.
  polling: null,
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

/**
 * Reads a Server-Sent Events stream of /v1 and calls onEvent(name, data) for each event.
 * fetch() rather than EventSource, which cannot send the Authorization header. Resolves when
 * the server ends the stream; rejects when it cannot be opened, breaks, or `signal` aborts it.
 */
export async function streamEvents(path, onEvent, signal) {
  const headers = { Accept: 'text/event-stream' };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const res = await fetch(`/v1${path}`, { headers, cache: 'no-store', credentials: 'omit', signal });
  if (!res.ok || !res.body) throw new ApiError(res.status, `event stream refused (HTTP ${res.status})`, null, null);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    // Frames end with a blank line; "\r\n" and "\r" end lines too (a "\r" that ends this
    // chunk stays until the next one says whether a "\n" follows).
    let text = buf.endsWith('\r') ? buf.slice(0, -1) : buf;
    const held = buf.length - text.length;
    text = text.replace(/\r\n?/g, '\n');
    const frames = text.split('\n\n');
    buf = frames.pop() + (held ? '\r' : '');
    for (const frame of frames) {
      let name = 'message';
      const data = [];
      for (const line of frame.split('\n')) {
        if (!line || line.startsWith(':')) continue; // a comment: the server's keep-alive
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'event') name = v;
        else if (field === 'data') data.push(v);
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}

export async function download(fileId, name) {
  const res = await api('GET', `/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  // Built by hand: the network layer stays below dom.js, which imports ApiError from here.
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
