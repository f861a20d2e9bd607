// Usage: the tokens of the last seven days by day, project and model, from the Admin API's
// usage report (an admin key, or a server with authentication off).

import { ApiError, api } from './api.js';
import { h, show } from './dom.js';

const DAY = 86400;

function fmtDay(secs) {
  return new Date(secs * 1000).toISOString().slice(0, 10);
}

function num(n) {
  return Number(n).toLocaleString('en-US');
}

export async function renderUsage() {
  const now = Math.floor(Date.now() / 1000);
  const start = now - (now % DAY) - 6 * DAY;
  let page;
  try {
    page = await api('GET', `/organization/usage/completions?start_time=${start}&bucket_width=1d&limit=7&group_by=project_id&group_by=model`);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 403)) throw e;
    show(h('div', { class: 'bar' }, h('h1', {}, 'Usage')),
      h('p', { class: 'muted', id: 'usage-needs-admin' }, 'The usage report takes an admin key (made with `openbatch keys create --admin`): sign out and sign in with one.'));
    return;
  }
  const rows = [];
  for (const bucket of page.data.slice().reverse()) {
    for (const r of bucket.results) rows.push({ day: bucket.start_time, ...r });
  }
  const head = h('div', { class: 'bar' }, h('h1', {}, 'Usage'), h('span', { class: 'muted' }, 'tokens of successful batch lines, the last 7 days (UTC)'));
  if (!rows.length) {
    show(head, h('div', { class: 'empty', id: 'usage-empty' }, h('p', { class: 'big' }, 'No usage in the last 7 days.')));
    return;
  }
  show(head, h('div', { class: 'scroll' }, h('table', { class: 'list', id: 'usage' },
    h('thead', {}, h('tr', {}, ['Day', 'Project', 'Model', 'Requests', 'Input tokens', 'Cached', 'Output tokens'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.map((r) => h('tr', { dataset: { project: r.project_id, model: r.model } },
      h('td', { class: 'nowrap' }, fmtDay(r.day)),
      h('td', { class: 'mono' }, r.project_id),
      h('td', { class: 'model' }, r.model),
      h('td', { class: 'num' }, num(r.num_model_requests)),
      h('td', { class: 'num input' }, num(r.input_tokens)),
      h('td', { class: 'num' }, num(r.input_cached_tokens)),
      h('td', { class: 'num output' }, num(r.output_tokens))))))));
}
