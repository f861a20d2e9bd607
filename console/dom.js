// DOM building and formatting. Strings always become text nodes (see the rules in app.js).

import { ApiError } from './api.js';

export const FINAL = ['completed', 'failed', 'expired', 'cancelled'];

/** Builds an element. Children that are strings become text nodes, never markup. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function view() {
  return document.getElementById('view');
}

export function show(...children) {
  const v = view();
  v.replaceChildren();
  append(v, children);
}

export function errorBox(err) {
  const box = h('div', { class: 'error', role: 'alert' });
  if (err instanceof ApiError) {
    append(box, [h('strong', {}, err.message), ' ', h('span', { class: 'muted' },
      err.code ? `(${err.code}, HTTP ${err.status})` : `(HTTP ${err.status})`)]);
  } else {
    append(box, [h('strong', {}, 'Something went wrong: '), String(err && err.message || err)]);
  }
  return box;
}

export function fmtTime(secs) {
  if (secs === null || secs === undefined) return '—';
  const d = new Date(secs * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDuration(secs) {
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${String(secs % 60).padStart(2, '0')}s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ${String(Math.floor(secs % 3600 / 60)).padStart(2, '0')}m`;
  return `${Math.floor(secs / 86400)}d ${Math.floor(secs % 86400 / 3600)}h`;
}

export function fmtBytes(n) {
  if (typeof n !== 'number') return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(1)} ${units[i]}`;
}

export function now() {
  return Date.now() / 1000;
}

/** Seconds a batch has run: until its final timestamp, or until now. */
export function elapsed(b) {
  const end = b.completed_at || b.failed_at || b.cancelled_at || b.expired_at || now();
  return end - b.created_at;
}

export function statusBadge(status) {
  return h('span', { class: `badge s-${status}`, dataset: { status } }, status.replace('_', ' '));
}

export function progressBar(b) {
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  const done = c.completed + c.failed;
  const pct = c.total > 0 ? Math.floor(done * 100 / c.total) : (b.status === 'completed' ? 100 : 0);
  const ok = h('span', { class: 'ok' });
  const bad = h('span', { class: 'bad' });
  // Widths through the CSSOM, which the CSP allows (inline style attributes it does not).
  if (c.total > 0) {
    ok.style.width = `${c.completed * 100 / c.total}%`;
    bad.style.width = `${c.failed * 100 / c.total}%`;
  } else if (pct === 100) {
    ok.style.width = '100%';
  }
  return h('div', {
    class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
    'aria-valuenow': pct, 'aria-label': 'progress', dataset: { pct },
  }, h('div', { class: 'track' }, ok, bad), h('span', { class: 'pct' }, `${pct}%`));
}

export function metadataChips(md) {
  const entries = Object.entries(md || {});
  if (!entries.length) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'chips' }, entries.map(([k, v]) => h('span', { class: 'chip', title: `${k}=${v}` }, `${k}=${v}`)));
}

export function link(href, text, props) {
  return h('a', Object.assign({ href }, props || {}), text);
}

export function confirmDialog(title, text, yes) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-yes').textContent = yes;
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.returnValue = 'cancel';
    dlg.showModal();
    document.getElementById('confirm-no').focus();
  });
}
