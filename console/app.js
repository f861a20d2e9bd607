// OpenBatch console: a pure client of the public /v1 API. Routing, sign-in, start-up.
// Safety rules every module of the console keeps:
// * no HTML parsing of data: every string the server or the user supplies reaches the page
//   through text nodes or attribute setters (see h()), so markup in a file name, metadata
//   value, custom_id or error message is shown, never run;
// * the API key lives in sessionStorage only and is sent as an Authorization header; it never
//   appears in a URL;
// * no request leaves this origin (the CSP says so too).

import { ApiError, KEY_STORE, api, state } from './api.js';
import { renderBatch, renderBatches } from './batches.js';
import { renderNew } from './create.js';
import { errorBox, h, show } from './dom.js';
import { renderFiles } from './files.js';
import { renderUsage } from './usage.js';

function route() {
  const hash = location.hash.replace(/^#/, '') || '/batches';
  const [path, query] = hash.split('?');
  return { parts: path.split('/').filter(Boolean), params: new URLSearchParams(query || '') };
}

// Stops whatever keeps the current view fresh: a poll timer, an event stream.
function stopTimer() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  delete document.getElementById('view').dataset.source;
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
    if (parts[0] === 'usage') return await renderUsage();
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

document.getElementById('signout').addEventListener('click', () => {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  location.hash = '#/batches';
  render();
});
state.rerender = render;
state.unauthorized = signIn;
window.addEventListener('hashchange', render);
render();
