// Creating a batch from an uploaded file.

import { api } from './api.js';
import { ENDPOINTS } from './checks.js';
import { errorBox, fmtBytes, h, link, show } from './dom.js';

function newKey() {
  return `console-${crypto.randomUUID()}`;
}

export async function renderNew(fileId) {
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
