// perceiver serve playground: reads /info, then posts a masked text to /fill-mask, a text or an
// image to /classify, or two frames to /flow, and shows the answer.
// Plain browser JavaScript, no libraries, no build step.
'use strict';

// The byte-level tokenizer's special tokens, by id; byte b is id b + 6.
const SPECIAL_TOKENS = ['[PAD]', '[BOS]', '[EOS]', '[MASK]', '[CLS]', '[SEP]'];
const MASK_ID = 3;
const NUM_SPECIAL = SPECIAL_TOKENS.length;
const VOCAB_SIZE = 256 + NUM_SPECIAL;
const KEY_STORAGE = 'perceiver-serve-api-key';
const CLASSIFIERS = ['text-classification', 'image-classification'];
const FLOW_TASK = 'optical-flow';
const AUTOENCODE_TASK = 'multimodal-autoencoding';

const $ = (id) => document.getElementById(id);
const utf8 = new TextEncoder();

const state = {
  info: null,
  apiKey: readKey(),
  busy: false,
  requests: 0,
  // Counts the images chosen, so that an answer for an earlier one is not shown under a later.
  imageChoice: 0,
  // The same for the frames of a flow, either of them.
  frameChoice: 0,
  // The flow shown: {frames, choice, picture (a Blob), pictureUrl, flo, floUrl}.
  flow: null,
  // Aborts the flow request out (a new frame makes it useless, and the server drops the tiles
  // of a request whose client has gone: a large pair's take minutes).
  flowAbort: null,
};

// The file pickers (see filePicker): `image` for a classifier, `frames` (earlier, later) for a
// flow. Set up by main().
const pickers = { image: null, frames: [] };

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

function isFlowTask() {
  return !!state.info && state.info.task === FLOW_TASK;
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
  if (task === FLOW_TASK) {
    const [height, width] = info.tile_size || ['?', '?'];
    const tile = formatSize({ width, height });
    $('flow-tile').textContent = tile;
    facts = [
      ['Smallest frame', tile + ' (the model\'s tile)'],
      ['Largest frames', formatNumber(l.max_image_pixels) + ' pixels (width × height), the two together'],
      ...shared,
      ['Batch', 'one tile per forward pass'],
    ];
  } else if (task === AUTOENCODE_TASK) {
    const clip = info.clip || {};
    facts = [
      ['Clip', clip.frames + ' frames of ' + formatSize({ width: clip.width, height: clip.height }) +
        ', ' + formatNumber(clip.audio_samples) + ' audio samples at ' + formatNumber(clip.sample_rate) + ' Hz'],
      ...shared,
      ['Batch', 'one part of a clip per forward pass'],
    ];
  } else if (task === 'fill-mask') {
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
  // Flow tiles and clip parts run one per pass: no batch to wait for.
  if (task !== FLOW_TASK && task !== AUTOENCODE_TASK) facts.push(['Batch wait', l.max_batch_wait_us + ' µs']);
  $('limits').replaceChildren(...factList(facts));

  const fillMask = task === 'fill-mask';
  const classifier = CLASSIFIERS.includes(task);
  const flow = task === FLOW_TASK;
  $('fill-form').hidden = !fillMask;
  $('classify-form').hidden = !classifier;
  $('flow-form').hidden = !flow;
  $('unsupported').hidden = fillMask || classifier || flow;
  if (classifier) {
    $('classify-title').textContent = image ? 'Classify an image' : 'Classify a text';
    $('image-input').hidden = !image;
    $('text-input').hidden = image;
    // The server's defaults: 5 labels for an image, every label for a text.
    const topK = $('label-top-k');
    topK.max = String(Math.max(1, labels.length));
    topK.value = labels.length ? String(image ? Math.min(5, labels.length) : labels.length) : '';
  } else if (!fillMask && !flow) {
    $('unsupported').textContent =
      'This page does not try ' + task + ' models; the API docs describe the routes' +
      (task === AUTOENCODE_TASK ? ' (POST /autoencode takes a clip\'s frames and audio).' : '.');
  }
  updateCount();
  updateClassCount();
  updateImageFacts();
  updateFrameFacts();
  document.body.dataset.info = 'loaded';
}

// ---------------------------------------------------------------- requests

// `body` goes as a multipart form (a FormData: the browser writes its content type), as it is
// (a File) when `contentType` is given, or as JSON. With `accept`, a successful answer that is
// not JSON is kept as a Blob, with its headers. `signal` aborts it.
async function call(method, path, body, { contentType, accept, signal } = {}) {
  const headers = {};
  let payload;
  if (body instanceof FormData) {
    payload = body;
  } else if (contentType) {
    headers['Content-Type'] = contentType;
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  if (accept) headers.Accept = accept;
  if (state.apiKey) headers.Authorization = 'Bearer ' + state.apiKey;
  const response = await fetch(path, { method, headers, body: payload, cache: 'no-store', signal });
  const type = response.headers.get('Content-Type') || '';
  if (accept && response.ok && !type.startsWith('application/json')) {
    const blob = await response.blob();
    return { status: response.status, ok: true, json: null, text: '', blob, headers: response.headers };
  }
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
  $('flow-result').hidden = true;
}

// Sends one request at a time from a form's button, which shows `busyText` meanwhile; hands a
// successful answer to `show(answer, elapsed, response)` (the answer: JSON, or a Blob; see
// call), or shows the server's error, unless `current()` says the input has changed meanwhile
// (then nothing is shown: status "stale", or "cancelled" where the change aborted the request).
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
    } else if (r.ok && (r.json || r.blob)) {
      $('error').hidden = true;
      show(r.json || r.blob, elapsed, r);
      document.body.dataset.status = 'done';
    } else {
      if (r.status === 401) askForKey(r);
      showError(r);
      document.body.dataset.status = 'error';
    }
  } catch (e) {
    const shown = current();
    if (shown) showError({ status: 0, json: null, text: 'cannot reach the server: ' + e.message });
    const aborted = e.name === 'AbortError';
    document.body.dataset.status = shown ? 'error' : aborted ? 'cancelled' : 'stale';
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
    const file = pickers.image.file;
    if (!file) {
      $('image-facts').textContent = 'Choose an image first: a file, a drop or a paste.';
      $('image-file').focus();
      return;
    }
    // The file's own bytes, as `perceiver classify` reads them; the server decodes them.
    const type = file.type.startsWith('image/') ? file.type : 'application/octet-stream';
    const query = topK === '' ? '' : '?top_k=' + encodeURIComponent(topK);
    request = () => call('POST', '/classify' + query, file, { contentType: type });
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

// The frames as `POST /flow` takes them: a multipart form of the files' own bytes.
function frameForm(frames) {
  const form = new FormData();
  form.append('frame1', frames[0]);
  form.append('frame2', frames[1]);
  return form;
}

// Everything the page can tell the server would refuse: a frame missing or refused by
// frameProblems, the pair refused by pairProblems, a saturation that is not a positive number.
function flowProblems() {
  const problems = [];
  const missing = FRAME_NAMES.filter((_, i) => !pickers.frames[i].file);
  if (missing.length) problems.push('choose the ' + missing.join(' and the '));
  pickers.frames.forEach((picker, i) => {
    for (const [verb, what] of frameProblems(picker)) {
      problems.push(['the', FRAME_NAMES[i], verb, what].join(' '));
    }
  });
  problems.push(...pairProblems());
  const box = $('max-flow');
  const maxFlow = box.value.trim();
  // As the server reads it: a positive, finite 32-bit float.
  const single = Math.fround(Number(maxFlow));
  const positive = single > 0 && Number.isFinite(single);
  if (box.validity.badInput || (maxFlow !== '' && !positive)) {
    problems.push('the saturation must be a positive number of pixels, or empty');
  }
  return problems;
}

async function computeFlow() {
  if (state.busy) return;
  // The checks need the frames' sizes, known moments after they are chosen.
  const choice = state.frameChoice;
  await Promise.all(pickers.frames.map((p) => p.ready));
  if (choice !== state.frameChoice) return;
  const problems = flowProblems();
  if (problems.length) {
    const out = $('flow-check');
    out.textContent = 'Not sent: ' + problems.join('; ') + '.';
    out.classList.add('over');
    const missing = pickers.frames.find((p) => !p.file);
    if (missing) missing.input.focus();
    return;
  }
  const frames = pickers.frames.map((p) => p.file);
  const size = pickers.frames[0].size;
  const maxFlow = $('max-flow').value.trim();
  const query = maxFlow === '' ? '' : '?max_flow=' + encodeURIComponent(maxFlow);
  submit(
    $('flow'),
    'Computing…',
    () =>
      call('POST', '/flow' + query, frameForm(frames), {
        accept: 'image/png',
        signal: flowSignal(),
      }),
    (picture, elapsed, r) => showFlow({ frames, choice, size, maxFlow, picture }, elapsed, r),
    () => choice === state.frameChoice,
  );
}

// The shown flow's .flo file: asked for once (the server computes the flow again), then saved
// through a download link, which stays for saving it again.
function downloadFlo() {
  const flow = state.flow;
  if (!flow) return;
  if (flow.floUrl) {
    $('flo-link').click();
    return;
  }
  submit(
    $('flo'),
    'Preparing…',
    () =>
      call('POST', '/flow', frameForm(flow.frames), {
        accept: 'application/octet-stream',
        signal: flowSignal(),
      }),
    (flo) => saveFlo(flow, flo),
    () => flow === state.flow && flow.choice === state.frameChoice,
  );
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

// A magnitude in pixels, to three significant digits.
function formatPixels(value) {
  const n = Number(Number(value).toPrecision(3));
  return n + (n === 1 ? ' pixel' : ' pixels');
}

// A flow's picture, and its statistics from the answer's headers.
function showFlow(flow, elapsed, r) {
  forgetFlow();
  flow.pictureUrl = URL.createObjectURL(flow.picture);
  state.flow = flow;
  $('flow-picture').src = flow.pictureUrl;
  const stat = (id, header, format) => {
    const value = r.headers.get(header);
    $(id).dataset.value = value === null ? '' : value;
    $(id).textContent = value === null ? '?' : format(value);
  };
  stat('flow-mean', 'X-Flow-Mean-Magnitude', formatPixels);
  stat('flow-max', 'X-Flow-Max-Magnitude', formatPixels);
  stat('flow-tiles', 'X-Flow-Tiles', formatNumber);
  $('flow-saturation').textContent =
    flow.maxFlow === '' ? 'the largest magnitude' : formatPixels(flow.maxFlow);
  $('flow-timing').textContent =
    (flow.size ? formatSize(flow.size) + ', ' : '') + 'answered in ' + Math.round(elapsed) + ' ms';
  $('flow-result').hidden = false;
}

// Lets go of the last flow's files.
function forgetFlow() {
  const flow = state.flow;
  if (flow) {
    URL.revokeObjectURL(flow.pictureUrl);
    if (flow.floUrl) URL.revokeObjectURL(flow.floUrl);
  }
  state.flow = null;
  const link = $('flo-link');
  link.hidden = true;
  link.removeAttribute('href');
}

function saveFlo(flow, flo) {
  flow.flo = flo;
  flow.floUrl = URL.createObjectURL(flo);
  const link = $('flo-link');
  link.href = flow.floUrl;
  link.textContent = 'flow.flo, ' + formatBytes(flo.size);
  link.hidden = false;
  link.click();
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

// ---------------------------------------------------------------- files: the image, the frames

// A file input that also takes a dropped or pasted file (`take`), previewed through a blob:
// URL. It holds the file and, once the browser has decoded it, its size in pixels ({width,
// height}; false if the browser cannot show it); `ready` settles then. `changed()` runs on
// each choice, `decoded()` once the size is known.
function filePicker(inputId, previewId, changed, decoded) {
  const picker = {
    input: $(inputId),
    preview: $(previewId),
    file: null,
    url: null,
    size: null,
    ready: Promise.resolve(),
  };
  let settle = () => {};
  picker.choose = (file) => {
    if (picker.url) URL.revokeObjectURL(picker.url);
    // Whoever waits on the previous file stops waiting.
    settle();
    picker.file = file || null;
    picker.url = null;
    picker.size = null;
    picker.preview.hidden = true;
    if (picker.file) {
      picker.ready = new Promise((resolve) => {
        settle = resolve;
      });
      picker.url = URL.createObjectURL(picker.file);
      picker.preview.src = picker.url;
    } else {
      picker.ready = Promise.resolve();
      picker.preview.removeAttribute('src');
    }
    changed();
  };
  // A file dropped or pasted becomes the file input's, as if chosen there.
  picker.take = (file) => {
    try {
      const transfer = new DataTransfer();
      transfer.items.add(file);
      picker.input.files = transfer.files;
    } catch (_) {
      // Older browsers cannot set a file input's files; the page still sends the file.
    }
    picker.choose(file);
  };
  const known = (size) => {
    picker.size = size;
    picker.preview.hidden = !size;
    settle();
    decoded();
  };
  picker.preview.addEventListener('load', () => {
    if (picker.file) known({ width: picker.preview.naturalWidth, height: picker.preview.naturalHeight });
  });
  picker.preview.addEventListener('error', () => {
    if (picker.file) known(false);
  });
  picker.input.addEventListener('change', () => picker.choose(picker.input.files[0]));
  return picker;
}

// What the page says of a chosen file: its name, byte size and pixels.
function fileFacts(picker) {
  const parts = [picker.file.name || 'pasted image', formatBytes(picker.file.size)];
  const size = picker.size;
  if (size) parts.push(formatSize(size));
  else if (size === false) parts.push('this browser cannot show it, the server may still read it');
  return parts;
}

function formatSize(size) {
  return size.width + ' × ' + size.height + ' pixels';
}

function imageChosen() {
  // The labels and errors shown are the last image's.
  state.imageChoice += 1;
  $('labels-result').hidden = true;
  $('error').hidden = true;
  updateImageFacts();
}

// The chosen image's name, size and pixels, and where they pass the server's limits.
function updateImageFacts() {
  const out = $('image-facts');
  const picker = pickers.image;
  out.classList.remove('over');
  if (!picker || !picker.file) {
    out.textContent = '';
    return;
  }
  const parts = fileFacts(picker);
  const size = picker.size;
  const l = state.info && state.info.limits;
  if (l && picker.file.size > l.payload_limit) {
    parts.push('larger than the server takes (' + formatBytes(l.payload_limit) + ')');
    out.classList.add('over');
  }
  if (l && size && size.width * size.height > l.max_image_pixels) {
    parts.push('more pixels than the server takes (' + formatNumber(l.max_image_pixels) + ')');
    out.classList.add('over');
  }
  out.textContent = parts.join(' · ');
}

// A signal for the next flow request, aborted when a frame changes.
function flowSignal() {
  state.flowAbort = new AbortController();
  return state.flowAbort.signal;
}

function frameChosen() {
  // The flow and errors shown are the last pair's; a request for the last pair is abandoned.
  state.frameChoice += 1;
  if (state.flowAbort) state.flowAbort.abort();
  state.flowAbort = null;
  $('flow-result').hidden = true;
  $('error').hidden = true;
  updateFrameFacts();
}

const FRAME_NAMES = ['earlier frame', 'later frame'];

// What the server would refuse one frame for, as far as the page can tell from its size: each
// [verb, what] ("the later frame is smaller than …").
function frameProblems(picker) {
  const problems = [];
  const size = picker.size;
  if (!size || !state.info) return problems;
  const l = state.info.limits;
  if (size.width * size.height > l.max_image_pixels) {
    problems.push(['has', 'more pixels than the server takes (' + formatNumber(l.max_image_pixels) + ')']);
  }
  const tile = state.info.tile_size;
  if (tile && (size.height < tile[0] || size.width < tile[1])) {
    const least = formatSize({ width: tile[1], height: tile[0] });
    problems.push(['is', 'smaller than the model\'s tile (' + least + ')']);
  }
  return problems;
}

// The multipart body's size, as Chromium and Safari write it (Firefox's boundary is a little
// longer): each file under a boundary line and its part's header, then a closing line.
function formBytes(files) {
  const boundaryLine = 2 + 38 + 2; // "--", "----WebKitFormBoundary" and 16 characters, CRLF
  let bytes = boundaryLine + 2; // the closing one ends in "--"
  files.forEach((file, i) => {
    const head =
      'Content-Disposition: form-data; name="frame' + (i + 1) + '"; filename="' + file.name + '"\r\n' +
      'Content-Type: ' + (file.type || 'application/octet-stream') + '\r\n\r\n';
    bytes += boundaryLine + utf8.encode(head).length + file.size + 2;
  });
  return bytes;
}

// Two byte counts, to the byte where rounding would make them read the same.
function formatBytesApart(a, b) {
  const [x, y] = [formatBytes(a), formatBytes(b)];
  return x === y ? [formatNumber(a) + ' bytes', formatNumber(b) + ' bytes'] : [x, y];
}

// What the server would refuse the pair for: sizes that differ, more pixels together than its
// limit (it holds both frames while the flow is computed), a body over its limit.
function pairProblems() {
  const [first, second] = pickers.frames;
  const problems = [];
  if (!first.file || !second.file) return problems;
  const [a, b] = [first.size, second.size];
  if (a && b && (a.width !== b.width || a.height !== b.height)) {
    problems.push('the frames differ in size (' + formatSize(a) + ' and ' + formatSize(b) + ')');
  }
  const l = state.info && state.info.limits;
  if (l && a && b) {
    const [one, other] = [a.width * a.height, b.width * b.height];
    // A frame over the limit alone is said of that frame (frameProblems).
    if (one + other > l.max_image_pixels && Math.max(one, other) <= l.max_image_pixels) {
      problems.push(
        'the two frames are ' + formatNumber(one + other) + ' pixels together, more than the server takes (' +
          formatNumber(l.max_image_pixels) + ')',
      );
    }
  }
  const bytes = formBytes([first.file, second.file]);
  if (l && bytes > l.payload_limit) {
    const [sent, limit] = formatBytesApart(bytes, l.payload_limit);
    problems.push(
      'the two files come to about ' + sent + ' as a form, more than the server takes (' + limit + ')',
    );
  }
  return problems;
}

// Each frame's name, size and pixels, and below them what the server would refuse the pair for.
function updateFrameFacts() {
  pickers.frames.forEach((picker, i) => {
    const out = $('frame' + (i + 1) + '-facts');
    if (!picker.file) {
      out.textContent = '';
      out.classList.remove('over');
      return;
    }
    const problems = frameProblems(picker).map(([, what]) => what);
    out.textContent = [...fileFacts(picker), ...problems].join(' · ');
    out.classList.toggle('over', problems.length > 0);
  });
  const out = $('flow-check');
  const [first, second] = pickers.frames;
  const problems = pairProblems();
  out.classList.toggle('over', problems.length > 0);
  if (problems.length) {
    out.textContent = capitalise(problems.join('; ')) + '.';
  } else if (first.size && second.size && state.info) {
    const bytes = formBytes([first.file, second.file]);
    out.textContent = 'Both frames ' + formatSize(first.size) + ', about ' + formatBytes(bytes) + ' to send.';
  } else {
    out.textContent = '';
  }
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// Where one dropped or pasted frame goes: the frame `dropped` on if any, else the first empty
// one, else the one whose chooser has `focused`, else the later frame. Filling the empty one
// first makes "paste, paste" give both frames in order, whatever the focus left by a chooser.
function frameFor(dropped, focused) {
  if (dropped >= 0) return dropped;
  const empty = pickers.frames.findIndex((p) => !p.file);
  if (empty >= 0) return empty;
  return focused >= 0 ? focused : 1;
}

// Files dropped or pasted as frames: two or more fill both, in the order of their names
// (frame_9 before frame_10); one goes where frameFor says.
function takeFrames(files, dropped, focused) {
  if (files.length >= 2) {
    const [earlier, later] = [...files].sort((a, b) =>
      a.name.localeCompare(b.name, undefined, { numeric: true }),
    );
    pickers.frames[0].take(earlier);
    pickers.frames[1].take(later);
  } else if (files.length === 1) {
    pickers.frames[frameFor(dropped, focused)].take(files[0]);
  }
}

// The frame picker whose box holds `node`, or -1.
function frameIndexOf(node) {
  const box = node instanceof Element ? node.closest('.frame') : null;
  return box ? pickers.frames.findIndex((p) => box.contains(p.input)) : -1;
}

// Drops on the card `cardId` (while `active()`) go to `take(files, event)`.
function acceptDrops(cardId, active, take) {
  const card = $(cardId);
  const boxes = () => card.querySelectorAll('.frame');
  const clear = () => {
    card.classList.remove('dragging');
    for (const box of boxes()) box.classList.remove('dragging');
  };
  card.addEventListener('dragover', (e) => {
    if (!active()) return;
    e.preventDefault();
    card.classList.add('dragging');
    const over = e.target instanceof Element ? e.target.closest('.frame') : null;
    for (const box of boxes()) box.classList.toggle('dragging', box === over);
  });
  card.addEventListener('dragleave', (e) => {
    // Leaving for one of the card's own elements is not leaving the card.
    if (!card.contains(e.relatedTarget)) clear();
  });
  card.addEventListener('drop', (e) => {
    clear();
    if (!active()) return;
    e.preventDefault();
    take([...e.dataTransfer.files], e);
  });
}

function watchFiles() {
  pickers.image = filePicker('image-file', 'image-preview', imageChosen, updateImageFacts);
  pickers.frames = ['frame1', 'frame2'].map((id) =>
    filePicker(id + '-file', id + '-preview', frameChosen, updateFrameFacts),
  );
  acceptDrops('classify-form', isImageTask, (files) => {
    if (files[0]) pickers.image.take(files[0]);
  });
  acceptDrops('flow-form', isFlowTask, (files, e) => takeFrames(files, frameIndexOf(e.target), -1));
  document.addEventListener('paste', (e) => {
    if (!e.clipboardData || !(isImageTask() || isFlowTask())) return;
    const files = [...e.clipboardData.files].filter((f) => f.type.startsWith('image/'));
    if (!files.length) return;
    e.preventDefault();
    if (isImageTask()) pickers.image.take(files[0]);
    else takeFrames(files, -1, frameIndexOf(document.activeElement));
  });
}

// ---------------------------------------------------------------- start

// `send` runs when the form is submitted or Ctrl+Enter is pressed in its text box, if any.
function sendFrom(form, textBox, send) {
  $(form).addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  if (!textBox) return;
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
  watchFiles();
  sendFrom('flow-form', null, computeFlow);
  $('max-flow').addEventListener('input', updateFrameFacts);
  $('flo').addEventListener('click', downloadFlo);
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
