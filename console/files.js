// Files: the list, and uploading a batch input with a preview and the line checks.

import { api, download, state } from './api.js';
import { MAX_INPUT_BYTES, checkLines } from './checks.js';
import { errorBox, fmtBytes, fmtTime, h, link, show, confirmDialog } from './dom.js';

function problemsTable(problems) {
  return h('table', { class: 'list', id: 'problems' },
    h('thead', {}, h('tr', {}, ['Line', 'Code', 'Message'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, problems.map((p) => h('tr', {},
      h('td', { class: 'num' }, p.line === null ? '—' : String(p.line)), h('td', { class: 'mono' }, p.code), h('td', {}, p.message)))));
}

export async function renderFiles() {
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
              try { await api('DELETE', `/files/${encodeURIComponent(f.id)}`); state.rerender(); } catch (e) { status.replaceChildren(errorBox(e)); }
            },
          }, 'Delete')))))) : h('div', { class: 'empty' }, h('p', { class: 'big' }, 'No files yet.'), h('p', { class: 'muted' }, 'Upload a JSONL file above.')),
  );
  drop.focus();
}
