// The line checks the server applies to a batch input file (src/engine/validation.rs), run
// in the browser before uploading so problems show with their line numbers at once.

export const ENDPOINTS = ['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses', '/v1/moderations'];
export const REQUIRED_FIELD = {
  '/v1/chat/completions': 'messages',
  '/v1/completions': 'prompt',
  '/v1/embeddings': 'input',
  '/v1/responses': 'input',
  '/v1/moderations': 'input',
};
export const MAX_REQUESTS = 50000;
export const MAX_INPUT_BYTES = 200 * 1024 * 1024;

/** The checks the server applies to a batch input file, run before uploading. */
export function checkLines(text, endpointHint) {
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
