// perceiver serve playground: reads /info, then posts a masked text to /fill-mask, or a text or
// an image to /classify, and shows the answer.
// Plain browser JavaScript, no libraries, no build step.
'use strict';

// The byte-level tokenizer's special tokens, by id; byte b is id b + 6.
const SPECIAL_TOKENS = ['[PAD]', '[BOS]', '[EOS]', '[MASK]', '[CLS]', '[SEP]'];
const MASK_ID = 3;
const NUM_SPECIAL = SPECIAL_TOKENS.length;
const VOCAB_SIZE = 256 + NUM_SPECIAL;
const KEY_STORAGE = 'perceiver-serve-api-key';
const CLASSIFIERS = ['text-classification', 'image-classification'];

const $ = (id) => document.getElementById(id);
const utf8 = new TextEncoder();

const state = {
  info: null,
  apiKey: readKey(),
  busy: false,
  requests: 0,
  // The image to classify (a File), its preview's object URL, and its size in pixels once the
  // browser has decoded it ({width, height}; false if the browser cannot show it).
  image: null,
  previewUrl: null,
  imageSize: null,
  // Counts the images chosen, so that an answer for an earlier one is not shown under a later.
  imageChoice: 0,
};

function readKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || '';
  } catch (_) {
    return '';
  }
}

function storeKey(key) {
  state.apiKey = key;
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch (_) {
    // Storage can be off; the key then lasts until the page is reloaded.
  }
}

// Splits a text as the server's tokenizer does: `[MASK]` is one masked byte, `[MASK:n]` n
// bytes, the other special-token names are their tokens, everything else is UTF-8 bytes.
// Returns {pieces, error}; each piece is {bytes}, {special: id} or {masks: n}.
function parseMasked(text) {
  const pieces = [];
  let literalStart = 0;
  let cursor = 0;
  const literal = (end) => {
    if (end > literalStart) pieces.push({ bytes: utf8.encode(text.slice(literalStart, end)) });
  };
  for (;;) {
    const at = text.indexOf('[', cursor);
    if (at < 0) break;
    const rest = text.slice(at, at + 32);
    let piece = null;
    let consumed = 0;
    const special = SPECIAL_TOKENS.findIndex((name) => rest.startsWith(name));
    if (special >= 0) {
      piece = special === MASK_ID ? { masks: 1 } : { special };
      consumed = SPECIAL_TOKENS[special].length;
    } else if (rest.startsWith('[MASK:')) {
      const run = /^\[MASK:([0-9]+)\]/.exec(text.slice(at, at + 40));
      const n = run ? Number(run[1]) : 0;
      if (!(n >= 1 && Number.isSafeInteger(n))) {
        return { pieces, error: 'a [MASK:n] needs a positive whole number n' };
      }
      piece = { masks: n };
      consumed = run[0].length;
    }
    if (!piece) {
      cursor = at + 1;
      continue;
    }
    literal(at);
    pieces.push(piece);
    cursor = at + consumed;
    literalStart = cursor;
  }
  literal(text.length);
  return { pieces, error: null };
}

function countTokens(pieces) {
  let tokens = 0;
  let masked = 0;
  for (const p of pieces) {
    if (p.bytes) tokens += p.bytes.length;
    else if (p.masks) {
      tokens += p.masks;
      masked += p.masks;
    } else tokens += 1;
  }
  return { tokens, masked };
}

// ---------------------------------------------------------------- model facts (/info)

function formatCount(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + ' B';
  if (n >= 1e6) return (n / 1e6).toFixed(1) + ' M';
  if (n >= 1e3) return (n / 1e3).toFixed(1) + ' k';
  return String(n);
}

function formatBytes(n) {
  if (n >= 1 << 20) return +(n / (1 << 20)).toFixed(1) + ' MiB';
  if (n >= 1 << 10) return +(n / (1 << 10)).toFixed(1) + ' KiB';
  return n + ' bytes';
}

function formatNumber(n) {
  return Number(n).toLocaleString('en-US');
}

function factList(facts) {
  return facts.map(([name, value]) => {
    const div = document.createElement('div');
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    dt.textContent = name;
    dd.textContent = String(value);
    div.append(dt, dd);
    return div;
  });
}

function isImageTask() {
  return !!state.info && state.info.task === 'image-classification';
}

function showInfo(info) {
  state.info = info;
  const task = info.task || 'fill-mask';
  const labels = info.labels || [];
  $('model-id').textContent = info.model_id;
  $('model-task').textContent = task;
  $('model-labels-fact').hidden = !info.labels;
  $('model-labels').textContent = formatNumber(labels.length);
  $('model-precision').textContent = info.precision || '?';
  $('model-parameters').textContent = formatCount(info.parameters);
  $('model-version').textContent = info.version;
  document.title = info.model_id + ' · perceiver serve';
  const l = info.limits;
  const image = task === 'image-classification';
  const shared = [
    ['Largest request body', formatBytes(l.payload_limit)],
    ['Requests at once', l.max_concurrent_requests],
  ];
  let facts;
  if (task === 'fill-mask') {
    facts = [
      ['Longest text', l.max_input_length + ' tokens (bytes and masks)'],
      ['Texts per request', l.max_client_batch_size],
      ['Candidates per request', l.max_predictions + ' (masked bytes × candidates)'],
      ...shared,
      ['Batch', l.max_batch_requests + ' texts, ' + l.max_batch_tokens + ' tokens'],
    ];
  } else {
    facts = [
      image
        ? ['Largest image', formatNumber(l.max_image_pixels) + ' pixels (width × height)']
        : ['Longest text', l.max_input_length + ' tokens (bytes, [CLS] and [SEP])'],
      [image ? 'Images per request' : 'Texts per request', l.max_client_batch_size],
      ['Labels per request', formatNumber(l.max_predictions) + ' (inputs × labels shown)'],
      ...shared,
      ['Batch', image ? l.max_batch_requests + ' images' : l.max_batch_requests + ' texts, ' + l.max_batch_tokens + ' tokens'],
    ];
  }
  facts.push(['Batch wait', l.max_batch_wait_us + ' µs']);
  $('limits').replaceChildren(...factList(facts));

  const fillMask = task === 'fill-mask';
  const classifier = CLASSIFIERS.includes(task);
  $('fill-form').hidden = !fillMask;
  $('classify-form').hidden = !classifier;
  $('unsupported').hidden = fillMask || classifier;
  if (classifier) {
    $('classify-title').textContent = image ? 'Classify an image' : 'Classify a text';
    $('image-input').hidden = !image;
    $('text-input').hidden = image;
    // The server's defaults: 5 labels for an image, every label for a text.
    const topK = $('label-top-k');
    topK.max = String(Math.max(1, labels.length));
    topK.value = labels.length ? String(image ? Math.min(5, labels.length) : labels.length) : '';
  } else if (!fillMask) {
    $('unsupported').textContent =
      'This page does not try ' + task + ' models; the API docs describe the routes.';
  }
  updateCount();
  updateClassCount();
  updateImageFacts();
  document.body.dataset.info = 'loaded';
}

// ---------------------------------------------------------------- requests

// `body` goes as JSON, or as it is (a File) when `contentType` is given.
async function call(method, path, body, contentType) {
  const headers = {};
  let payload;
  if (contentType) {
    headers['Content-Type'] = contentType;
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  if (state.apiKey) headers.Authorization = 'Bearer ' + state.apiKey;
  const response = await fetch(path, { method, headers, body: payload, cache: 'no-store' });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch (_) {
    // Not JSON (a proxy's page, say): shown as text.
  }
  return { status: response.status, ok: response.ok, json, text };
}

async function loadInfo() {
  try {
    const r = await call('GET', '/info');
    if (r.status === 401) {
      askForKey(r);
      return;
    }
    if (!r.ok || !r.json) {
      showError(r);
      return;
    }
    $('auth').hidden = true;
    showInfo(r.json);
  } catch (e) {
    showError({ status: 0, json: null, text: 'cannot reach the server: ' + e.message });
  }
}

function askForKey(r) {
  const auth = $('auth');
  const wasHidden = auth.hidden;
  auth.hidden = false;
  $('auth-message').textContent = state.apiKey
    ? 'The server refused this key.'
    : 'This server requires an API key.';
  $('auth-server').textContent = 'It says: ' + errorText(r);
  document.body.dataset.info = 'needs-key';
  if (wasHidden || state.apiKey) $('api-key').focus();
}

function errorText(r) {
  if (r.json && typeof r.json.error === 'string') return r.json.error;
  return r.text || 'no answer';
}

function showError(r) {
  const kind = r.json && r.json.error_type ? ' ' + r.json.error_type : '';
  $('error-status').textContent = r.status ? '(' + r.status + kind + ')' : '';
  $('error-message').textContent = errorText(r);
  $('error').hidden = false;
  $('result').hidden = true;
  $('labels-result').hidden = true;
}

// Sends one request at a time from a form's button, which shows `busyText` meanwhile; hands a
// successful answer to `show(json, elapsed)`, or shows the server's error, unless `current()`
// says the input has changed meanwhile (then nothing is shown: status "stale").
// A press while a request is out does nothing.
async function submit(button, busyText, request, show, current = () => true) {
  if (state.busy) return;
  state.busy = true;
  const idleText = button.textContent;
  button.disabled = true;
  button.textContent = busyText;
  document.body.dataset.status = 'busy';
  const started = performance.now();
  try {
    const r = await request();
    const elapsed = performance.now() - started;
    if (!current()) {
      document.body.dataset.status = 'stale';
    } else if (r.ok && r.json) {
      $('error').hidden = true;
      show(r.json, elapsed);
      document.body.dataset.status = 'done';
    } else {
      if (r.status === 401) askForKey(r);
      showError(r);
      document.body.dataset.status = 'error';
    }
  } catch (e) {
    const shown = current();
    if (shown) showError({ status: 0, json: null, text: 'cannot reach the server: ' + e.message });
    document.body.dataset.status = shown ? 'error' : 'stale';
  } finally {
    state.busy = false;
    button.disabled = false;
    button.textContent = idleText;
    state.requests += 1;
    document.body.dataset.requests = String(state.requests);
  }
}

function fill() {
  const text = $('text').value;
  const parameters = { add_special_tokens: $('special').checked };
  const topK = $('top-k').value.trim();
  // An empty box leaves the server's default; anything else goes as typed, for the server to judge.
  if (topK !== '') parameters.top_k = Number(topK);
  submit(
    $('fill'),
    'Filling…',
    () => call('POST', '/fill-mask', { inputs: text, parameters }),
    (answer, elapsed) => showAnswer(text, parameters, answer, elapsed),
  );
}

function classify() {
  const topK = $('label-top-k').value.trim();
  let request;
  let current = () => true;
  if (isImageTask()) {
    const file = state.image;
    if (!file) {
      $('image-facts').textContent = 'Choose an image first: a file, a drop or a paste.';
      $('image-file').focus();
      return;
    }
    // The file's own bytes, as `perceiver classify` reads them; the server decodes them.
    const type = file.type.startsWith('image/') ? file.type : 'application/octet-stream';
    const query = topK === '' ? '' : '?top_k=' + encodeURIComponent(topK);
    request = () => call('POST', '/classify' + query, file, type);
    const choice = state.imageChoice;
    current = () => choice === state.imageChoice;
  } else {
    const parameters = {};
    if (topK !== '') parameters.top_k = Number(topK);
    const text = $('class-text').value;
    request = () => call('POST', '/classify', { inputs: text, parameters });
  }
  submit($('classify'), 'Classifying…', request, showLabels, current);
}

// ---------------------------------------------------------------- the answer

// One UTF-8 character (or one U+FFFD for an invalid sequence, as the server's decoder and
// TextDecoder replace them) from bytes[i..]: [text, bytes used].
function nextChar(bytes, i) {
  const b = bytes[i];
  if (b < 0x80) return [String.fromCharCode(b), 1];
  let need;
  let lo = 0x80;
  let hi = 0xbf;
  if (b >= 0xc2 && b <= 0xdf) need = 1;
  else if (b >= 0xe0 && b <= 0xef) {
    need = 2;
    if (b === 0xe0) lo = 0xa0;
    if (b === 0xed) hi = 0x9f;
  } else if (b >= 0xf0 && b <= 0xf4) {
    need = 3;
    if (b === 0xf0) lo = 0x90;
    if (b === 0xf4) hi = 0x8f;
  } else return ['\uFFFD', 1];
  let cp = b & (0x3f >> need);
  for (let k = 1; k <= need; k++) {
    const c = bytes[i + k];
    if (c === undefined || c < lo || c > hi) return ['\uFFFD', k];
    cp = (cp << 6) | (c & 0x3f);
    lo = 0x80;
    hi = 0xbf;
  }
  return [String.fromCodePoint(cp), need + 1];
}

// The text with each masked byte replaced by its best candidate; filled characters marked.
function renderFilled(pieces, rows, addSpecial) {
  const items = []; // {byte, filled} or {special, filled}
  if (addSpecial) items.push({ special: 4, filled: false });
  let row = 0;
  for (const p of pieces) {
    if (p.bytes) for (const byte of p.bytes) items.push({ byte, filled: false });
    else if (p.special !== undefined) items.push({ special: p.special, filled: false });
    else {
      for (let k = 0; k < p.masks; k++) {
        const best = rows[row] && rows[row][0];
        row += 1;
        if (!best) return null;
        if (best.token < NUM_SPECIAL) items.push({ special: best.token, filled: true });
        else items.push({ byte: best.token - NUM_SPECIAL, filled: true });
      }
    }
  }
  if (addSpecial) items.push({ special: 5, filled: false });
  if (row !== rows.length) return null;

  const out = document.createDocumentFragment();
  let run = { text: '', filled: false };
  const flush = () => {
    if (!run.text) return;
    if (run.filled) {
      const mark = document.createElement('mark');
      mark.textContent = run.text;
      out.append(mark);
    } else out.append(run.text);
    run = { text: '', filled: false };
  };
  const add = (text, filled) => {
    if (filled && text === '\n') {
      // A filled line break gets a sign (drawn by the style sheet), or it would not be seen.
      flush();
      const mark = document.createElement('mark');
      mark.className = 'newline';
      mark.textContent = text;
      out.append(mark);
      return;
    }
    if (filled !== run.filled) flush();
    run.filled = filled;
    run.text += text;
  };
  let i = 0;
  while (i < items.length) {
    const item = items[i];
    if (item.special !== undefined) {
      flush();
      const span = document.createElement('span');
      span.className = 'special';
      span.textContent = SPECIAL_TOKENS[item.special];
      if (item.filled) {
        const mark = document.createElement('mark');
        mark.append(span);
        out.append(mark);
      } else out.append(span);
      i += 1;
      continue;
    }
    let end = i;
    while (end < items.length && items[end].special === undefined) end += 1;
    const bytes = items.slice(i, end).map((x) => x.byte);
    let k = 0;
    while (k < bytes.length) {
      const [text, used] = nextChar(bytes, k);
      const filled = items.slice(i + k, i + k + used).some((x) => x.filled);
      add(text, filled);
      k += used;
    }
    flush();
    i = end;
  }
  flush();
  return out;
}

// How a candidate token reads: printable bytes as themselves, whitespace and control bytes by
// a sign and a name, other bytes in hex.
function describeToken(token, tokenStr) {
  if (token < NUM_SPECIAL) return { glyph: tokenStr, name: 'special', title: 'special token ' + tokenStr };
  const b = token - NUM_SPECIAL;
  const hex = '0x' + b.toString(16).toUpperCase().padStart(2, '0');
  const named = {
    0x20: ['␣', 'space'],
    0x0a: ['↵', 'newline'],
    0x09: ['⇥', 'tab'],
    0x0d: ['␍', 'return'],
    0x00: ['␀', 'null'],
  };
  if (named[b]) return { glyph: named[b][0], name: named[b][1], title: named[b][1] + ' (byte ' + hex + ')' };
  if (b < 0x20 || b === 0x7f) return { glyph: hex, name: 'control', title: 'control byte ' + hex };
  if (b < 0x7f) return { glyph: String.fromCharCode(b), name: '', title: 'byte ' + hex };
  const part = b >= 0xc0 ? 'starts' : 'continues';
  return { glyph: hex, name: '', title: 'byte ' + hex + ': ' + part + ' a multi-byte UTF-8 character' };
}

function formatPercent(score) {
  const p = score * 100;
  if (p >= 0.1) return p.toFixed(1) + '%';
  if (p >= 0.001) return p.toPrecision(1) + '%';
  return '<0.001%';
}

function renderCandidate(c) {
  const d = describeToken(c.token, c.token_str);
  const li = document.createElement('li');
  li.className = 'candidate';
  li.dataset.token = String(c.token);
  li.dataset.score = String(c.score);
  li.title = d.title + ', token ' + c.token;
  const glyph = document.createElement('span');
  glyph.className = 'glyph';
  const ch = document.createElement('span');
  ch.className = 'char';
  ch.textContent = d.glyph;
  glyph.append(ch);
  if (d.name) {
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = ' ' + d.name;
    glyph.append(name);
  }
  li.append(glyph, ...scoreBar(c.score));
  return li;
}

// A probability as a bar and a percentage.
function scoreBar(score) {
  const bar = document.createElement('span');
  bar.className = 'bar';
  bar.setAttribute('aria-hidden', 'true');
  const fillBar = document.createElement('span');
  fillBar.style.width = Math.max(0, Math.min(100, score * 100)) + '%';
  bar.append(fillBar);
  const pct = document.createElement('span');
  pct.className = 'pct';
  pct.textContent = formatPercent(score);
  return [bar, pct];
}

// A classifier's answer for one input: its labels, best first.
function showLabels(answer, elapsed) {
  $('labels').replaceChildren(
    ...answer.map((prediction) => {
      const li = document.createElement('li');
      li.className = 'label';
      li.dataset.label = prediction.label;
      li.dataset.score = String(prediction.score);
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = prediction.label;
      name.title = prediction.label;
      li.append(name, ...scoreBar(prediction.score));
      return li;
    }),
  );
  const total = state.info && state.info.labels ? state.info.labels.length : answer.length;
  $('labels-timing').textContent =
    answer.length + ' of ' + formatNumber(total) + (total === 1 ? ' label' : ' labels') +
    ', answered in ' + Math.round(elapsed) + ' ms';
  $('result').hidden = true;
  $('labels-result').hidden = false;
}

function showAnswer(text, parameters, answer, elapsed) {
  // One mask: a flat list of candidates; several: a list per masked byte.
  const rows = Array.isArray(answer[0]) ? answer : [answer];
  const { pieces, error } = parseMasked(text);
  const filled = error ? null : renderFilled(pieces, rows, parameters.add_special_tokens);
  const target = $('filled');
  if (filled) target.replaceChildren(filled);
  else target.textContent = rows[0] && rows[0][0] ? rows[0][0].sequence : '';

  const list = $('masks');
  list.replaceChildren(
    ...rows.map((row, i) => {
      const li = document.createElement('li');
      li.className = 'mask';
      const h = document.createElement('h3');
      h.append('Masked byte ' + (i + 1));
      const where = document.createElement('span');
      where.className = 'where';
      where.textContent = 'of ' + rows.length;
      h.append(where);
      const ol = document.createElement('ol');
      ol.className = 'candidates';
      ol.setAttribute('aria-label', 'Candidates for masked byte ' + (i + 1) + ', best first');
      ol.append(...row.map(renderCandidate));
      li.append(h, ol);
      return li;
    }),
  );
  const k = rows[0] ? rows[0].length : 0;
  $('timing').textContent =
    rows.length + (rows.length === 1 ? ' masked byte' : ' masked bytes') + ', ' + k +
    (k === 1 ? ' candidate' : ' candidates') + ' each, answered in ' + Math.round(elapsed) + ' ms';
  $('result').hidden = false;
}

// ---------------------------------------------------------------- editing

function updateCount() {
  const text = $('text').value;
  const { pieces, error } = parseMasked(text);
  const out = $('text-count');
  if (error) {
    out.textContent = error + '.';
    return;
  }
  const { tokens, masked } = countTokens(pieces);
  const special = $('special').checked ? 2 : 0;
  let line = tokens + special + ' tokens, ' + masked + ' masked';
  if (state.info) {
    const max = state.info.limits.max_input_length;
    line += ' (the model takes ' + max + ')';
    out.classList.toggle('over', tokens + special > max);
  }
  out.textContent = line;
}

function updateClassCount() {
  const bytes = utf8.encode($('class-text').value).length;
  const out = $('class-text-count');
  let line = bytes + 2 + ' tokens (' + bytes + ' bytes, [CLS] and [SEP])';
  if (state.info && state.info.task === 'text-classification') {
    const max = state.info.limits.max_input_length;
    line += ', the model takes ' + max;
    out.classList.toggle('over', bytes + 2 > max);
  }
  out.textContent = line;
}

function maskSelection() {
  const area = $('text');
  const start = area.selectionStart;
  const end = area.selectionEnd;
  if (start === end) {
    $('text-count').textContent = 'Select the characters to mask first, then press Mask selection.';
    area.focus();
    return;
  }
  const selected = area.value.slice(start, end);
  const parsed = parseMasked(selected);
  const n = parsed.error ? utf8.encode(selected).length : countTokens(parsed.pieces).tokens;
  const replacement = n === 1 ? '[MASK]' : '[MASK:' + n + ']';
  area.focus();
  area.setSelectionRange(start, end);
  // insertText keeps the browser's undo history; setRangeText is the fallback.
  let done = false;
  try {
    done = document.execCommand('insertText', false, replacement);
  } catch (_) {
    done = false;
  }
  if (!done || area.value.slice(start, start + replacement.length) !== replacement) {
    area.setRangeText(replacement, start, end, 'end');
  }
  updateCount();
}

// ---------------------------------------------------------------- the image

function chooseImage(file) {
  // The labels and errors shown are the last image's.
  state.imageChoice += 1;
  $('labels-result').hidden = true;
  $('error').hidden = true;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  state.image = file || null;
  state.imageSize = null;
  const preview = $('image-preview');
  preview.hidden = true;
  if (file) {
    state.previewUrl = URL.createObjectURL(file);
    preview.src = state.previewUrl;
  } else preview.removeAttribute('src');
  updateImageFacts();
}

// A file dropped or pasted becomes the file input's, as if chosen there.
function takeImage(file) {
  try {
    const transfer = new DataTransfer();
    transfer.items.add(file);
    $('image-file').files = transfer.files;
  } catch (_) {
    // Older browsers cannot set a file input's files; the page still sends the file.
  }
  chooseImage(file);
}

// The chosen file's name, size and pixels, and where they pass the server's limits.
function updateImageFacts() {
  const out = $('image-facts');
  const file = state.image;
  out.classList.remove('over');
  if (!file) {
    out.textContent = '';
    return;
  }
  const parts = [file.name || 'pasted image', formatBytes(file.size)];
  const size = state.imageSize;
  if (size) parts.push(size.width + ' × ' + size.height + ' pixels');
  else if (size === false) parts.push('this browser cannot show it, the server may still read it');
  const l = state.info && state.info.limits;
  if (l && file.size > l.payload_limit) {
    parts.push('larger than the server takes (' + formatBytes(l.payload_limit) + ')');
    out.classList.add('over');
  }
  if (l && size && size.width * size.height > l.max_image_pixels) {
    parts.push('more pixels than the server takes (' + formatNumber(l.max_image_pixels) + ')');
    out.classList.add('over');
  }
  out.textContent = parts.join(' · ');
}

function watchImage() {
  const preview = $('image-preview');
  preview.addEventListener('load', () => {
    state.imageSize = { width: preview.naturalWidth, height: preview.naturalHeight };
    preview.hidden = false;
    updateImageFacts();
  });
  preview.addEventListener('error', () => {
    if (!state.image) return;
    state.imageSize = false;
    preview.hidden = true;
    updateImageFacts();
  });
  $('image-file').addEventListener('change', () => chooseImage($('image-file').files[0]));
  const card = $('classify-form');
  card.addEventListener('dragover', (e) => {
    if (!isImageTask()) return;
    e.preventDefault();
    card.classList.add('dragging');
  });
  card.addEventListener('dragleave', (e) => {
    // Leaving for one of the card's own elements is not leaving the card.
    if (!card.contains(e.relatedTarget)) card.classList.remove('dragging');
  });
  card.addEventListener('drop', (e) => {
    card.classList.remove('dragging');
    if (!isImageTask()) return;
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) takeImage(file);
  });
  document.addEventListener('paste', (e) => {
    if (!isImageTask() || !e.clipboardData) return;
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith('image/'));
    if (!file) return;
    e.preventDefault();
    takeImage(file);
  });
}

// ---------------------------------------------------------------- start

// `send` runs when the form is submitted or Ctrl+Enter is pressed in its text box.
function sendFrom(form, textBox, send) {
  $(form).addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  $(textBox).addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      send();
    }
  });
}

function main() {
  sendFrom('fill-form', 'text', fill);
  $('text').addEventListener('input', updateCount);
  $('special').addEventListener('change', updateCount);
  $('mask-selection').addEventListener('click', maskSelection);
  sendFrom('classify-form', 'class-text', classify);
  $('class-text').addEventListener('input', updateClassCount);
  watchImage();
  $('top-k').max = String(VOCAB_SIZE);
  $('auth').addEventListener('submit', (e) => {
    e.preventDefault();
    storeKey($('api-key').value.trim());
    loadInfo();
  });
  document.body.dataset.requests = '0';
  updateCount();
  loadInfo();
}

main();
