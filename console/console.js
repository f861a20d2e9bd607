// OpenBatch console: a pure client of the public /v1 API.
//
// Safety rules this file keeps everywhere:
// * no innerHTML / insertAdjacentHTML / document.write: every string the server or the user
//   supplies reaches the page through text nodes or attribute setters (see h()), so markup in a
//   file name, metadata value, custom_id or error message is shown, never run;
// * the API key lives in sessionStorage only and is sent as an Authorization header; it never
//   appears in a URL;
// * no request leaves this origin (the CSP says so too).
'use strict';

const KEY_STORE = 'openbatch.apiKey';
const ENDPOINTS = ['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses', '/v1/moderations'];
const REQUIRED_FIELD = {
  '/v1/chat/completions': 'messages',
  '/v1/completions': 'prompt',
  '/v1/embeddings': 'input',
  '/v1/responses': 'input',
  '/v1/moderations': 'input',
};
const FINAL = ['completed', 'failed', 'expired', 'cancelled'];
const MAX_REQUESTS = 50000;
const MAX_INPUT_BYTES = 200 * 1024 * 1024;
const PAGE = 20;

const state = {
  key: sessionStorage.getItem(KEY_STORE),
  timer: null,
  // Cursor stack for the batches list: the `after` ids of the pages already seen.
  cursors: [],
};

// ---------------------------------------------------------------------------------------
// DOM helpers
// ---------------------------------------------------------------------------------------

/** Builds an element. Children that are strings become text nodes, never markup. */
function h(tag, props, ...children) {
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

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function view() {
  return document.getElementById('view');
}

function show(...children) {
  const v = view();
  v.replaceChildren();
  append(v, children);
}

function errorBox(err) {
  const box = h('div', { class: 'error', role: 'alert' });
  if (err instanceof ApiError) {
    append(box, [h('strong', {}, err.message), ' ', h('span', { class: 'muted' },
      err.code ? `(${err.code}, HTTP ${err.status})` : `(HTTP ${err.status})`)]);
  } else {
    append(box, [h('strong', {}, 'Something went wrong: '), String(err && err.message || err)]);
  }
  return box;
}

function fmtTime(secs) {
  if (secs === null || secs === undefined) return '—';
  const d = new Date(secs * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtDuration(secs) {
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${String(secs % 60).padStart(2, '0')}s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ${String(Math.floor(secs % 3600 / 60)).padStart(2, '0')}m`;
  return `${Math.floor(secs / 86400)}d ${Math.floor(secs % 86400 / 3600)}h`;
}

function fmtBytes(n) {
  if (typeof n !== 'number') return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(1)} ${units[i]}`;
}

function now() {
  return Date.now() / 1000;
}

/** Seconds a batch has run: until its final timestamp, or until now. */
function elapsed(b) {
  const end = b.completed_at || b.failed_at || b.cancelled_at || b.expired_at || now();
  return end - b.created_at;
}

function statusBadge(status) {
  return h('span', { class: `badge s-${status}`, dataset: { status } }, status.replace('_', ' '));
}

function progressBar(b) {
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

function metadataChips(md) {
  const entries = Object.entries(md || {});
  if (!entries.length) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'chips' }, entries.map(([k, v]) => h('span', { class: 'chip', title: `${k}=${v}` }, `${k}=${v}`)));
}

function link(href, text, props) {
  return h('a', Object.assign({ href }, props || {}), text);
}

function confirmDialog(title, text, yes) {
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

// ---------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

async function api(method, path, { json, form, raw } = {}) {
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
      signIn(err);
    }
    throw err;
  }
  return data;
}

async function download(fileId, name) {
  const res = await api('GET', `/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, '') || '/batches';
  const [path, query] = hash.split('?');
  return { parts: path.split('/').filter(Boolean), params: new URLSearchParams(query || '') };
}

function stopTimer() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

async function render() {
  stopTimer();
  const { parts, params } = route();
  document.getElementById('signout').hidden = !state.key;
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === (parts[0] || 'batches'));
  }
  try {
    if (parts[0] === 'signin') return renderSignIn(null);
    if (parts[0] === 'files') return await renderFiles();
    if (parts[0] === 'new') return await renderNew(params.get('file'));
    if (parts[0] === 'batches' && parts[1]) return await renderBatch(decodeURIComponent(parts[1]));
    return await renderBatches(params);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) show(errorBox(e));
  }
}

// ---------------------------------------------------------------------------------------
// Sign in (only when the server has auth on)
// ---------------------------------------------------------------------------------------

function signIn(err) {
  stopTimer();
  // Without a key, a 401 only means "this server wants one": no error to show.
  const rejected = state.key ? err : null;
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  renderSignIn(rejected);
}

function renderSignIn(err) {
  document.getElementById('signout').hidden = true;
  const input = h('input', { type: 'password', id: 'api-key', name: 'api-key', autocomplete: 'off', required: true, placeholder: 'obk_…', spellcheck: 'false' });
  const status = h('div');
  const form = h('form', {
    class: 'card narrow', id: 'signin',
    onsubmit: async (ev) => {
      ev.preventDefault();
      state.key = input.value.trim();
      try {
        await api('GET', '/batches?limit=1');
        sessionStorage.setItem(KEY_STORE, state.key);
        location.hash = '#/batches';
        render();
      } catch (e) {
        state.key = null;
        status.replaceChildren(errorBox(e));
      }
    },
  },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'This server needs an API key. It is kept in this tab only (sessionStorage) and forgotten when you sign out or close the tab.'),
  h('label', { for: 'api-key' }, 'API key'), input,
  h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Sign in')),
  status);
  show(form);
  if (err) status.append(errorBox(err));
  input.focus();
}

// ---------------------------------------------------------------------------------------
// Batches list
// ---------------------------------------------------------------------------------------

async function renderBatches(params) {
  const filter = params.get('status') || '';
  const after = params.get('after') || '';
  // The API has no status filter: with one set, read pages until a screenful matches.
  let rows = [];
  let cursor = after || null;
  let hasMore = false;
  for (let pages = 0; pages < 10; pages++) {
    const q = new URLSearchParams({ limit: String(filter ? 100 : PAGE) });
    if (cursor) q.set('after', cursor);
    const page = await api('GET', `/batches?${q}`);
    for (const b of page.data) {
      if (rows.length >= PAGE) { hasMore = true; break; }
      cursor = b.id;
      if (!filter || b.status === filter) rows.push(b);
    }
    if (rows.length >= PAGE) { hasMore = hasMore || page.has_more; break; }
    hasMore = page.has_more;
    if (!page.has_more) break;
  }
  const setParams = (p) => {
    const q = new URLSearchParams(p);
    for (const [k, v] of [...q]) if (!v) q.delete(k);
    location.hash = `#/batches${q.toString() ? `?${q}` : ''}`;
  };
  const select = h('select', { id: 'status-filter', 'aria-label': 'Filter by status', onchange: (e) => { state.cursors = []; setParams({ status: e.target.value }); } },
    h('option', { value: '' }, 'All statuses'),
    ['validating', 'in_progress', 'finalizing', 'completed', 'failed', 'cancelling', 'cancelled', 'expired']
      .map((s) => h('option', { value: s, selected: s === filter }, s.replace('_', ' '))));
  const head = h('div', { class: 'bar' }, h('h1', {}, 'Batches'), h('span', { class: 'spacer' }), select,
    h('a', { class: 'button primary', href: '#/files' }, 'Upload & create'));
  let body;
  if (!rows.length) {
    body = h('div', { class: 'empty' },
      h('p', { class: 'big' }, filter ? `No ${filter.replace('_', ' ')} batches.` : 'No batches yet.'),
      h('p', { class: 'muted' }, 'Upload a JSONL file of requests, then create a batch from it.'),
      h('a', { class: 'button primary', href: '#/files' }, 'Upload a file'));
  } else {
    body = h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'batches' },
      h('thead', {}, h('tr', {}, ['Batch', 'Status', 'Progress', 'Requests', 'Model', 'Created', 'Elapsed', 'Metadata'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map((b) => {
        const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
        return h('tr', { dataset: { id: b.id } },
          h('td', {}, link(`#/batches/${encodeURIComponent(b.id)}`, b.id, { class: 'mono' }), h('div', { class: 'muted small' }, b.endpoint)),
          h('td', {}, statusBadge(b.status)),
          h('td', { class: 'w-progress' }, progressBar(b)),
          h('td', { class: 'num' }, `${c.completed}/${c.total}`, c.failed ? h('div', { class: 'bad-text small' }, `${c.failed} failed`) : null),
          h('td', { class: 'model' }, b.model || h('span', { class: 'muted' }, '—')),
          h('td', { class: 'nowrap', title: fmtTime(b.created_at) }, fmtTime(b.created_at)),
          h('td', { class: 'nowrap' }, fmtDuration(elapsed(b))),
          h('td', {}, metadataChips(b.metadata)));
      }))));
  }
  const pager = h('div', { class: 'pager' },
    h('button', { type: 'button', class: 'ghost', id: 'newer', disabled: !after, onclick: () => setParams({ status: filter, after: state.cursors.pop() || '' }) }, '← Newer'),
    h('button', { type: 'button', class: 'ghost', id: 'older', disabled: !hasMore, onclick: () => { state.cursors.push(after); setParams({ status: filter, after: cursor }); } }, 'Older →'));
  show(head, body, pager);
  // Keep the list live while anything on it is still running.
  if (rows.some((b) => !FINAL.includes(b.status))) {
    state.timer = setTimeout(() => render(), 2000);
  }
}

// ---------------------------------------------------------------------------------------
// Batch detail
// ---------------------------------------------------------------------------------------

async function renderBatch(id) {
  const b = await api('GET', `/batches/${encodeURIComponent(id)}`);
  const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
  const running = !FINAL.includes(b.status);
  const status = h('div', { id: 'action-status' });
  const actions = h('div', { class: 'actions' });
  if (['validating', 'in_progress'].includes(b.status)) {
    actions.append(h('button', {
      type: 'button', class: 'danger', id: 'cancel',
      onclick: async () => {
        const ok = await confirmDialog('Cancel this batch?', `Batch ${b.id} stops; lines already done keep their results.`, 'Cancel batch');
        if (!ok) return;
        try {
          await api('POST', `/batches/${encodeURIComponent(b.id)}/cancel`);
          render();
        } catch (e) {
          status.replaceChildren(errorBox(e));
        }
      },
    }, 'Cancel batch'));
  }
  for (const [field, label] of [['output_file_id', 'Download output'], ['error_file_id', 'Download errors'], ['input_file_id', 'Download input']]) {
    if (!b[field] || (field === 'input_file_id' && running)) continue;
    actions.append(h('button', {
      type: 'button', class: field === 'output_file_id' ? 'primary' : 'ghost', id: `download-${field.split('_')[0]}`,
      onclick: async () => {
        try { await download(b[field], `${b.id}.${field.split('_')[0]}.jsonl`); } catch (e) { status.replaceChildren(errorBox(e)); }
      },
    }, label));
  }
  const timeline = [['created_at', 'Created'], ['in_progress_at', 'In progress'], ['finalizing_at', 'Finalizing'], ['completed_at', 'Completed'],
    ['failed_at', 'Failed'], ['cancelling_at', 'Cancelling'], ['cancelled_at', 'Cancelled'], ['expired_at', 'Expired'], ['expires_at', 'Expires']];
  const usage = b.usage;
  const errors = (b.errors && b.errors.data) || [];
  show(
    h('p', { class: 'crumbs' }, link('#/batches', '← Batches')),
    h('div', { class: 'bar' }, h('h1', { class: 'mono' }, b.id), statusBadge(b.status), h('span', { class: 'spacer' }), actions),
    status,
    h('section', { class: 'card' },
      h('div', { class: 'big-progress' }, progressBar(b)),
      h('dl', { class: 'grid' },
        h('dt', {}, 'Total'), h('dd', { id: 'count-total' }, String(c.total)),
        h('dt', {}, 'Completed'), h('dd', { id: 'count-completed' }, String(c.completed)),
        h('dt', {}, 'Failed'), h('dd', { id: 'count-failed', class: c.failed ? 'bad-text' : '' }, String(c.failed)),
        h('dt', {}, 'Elapsed'), h('dd', {}, fmtDuration(elapsed(b))),
        h('dt', {}, 'Endpoint'), h('dd', { class: 'mono' }, b.endpoint),
        h('dt', {}, 'Model'), h('dd', {}, b.model || '—'),
        h('dt', {}, 'Window'), h('dd', {}, b.completion_window),
        h('dt', {}, 'Metadata'), h('dd', {}, metadataChips(b.metadata)))),
    h('div', { class: 'cols' },
      h('section', { class: 'card' }, h('h2', {}, 'Timeline'),
        h('ol', { class: 'timeline' }, timeline.filter(([k]) => b[k]).map(([k, label]) =>
          h('li', { class: k === 'expires_at' ? 'future' : '' }, h('span', {}, label), h('time', {}, fmtTime(b[k])))))),
      h('section', { class: 'card' }, h('h2', {}, 'Usage'),
        usage ? h('dl', { class: 'grid' },
          h('dt', {}, 'Input tokens'), h('dd', {}, String(usage.input_tokens)),
          h('dt', {}, 'Cached'), h('dd', {}, String((usage.input_tokens_details || {}).cached_tokens || 0)),
          h('dt', {}, 'Output tokens'), h('dd', {}, String(usage.output_tokens)),
          h('dt', {}, 'Reasoning'), h('dd', {}, String((usage.output_tokens_details || {}).reasoning_tokens || 0)),
          h('dt', {}, 'Total'), h('dd', {}, String(usage.total_tokens)))
          : h('p', { class: 'muted' }, 'No usage reported yet.'),
        h('h2', {}, 'Files'),
        h('dl', { class: 'grid' },
          h('dt', {}, 'Input'), h('dd', { class: 'mono' }, b.input_file_id || '—'),
          h('dt', {}, 'Output'), h('dd', { class: 'mono' }, b.output_file_id || '—'),
          h('dt', {}, 'Errors'), h('dd', { class: 'mono' }, b.error_file_id || '—')))),
    errors.length ? h('section', { class: 'card' }, h('h2', {}, `Validation errors (${errors.length})`),
      h('table', { class: 'list', id: 'validation-errors' },
        h('thead', {}, h('tr', {}, ['Line', 'Code', 'Parameter', 'Message'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, errors.map((e) => h('tr', {},
          h('td', { class: 'num' }, e.line === null || e.line === undefined ? '—' : String(e.line)),
          h('td', { class: 'mono' }, e.code || '—'),
          h('td', { class: 'mono' }, e.param || '—'),
          h('td', {}, e.message || '')))))) : null,
  );
  if (running) {
    // About once a second while the batch runs; stops when it ends or the view changes.
    state.timer = setTimeout(() => { if (route().parts[1] === encodeURIComponent(id) || route().parts[1] === id) render(); }, 1000);
  }
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/** The checks the server applies to a batch input file, run before uploading. */
function checkLines(text, endpointHint) {
  const problems = [];
  const seen = new Map();
  let model = null;
  let requests = 0;
  let endpoint = endpointHint;
  const lines = text.split('\n');
  const report = (line, code, param, message) => { if (problems.length < 100) problems.push({ line, code, param, message }); };
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].replace(/\r$/, '');
    const n = i + 1;
    if (!raw.trim()) continue;
    requests++;
    if (requests > MAX_REQUESTS) { report(n, 'too_many_requests', 'input_file_id', `The input file has more than ${MAX_REQUESTS} requests.`); break; }
    let v;
    try { v = JSON.parse(raw); } catch (e) { report(n, 'invalid_json_line', 'line', `This line is not parseable as valid JSON: ${e.message}.`); continue; }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) { report(n, 'invalid_json_line', 'line', 'This line is not a JSON object.'); continue; }
    const missing = (p) => report(n, 'missing_required_parameter', p, `Missing required parameter: '${p}'.`);
    if (v.custom_id === undefined || v.custom_id === null) { missing('custom_id'); continue; }
    if (typeof v.custom_id !== 'string' || !v.custom_id) { report(n, 'invalid_request', 'custom_id', "'custom_id' must be a non-empty string."); continue; }
    if (v.method === undefined || v.method === null) { missing('method'); continue; }
    if (v.method !== 'POST') { report(n, 'invalid_request', 'method', `Invalid method ${JSON.stringify(v.method)}: batch requests must use 'POST'.`); continue; }
    if (v.url === undefined || v.url === null) { missing('url'); continue; }
    if (!endpoint && ENDPOINTS.includes(v.url)) endpoint = v.url;
    if (v.url !== endpoint) { report(n, 'invalid_url', 'url', `The URL ${JSON.stringify(v.url)} does not match the batch's endpoint '${endpoint || '?'}'.`); continue; }
    if (v.body === undefined || v.body === null) { missing('body'); continue; }
    if (typeof v.body !== 'object' || Array.isArray(v.body)) { report(n, 'invalid_request', 'body', "'body' must be a JSON object."); continue; }
    if (typeof v.body.model !== 'string' || !v.body.model) { missing('body.model'); continue; }
    if (v.body.stream === true) { report(n, 'streaming_unsupported', 'body.stream', "Streaming is not supported in batches: remove 'stream' or set it to false."); continue; }
    const field = REQUIRED_FIELD[endpoint];
    if (field && (v.body[field] === undefined || v.body[field] === null)) { missing(`body.${field}`); continue; }
    if (seen.has(v.custom_id)) { report(n, 'duplicate_custom_id', 'custom_id', `The custom_id '${v.custom_id}' is used on line ${seen.get(v.custom_id)} and again here; custom_id values must be unique.`); continue; }
    seen.set(v.custom_id, n);
    if (model === null) model = v.body.model;
    else if (model !== v.body.model) report(n, 'mixed_models', 'body.model', `All requests in a batch must use the same model: this line uses '${v.body.model}', earlier lines '${model}'.`);
  }
  if (requests === 0 && !problems.length) report(null, 'empty_file', 'input_file_id', 'The input file contains no requests.');
  return { problems, requests, endpoint, model };
}

function problemsTable(problems) {
  return h('table', { class: 'list', id: 'problems' },
    h('thead', {}, h('tr', {}, ['Line', 'Code', 'Message'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, problems.map((p) => h('tr', {},
      h('td', { class: 'num' }, p.line === null ? '—' : String(p.line)), h('td', { class: 'mono' }, p.code), h('td', {}, p.message)))));
}

async function renderFiles() {
  const page = await api('GET', '/files?limit=200');
  const status = h('div', { id: 'files-status' });
  const preview = h('div', { id: 'preview' });
  const picker = h('input', { type: 'file', id: 'file-input', accept: '.jsonl,.json,.txt,application/jsonl', class: 'visually-hidden', onchange: () => { if (picker.files[0]) choose(picker.files[0]); } });
  const drop = h('div', {
    class: 'drop', id: 'drop', tabindex: 0, role: 'button', 'aria-label': 'Choose a JSONL file to upload',
    onclick: () => picker.click(),
    onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); picker.click(); } },
    ondragover: (e) => { e.preventDefault(); drop.classList.add('over'); },
    ondragleave: () => drop.classList.remove('over'),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove('over'); if (e.dataTransfer.files[0]) choose(e.dataTransfer.files[0]); },
  }, h('strong', {}, 'Drop a JSONL file here'), h('span', { class: 'muted' }, ' or click to choose one'));

  async function choose(file) {
    status.replaceChildren();
    if (file.size > MAX_INPUT_BYTES) {
      preview.replaceChildren(errorBox(new Error(`${file.name} is ${fmtBytes(file.size)}; a batch input may be at most 200 MB.`)));
      return;
    }
    const text = await file.text();
    const check = checkLines(text, null);
    const first = text.split('\n').filter((l) => l.trim()).slice(0, 5);
    const upload = h('button', {
      type: 'button', class: check.problems.length ? 'ghost' : 'primary', id: 'upload',
      onclick: async () => {
        upload.disabled = true;
        const form = new FormData();
        form.append('purpose', 'batch');
        form.append('file', file, file.name);
        try {
          const f = await api('POST', '/files', { form });
          location.hash = `#/new?file=${encodeURIComponent(f.id)}`;
        } catch (e) {
          upload.disabled = false;
          status.replaceChildren(errorBox(e));
        }
      },
    }, check.problems.length ? 'Upload anyway' : 'Upload');
    preview.replaceChildren(h('section', { class: 'card' },
      h('div', { class: 'bar' }, h('h2', {}, file.name), h('span', { class: 'muted' }, ` ${fmtBytes(file.size)} · ${check.requests} requests${check.model ? ` · ${check.model}` : ''}${check.endpoint ? ` · ${check.endpoint}` : ''}`),
        h('span', { class: 'spacer' }), upload),
      check.problems.length
        ? h('div', {}, h('p', { class: 'bad-text', id: 'check-summary' }, `${check.problems.length} problem${check.problems.length > 1 ? 's' : ''} found: a batch from this file would fail validation.`), problemsTable(check.problems))
        : h('p', { class: 'ok-text', id: 'check-summary' }, `All ${check.requests} lines pass the server's checks.`),
      h('h3', {}, 'First lines'),
      h('pre', { class: 'preview' }, first.map((l) => (l.length > 400 ? `${l.slice(0, 400)}…` : l)).join('\n'))));
  }

  const rows = page.data;
  show(
    h('div', { class: 'bar' }, h('h1', {}, 'Files')),
    h('section', { class: 'card' }, h('h2', {}, 'Upload a batch input'), drop, picker, preview, status),
    rows.length ? h('table', { class: 'list', id: 'files' },
      h('thead', {}, h('tr', {}, ['File', 'Name', 'Purpose', 'Size', 'Created', 'Expires', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map((f) => h('tr', { dataset: { id: f.id } },
        h('td', { class: 'mono' }, f.id),
        h('td', { class: 'filename' }, f.filename),
        h('td', {}, f.purpose),
        h('td', { class: 'num' }, fmtBytes(f.bytes)),
        h('td', { class: 'nowrap' }, fmtTime(f.created_at)),
        h('td', { class: 'nowrap' }, fmtTime(f.expires_at)),
        h('td', { class: 'row-actions' },
          f.purpose === 'batch' ? link(`#/new?file=${encodeURIComponent(f.id)}`, 'Create batch', { class: 'button small' }) : null,
          h('button', { type: 'button', class: 'ghost small', onclick: () => download(f.id, f.filename).catch((e) => status.replaceChildren(errorBox(e))) }, 'Download'),
          h('button', {
            type: 'button', class: 'danger small', dataset: { delete: f.id },
            onclick: async () => {
              if (!await confirmDialog('Delete this file?', `${f.filename} (${f.id}) will be deleted.`, 'Delete file')) return;
              try { await api('DELETE', `/files/${encodeURIComponent(f.id)}`); render(); } catch (e) { status.replaceChildren(errorBox(e)); }
            },
          }, 'Delete')))))) : h('div', { class: 'empty' }, h('p', { class: 'big' }, 'No files yet.'), h('p', { class: 'muted' }, 'Upload a JSONL file above.')),
  );
  drop.focus();
}

// ---------------------------------------------------------------------------------------
// Create a batch
// ---------------------------------------------------------------------------------------

function newKey() {
  return `console-${crypto.randomUUID()}`;
}

async function renderNew(fileId) {
  const files = (await api('GET', '/files?purpose=batch&limit=200')).data;
  const status = h('div', { id: 'create-status' });
  if (!files.length) {
    show(h('h1', {}, 'New batch'), h('div', { class: 'empty' }, h('p', { class: 'big' }, 'No batch input files yet.'),
      h('a', { class: 'button primary', href: '#/files' }, 'Upload a file')));
    return;
  }
  const fileSel = h('select', { id: 'input-file', name: 'input_file_id', required: true },
    files.map((f) => h('option', { value: f.id, selected: f.id === fileId }, `${f.filename} — ${f.id} (${fmtBytes(f.bytes)})`)));
  const endpointSel = h('select', { id: 'endpoint', name: 'endpoint' }, ENDPOINTS.map((e) => h('option', { value: e }, e)));
  const windowSel = h('select', { id: 'window', name: 'completion_window' }, h('option', { value: '24h' }, '24h'));
  // The key is made once per form: submitting twice (a double click, a retry after an error)
  // sends the same key, and the server answers with the same batch.
  const keyInput = h('input', { id: 'idem-key', name: 'idempotency_key', value: newKey(), spellcheck: 'false', class: 'mono' });
  const mdRows = h('div', { id: 'metadata-rows' });
  const addMd = (k, v) => {
    const row = h('div', { class: 'md-row' },
      h('input', { placeholder: 'key', class: 'md-key', 'aria-label': 'metadata key', value: k || '' }),
      h('input', { placeholder: 'value', class: 'md-value', 'aria-label': 'metadata value', value: v || '' }),
      h('button', { type: 'button', class: 'ghost small', 'aria-label': 'remove', onclick: () => row.remove() }, '✕'));
    mdRows.append(row);
  };
  const create = h('button', { type: 'submit', class: 'primary', id: 'create' }, 'Create batch');
  // Guess the endpoint from the chosen file's first line when the file is small enough to peek at.
  const guess = async () => {
    const f = files.find((x) => x.id === fileSel.value);
    if (!f || f.bytes > 5 * 1024 * 1024) return;
    try {
      const text = await (await api('GET', `/files/${encodeURIComponent(f.id)}/content`, { raw: true })).text();
      const first = text.split('\n').find((l) => l.trim());
      const url = first && JSON.parse(first).url;
      if (ENDPOINTS.includes(url)) endpointSel.value = url;
    } catch (_) { /* a guess only */ }
  };
  fileSel.addEventListener('change', guess);
  const form = h('form', {
    class: 'card narrow', id: 'new-batch',
    onsubmit: async (ev) => {
      ev.preventDefault();
      create.disabled = true;
      status.replaceChildren();
      const metadata = {};
      for (const row of mdRows.querySelectorAll('.md-row')) {
        const k = row.querySelector('.md-key').value.trim();
        if (k) metadata[k] = row.querySelector('.md-value').value;
      }
      try {
        const b = await api('POST', '/batches', {
          json: {
            input_file_id: fileSel.value, endpoint: endpointSel.value, completion_window: windowSel.value,
            metadata: Object.keys(metadata).length ? metadata : null, idempotency_key: keyInput.value.trim() || undefined,
          },
        });
        location.hash = `#/batches/${encodeURIComponent(b.id)}`;
      } catch (e) {
        create.disabled = false;
        status.replaceChildren(errorBox(e));
      }
    },
  },
  h('h1', {}, 'New batch'),
  h('label', { for: 'input-file' }, 'Input file'), fileSel,
  h('label', { for: 'endpoint' }, 'Endpoint'), endpointSel,
  h('label', { for: 'window' }, 'Completion window'), windowSel,
  h('label', {}, 'Metadata'), mdRows,
  h('button', { type: 'button', class: 'ghost small', id: 'add-metadata', onclick: () => addMd() }, '+ Add metadata'),
  h('label', { for: 'idem-key' }, 'Idempotency key'),
  h('div', { class: 'inline' }, keyInput, h('button', { type: 'button', class: 'ghost small', onclick: () => { keyInput.value = newKey(); } }, 'New key')),
  h('p', { class: 'muted small' }, 'Sending the same key again returns the same batch, so a double click never creates two.'),
  h('div', { class: 'actions' }, create),
  status);
  show(h('p', { class: 'crumbs' }, link('#/files', '← Files')), form);
  await guess();
  fileSel.focus();
}

// ---------------------------------------------------------------------------------------

document.getElementById('signout').addEventListener('click', () => {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  location.hash = '#/batches';
  render();
});
window.addEventListener('hashchange', render);
render();
