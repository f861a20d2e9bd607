// The batches list and a batch's page.

import { api, download, state, streamEvents } from './api.js';
import { FINAL, confirmDialog, elapsed, errorBox, fmtDuration, fmtTime, h, link, metadataChips, progressBar, show, statusBadge, view } from './dom.js';

const PAGE = 20;

// ---------------------------------------------------------------------------------------
// Batches list
// ---------------------------------------------------------------------------------------

// A running batch whose pace would not finish it before it expires.
function behindBadge(b) {
  return b.behind_schedule
    ? h('span', { class: 'badge s-failed', id: 'behind-schedule', title: `At its pace so far it would not finish before ${fmtTime(b.expires_at)}` }, 'behind schedule')
    : null;
}

export async function renderBatches(params) {
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
          h('td', {}, statusBadge(b.status), behindBadge(b)),
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
    state.timer = setTimeout(() => state.rerender(), 2000);
  }
}

// ---------------------------------------------------------------------------------------
// Batch detail
// ---------------------------------------------------------------------------------------

/** How long a batch's view polls after its event stream failed before trying one again. */
const POLL_AFTER_STREAM_FAILED_MS = 30000;

export async function renderBatch(id) {
  const here = location.hash;
  const b = await api('GET', `/batches/${encodeURIComponent(id)}`);
  if (location.hash !== here) return;
  drawBatch(b, 'poll');
  if (FINAL.includes(b.status)) return;
  const p = state.polling;
  if (p && p.hash === here && Date.now() < p.until) {
    pollLater(here);
  } else {
    followEvents(id, here);
  }
}

// About once a second while the batch runs; stops when it ends or the view changes.
function pollLater(here) {
  state.timer = setTimeout(() => { if (location.hash === here) state.rerender(); }, 1000);
}

// Draws each batch object the server pushes on the batch's event stream, which ends after a
// final status. A stream that cannot be opened, breaks or ends early hands over to polling.
function followEvents(id, here) {
  const ctl = new AbortController();
  state.stream = ctl;
  let final = false;
  const current = () => !ctl.signal.aborted && location.hash === here;
  const fallBack = () => {
    if (!current() || final) return;
    state.stream = null;
    state.polling = { hash: here, until: Date.now() + POLL_AFTER_STREAM_FAILED_MS };
    pollLater(here);
  };
  streamEvents(`/batches/${encodeURIComponent(id)}/events`, (name, data) => {
    if (name !== 'batch' || !current()) return;
    const b = JSON.parse(data);
    final = FINAL.includes(b.status);
    drawBatch(b, 'stream');
  }, ctl.signal).then(fallBack, fallBack);
}

// `source`: where `b` came from ('poll': a GET, 'stream': an event), shown on the view as
// data-source for the tests.
function drawBatch(b, source) {
  view().dataset.source = source;
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
          state.rerender();
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
    h('div', { class: 'bar' }, h('h1', { class: 'mono' }, b.id), statusBadge(b.status), behindBadge(b), h('span', { class: 'spacer' }), actions),
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
}
