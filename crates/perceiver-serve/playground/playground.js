// perceiver serve playground: reads /info, then posts a masked text to /fill-mask, a text or an
// image to /classify, two frames to /flow, or a clip's frames and audio to /autoencode, and
// shows the answer.
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
  // The video a flow's frames are taken from ({file, at, frames, facts, error, ready}; see
  // takeFlowVideo), or null.
  flowVideo: null,
  // The clip chosen: `frames` ({file, size}, in name order; `video` when one .y4m file), the
  // `audio`, what the page read of them, and promises settled once read. See chooseClipFrames.
  // `source`: a video this browser decodes ({file, facts, error}; see chooseClipVideo), whose
  // frames are then `frames`, and its sound `audio` where `audioFromVideo`.
  clip: {
    frames: [],
    videos: 0,
    video: null,
    videoFacts: null,
    framesReady: Promise.resolve(),
    audio: null,
    audioFacts: null,
    audioReady: Promise.resolve(),
    source: null,
    audioFromVideo: false,
  },
  // Counts the clips chosen (frames or audio), as imageChoice does images.
  clipChoice: 0,
  // Aborts the clip request out: its Cancel, or new files (the server then drops its chunks).
  clipAbort: null,
  // The reconstructed audio shown, a WAV file (a Blob), behind the download link.
  clipWav: null,
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
  const autoencoder = task === AUTOENCODE_TASK;
  $('flow-form').hidden = !flow;
  $('clip-form').hidden = !autoencoder;
  $('unsupported').hidden = fillMask || classifier || flow || autoencoder;
  if (classifier) {
    $('classify-title').textContent = image ? 'Classify an image' : 'Classify a text';
    $('image-input').hidden = !image;
    $('text-input').hidden = image;
    // The server's defaults: 5 labels for an image, every label for a text.
    const topK = $('label-top-k');
    topK.max = String(Math.max(1, labels.length));
    topK.value = labels.length ? String(image ? Math.min(5, labels.length) : labels.length) : '';
  } else if (autoencoder) {
    const clip = info.clip || {};
    $('clip-shape').textContent =
      clip.frames + ' frames of ' + formatSize({ width: clip.width, height: clip.height }) + ' and ' +
      formatNumber(clip.audio_samples) + ' audio samples at ' + formatNumber(clip.sample_rate) + ' Hz';
    // The server's default, 5 labels.
    const topK = $('clip-top-k');
    topK.max = String(Math.max(1, labels.length));
    topK.value = labels.length ? String(Math.min(5, labels.length)) : '';
  } else if (!fillMask && !flow) {
    $('unsupported').textContent =
      'This page does not try ' + task + ' models; the API docs describe the routes.';
  }
  updateCount();
  updateClassCount();
  updateImageFacts();
  updateFrameFacts();
  updateClipFacts();
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
  $('clip-result').hidden = true;
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
  return formOf(frameParts(frames));
}

function frameParts(frames) {
  return [['frame1', frames[0]], ['frame2', frames[1]]];
}

// A multipart form of [field name, file] parts, in order.
function formOf(parts) {
  const form = new FormData();
  for (const [field, file] of parts) form.append(field, file);
  return form;
}

// Everything the page can tell the server would refuse: a frame missing or refused by
// frameProblems, the pair refused by pairProblems, a saturation that is not a positive number.
function flowProblems() {
  const problems = [];
  const video = state.flowVideo;
  if (video && video.error) {
    const advice = video.error === CANNOT_DECODE ? ' (two image files will do)' : '';
    problems.push('the video (' + video.file.name + ') ' + video.error + advice);
  }
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
  // A video's frames are sent once they are made: the latest video's (a time typed and left by
  // pressing the button takes the frames again).
  let video = state.flowVideo;
  while (video) {
    await video.ready;
    if (video === state.flowVideo) break;
    video = state.flowVideo;
  }
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

// True while a video's frames are put in the pickers (takeFlowVideo).
let framesFromVideo = false;

function frameChosen() {
  // A frame chosen by hand leaves the video the frames came from (its chooser emptied, so that
  // choosing it again takes its frames again).
  if (!framesFromVideo && state.flowVideo) {
    state.flowVideo = null;
    $('flow-video-file').value = '';
  }
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
// `parts`: [field name, file] each.
function formBytes(parts) {
  const boundaryLine = 2 + 38 + 2; // "--", "----WebKitFormBoundary" and 16 characters, CRLF
  let bytes = boundaryLine + 2; // the closing one ends in "--"
  for (const [field, file] of parts) {
    const head =
      'Content-Disposition: form-data; name="' + field + '"; filename="' + file.name + '"\r\n' +
      'Content-Type: ' + (file.type || 'application/octet-stream') + '\r\n\r\n';
    bytes += boundaryLine + utf8.encode(head).length + file.size + 2;
  }
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
  const bytes = formBytes(frameParts([first.file, second.file]));
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
  updateFlowVideoFacts();
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
    const bytes = formBytes(frameParts([first.file, second.file]));
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
  if (files.length === 1 && isBrowserVideo(files[0])) {
    setFiles($('flow-video-file'), files);
    takeFlowVideo(files[0]);
  } else if (files.length >= 2) {
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
  $('flow-video-file').addEventListener('change', (e) => takeFlowVideo(e.target.files[0]));
  $('flow-video-at').addEventListener('change', () => {
    const video = state.flowVideo;
    if (video) takeFlowVideo(video.file);
  });
  acceptDrops('clip-form', isClipTask, takeClipFiles);
  $('clip-frames-file').addEventListener('change', (e) => chooseClipFrames(e.target.files));
  $('clip-audio-file').addEventListener('change', (e) => chooseClipAudio(e.target.files[0]));
  document.addEventListener('paste', (e) => {
    if (!e.clipboardData || !(isImageTask() || isFlowTask())) return;
    const files = [...e.clipboardData.files].filter((f) => f.type.startsWith('image/'));
    if (!files.length) return;
    e.preventDefault();
    if (isImageTask()) pickers.image.take(files[0]);
    else takeFrames(files, -1, frameIndexOf(document.activeElement));
  });
}

// ---------------------------------------------------------------- a flow's frames from a video

// The flow's two frames taken from a video this browser decodes: the frame shown at the time
// the "at" field gives and the next one, at the video's own size, as PNG files in the frame
// pickers (as if chosen there). A frame chosen by hand afterwards leaves the video.
function takeFlowVideo(file) {
  if (!file) {
    state.flowVideo = null;
    updateFrameFacts();
    return;
  }
  const field = $('flow-video-at');
  const at = field.value.trim() === '' ? 0 : Number(field.value);
  const video = { file, at, frames: null, facts: null, error: null, ready: null };
  state.flowVideo = video;
  const stale = () => state.flowVideo !== video;
  const badTime = field.validity.badInput || !(at >= 0);
  const pair = badTime
    ? Promise.reject(new Error('is not taken: the time must be a number of seconds, 0 or more'))
    : framePair(file, at, stale);
  video.ready = pair.then(
    (pair) => {
      if (stale()) return;
      video.facts = pair.facts;
      video.frames = pair.frames;
      fromVideo(() => pickers.frames.forEach((picker, i) => picker.take(pair.frames[i])));
    },
    (e) => {
      if (!stale()) video.error = String((e && e.message) || e);
      updateFrameFacts();
    },
  );
  fromVideo(frameChosen);
}

// Runs `choose` as the video's own choice of frames (frameChosen then keeps the video).
function fromVideo(choose) {
  framesFromVideo = true;
  try {
    choose();
  } finally {
    framesFromVideo = false;
  }
}

// The video's line: what it is and which of its frames the pickers hold, or what is wrong.
function updateFlowVideoFacts() {
  const out = $('flow-video-facts');
  const video = state.flowVideo;
  if (!video) {
    out.textContent = '';
    out.classList.remove('over');
    return;
  }
  const parts = [video.file.name, formatBytes(video.file.size)];
  const v = video.facts;
  if (v) {
    parts.push(formatSize(v) + ', ' + formatSeconds(v.duration));
    const times = v.times.map((t) => +t.toFixed(3) + ' s').join(' and ');
    const same = {
      still: ' (the same picture: it does not change within 0.5 s)',
      end: ' (the same picture: the video ends before it changes)',
    }[v.same];
    parts.push('its frames at ' + times + (same || ''));
  } else if (video.error) parts.push(video.error);
  else parts.push('decoding in this browser…');
  out.textContent = parts.join(' · ');
  out.classList.toggle('over', !!video.error);
}

// The frame of a video shown at `at` seconds and the next one that differs from it (looked
// for in steps of 1/120 s, up to 0.5 s on; failing that, the frame 1/25 s on), at the video's
// size, as PNG files; facts: its size and length, and the two frames' times. Rejects as
// decodeVideo does, and when `at` is not a time in the video.
async function framePair(file, at, stale) {
  const stem = fileStem(file);
  return withVideo(file, async (video, { width, height, duration }) => {
    if (!(at >= 0 && at < duration)) {
      throw new Error('lasts ' + formatSeconds(duration) + ': it has no frame at ' + formatSeconds(at));
    }
    const canvas = document.createElement('canvas');
    [canvas.width, canvas.height] = [width, height];
    const g = canvas.getContext('2d');
    // Frames are told apart on a copy of at most a quarter megapixel: reading whole 4K frames
    // back at each step would take some 33 MB a step.
    const shrink = Math.min(1, Math.sqrt((1 << 18) / (width * height)));
    const small = document.createElement('canvas');
    [small.width, small.height] = [Math.max(1, Math.round(width * shrink)), Math.max(1, Math.round(height * shrink))];
    const s = small.getContext('2d', { willReadFrequently: true });
    const frameAt = async (time) => {
      if (stale()) throw new Error('was replaced');
      const seeked = nextEvent(video, 'seeked');
      video.currentTime = time;
      await seeked;
      g.drawImage(video, 0, 0);
      s.drawImage(canvas, 0, 0, small.width, small.height);
      return new Uint32Array(s.getImageData(0, 0, small.width, small.height).data.buffer);
    };
    const differ = (a, b) => {
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return true;
      return false;
    };
    const first = await frameAt(at);
    const png = (time) => canvasPng(canvas, stem + '-at-' + time.toFixed(3) + 's.png');
    const earlier = await png(at);
    // same: null where the next frame differs, else why not ('still' within 0.5 s, 'end').
    let [later, same] = [null, 'still'];
    for (let step = 1; step <= 60; step++) {
      if (at + step / 120 >= duration) {
        same = 'end';
        break;
      }
      if (differ(await frameAt(at + step / 120), first)) {
        [later, same] = [at + step / 120, null];
        break;
      }
    }
    if (later === null) {
      later = Math.min(at + 1 / FRAMES_PER_SECOND, duration);
      await frameAt(later);
    }
    const frames = [earlier, await png(later)];
    return { frames, facts: { width, height, duration, times: [at, later], same } };
  });
}

// ---------------------------------------------------------------- a clip: frames and audio

function isClipTask() {
  return !!state.info && state.info.task === AUTOENCODE_TASK;
}

// A .y4m video, which the server reads; any other video this browser decodes itself.
const isY4m = (file) => /\.y4m$/i.test(file.name);
const isBrowserVideo = (file) =>
  !isY4m(file) && (file.type.startsWith('video/') || /\.(mp4|m4v|mov|webm|mkv|ogv)$/i.test(file.name));
const isVideo = (file) => isY4m(file) || isBrowserVideo(file);
const isAudio = (file) => /\.wav$/i.test(file.name) || file.type.startsWith('audio/');

// The clip's frame rate (the server's, DeepMind's: audio_samples_per_frame × 25 is its rate).
const FRAMES_PER_SECOND = 25;
// The longest and largest video whose sound the page decodes: the browser reads the whole file
// and decodes all of its sound at once, which for longer ones could take the tab's memory.
const SOUND_MAX_SECONDS = 300;
const SOUND_MAX_BYTES = 256 << 20;
const SOUND_TOO_LONG = 'the page decodes no sound from a video over 5 minutes or 256 MiB';

// The order `perceiver autoencode` reads a folder's frames in: byte by byte, a run of digits
// against a run of digits as numbers (frame_9 before frame_10, leading zeros aside).
function naturalOrder(x, y) {
  const [a, b] = [utf8.encode(x), utf8.encode(y)];
  const digit = (c) => c >= 0x30 && c <= 0x39;
  const runEnd = (s, i) => {
    while (i < s.length && digit(s[i])) i += 1;
    return i;
  };
  const skipZeros = (s, i, end) => {
    while (i < end && s[i] === 0x30) i += 1;
    return i;
  };
  let [i, j] = [0, 0];
  while (i < a.length && j < b.length) {
    let order;
    if (digit(a[i]) && digit(b[j])) {
      const [endA, endB] = [runEnd(a, i), runEnd(b, j)];
      const [startA, startB] = [skipZeros(a, i, endA), skipZeros(b, j, endB)];
      order = endA - startA - (endB - startB) || compareBytes(a.subarray(startA, endA), b.subarray(startB, endB));
      [i, j] = [endA, endB];
    } else {
      order = a[i] - b[j];
      [i, j] = [i + 1, j + 1];
    }
    if (order) return order;
  }
  return a.length - i - (b.length - j) || compareBytes(a, b);
}

function compareBytes(a, b) {
  for (let k = 0; k < Math.min(a.length, b.length); k++) if (a[k] !== b[k]) return a[k] - b[k];
  return a.length - b.length;
}

// A .y4m video's header as the server reads it: {width, height, frames}, the frames counted
// from the file's size (an upper bound: a FRAME line with parameters is longer), null where its
// colour space is one the server does not read; false if it is not a .y4m header.
async function readY4m(file) {
  const head = new Uint8Array(await file.slice(0, 1024).arrayBuffer());
  const end = head.indexOf(0x0a);
  const line = new TextDecoder().decode(head.subarray(0, Math.max(end, 0)));
  if (end < 0 || !line.startsWith('YUV4MPEG2 ')) return false;
  const fields = {};
  for (const token of line.split(' ').slice(1)) {
    // A tag given twice: the last counts, as the server reads it.
    if (token) fields[token[0]] = token.slice(1);
  }
  const [width, height] = [Number(fields.W), Number(fields.H)];
  if (!(Number.isSafeInteger(width) && width > 0 && Number.isSafeInteger(height) && height > 0)) return false;
  const colour = fields.C || '420jpeg';
  const [halfW, halfH] = [Math.ceil(width / 2), Math.ceil(height / 2)];
  const chroma = ['420jpeg', '420paldv', '420mpeg2', '420'].includes(colour)
    ? 2 * halfW * halfH
    : { 422: 2 * halfW * height, 444: 2 * width * height, mono: 0 }[colour];
  const frames = chroma === undefined ? null : Math.floor((file.size - end - 1) / (6 + width * height + chroma));
  return { width, height, frames };
}

// A WAV file's format as its header says: {rate, channels, samples} (samples a channel, as far
// as the file goes), or false if this page cannot read it (the server judges it then).
async function readWav(file) {
  const buffer = await file.slice(0, 1 << 16).arrayBuffer();
  const view = new DataView(buffer);
  const tag = (at) => String.fromCharCode(...new Uint8Array(buffer, at, 4));
  if (buffer.byteLength < 12 || tag(0) !== 'RIFF' || tag(8) !== 'WAVE') return false;
  let format = null;
  for (let at = 12; at + 8 <= buffer.byteLength; ) {
    const size = view.getUint32(at + 4, true);
    if (tag(at) === 'fmt ' && at + 24 <= buffer.byteLength) {
      const channels = view.getUint16(at + 10, true);
      format = { channels, rate: view.getUint32(at + 12, true), blockAlign: view.getUint16(at + 20, true) };
    } else if (tag(at) === 'data') {
      if (!format || !format.blockAlign) return false;
      const bytes = Math.min(size, file.size - at - 8);
      return { rate: format.rate, channels: format.channels, samples: Math.floor(bytes / format.blockAlign) };
    }
    at += 8 + size + (size & 1);
  }
  return false;
}

// An image file's size in pixels as the browser shows it (EXIF orientation applied), or false.
async function imageSize(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return size;
  } catch (_) {
    return false;
  }
}

// The frames chosen: one video, or image files (sent in name order); their sizes (or the
// .y4m video's header) are read next. Another video is decoded here (chooseClipVideo).
function chooseClipFrames(files) {
  const clip = state.clip;
  if (files.length === 1 && isBrowserVideo(files[0])) {
    chooseClipVideo(files[0]);
    return;
  }
  forgetClipSource();
  const frames = [...files].sort((a, b) => naturalOrder(a.name, b.name)).map((file) => ({ file, size: null }));
  clip.frames = frames;
  clip.videos = frames.filter((f) => isVideo(f.file)).length;
  clip.video = clip.videos === 1 && frames.length === 1 && isY4m(frames[0].file) ? frames[0].file : null;
  clip.videoFacts = null;
  clip.framesReady = clip.video
    ? readY4m(clip.video).then(
        (facts) => {
          if (clip.frames === frames) clip.videoFacts = facts;
        },
        () => {
          if (clip.frames === frames) clip.videoFacts = false;
        },
      )
    : Promise.all(
        frames.map(async (frame) => {
          frame.size = isVideo(frame.file) ? false : await imageSize(frame.file);
        }),
      );
  clipChosen();
}

// The frames are no longer a decoded video's, nor the audio its sound.
function forgetClipSource() {
  const clip = state.clip;
  clip.source = null;
  if (clip.audioFromVideo) setClipAudio(null);
}

// A video this browser decodes (any but .y4m): its frames are made here as PNG files of the
// model's size, and its sound as a WAV file at the model's rate (decodeVideo), then sent as if
// chosen so. A WAV file chosen for the audio is kept over the video's sound.
function chooseClipVideo(file) {
  const clip = state.clip;
  const source = { file, facts: null, error: null };
  if (clip.audioFromVideo) setClipAudio(null);
  Object.assign(clip, { source, frames: [], videos: 0, video: null, videoFacts: null });
  clip.framesReady = decodeVideo(file, state.info.clip, () => clip.source !== source).then(
    async (made) => {
      if (clip.source !== source) return;
      source.facts = made.facts;
      const size = { width: state.info.clip.width, height: state.info.clip.height };
      clip.frames = made.frames.map((frame) => ({ file: frame, size }));
      if (made.audio && !clip.audio) {
        setClipAudio(made.audio);
        clip.audioFromVideo = true;
        await clip.audioReady;
      }
    },
    (e) => {
      if (clip.source === source) source.error = String((e && e.message) || e);
    },
  );
  clipChosen();
}

function chooseClipAudio(file) {
  setClipAudio(file);
  clipChosen();
}

// The audio is `file` (or none), chosen as a WAV file or made from a video's sound; its header
// is read next.
function setClipAudio(file) {
  const clip = state.clip;
  clip.audioFromVideo = false;
  clip.audio = file || null;
  clip.audioFacts = null;
  clip.audioReady = file
    ? readWav(file).then(
        (facts) => {
          if (clip.audio === file) clip.audioFacts = facts;
        },
        () => {
          if (clip.audio === file) clip.audioFacts = false;
        },
      )
    : Promise.resolve();
}

// How long the page waits for a video to load or to seek before it gives up on it.
const VIDEO_WAIT_MS = 20000;

// Resolves once the video fires `event`; rejects if it fires `error` first, or neither comes
// within VIDEO_WAIT_MS (a decoder that stalls would leave the clip's form waiting for good).
function nextEvent(video, event) {
  return new Promise((resolve, reject) => {
    const done = (e) => {
      video.removeEventListener(event, done);
      video.removeEventListener('error', done);
      clearTimeout(timer);
      if (!e) reject(new Error('did not ' + (event === 'seeked' ? 'seek' : 'load') + ' within 20 s in this browser'));
      else if (e.type === 'error') reject(new Error(CANNOT_DECODE));
      else resolve();
    };
    const timer = setTimeout(done, VIDEO_WAIT_MS);
    video.addEventListener(event, done);
    video.addEventListener('error', done);
  });
}

// How long a drawn frame waits to be presented after a seek (see framePresented).
const FRAME_WAIT_MS = 250;

// Resolves once the video presents its next frame, or after FRAME_WAIT_MS: right after a seek's
// `seeked`, drawing a paused video can still paint the frame shown before it in Chromium on a
// busy machine. The cap covers browsers without requestVideoFrameCallback and a seek that lands
// on the frame already shown (no new frame is presented then).
function framePresented(video) {
  if (!('requestVideoFrameCallback' in video)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, FRAME_WAIT_MS);
    video.requestVideoFrameCallback(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

const CANNOT_DECODE = 'cannot be decoded by this browser';

function formatSeconds(seconds) {
  return Number.isFinite(seconds) ? +seconds.toFixed(2) + ' s' : 'of unknown length';
}

// A video decoded by this browser as the model takes a clip (`c`, /info's): its first frames,
// 25 a second (each at the middle of its 1/25 s), cropped to the model's aspect about the centre
// and scaled to its frame size, as PNG files; its sound as decodeSound makes it (null without
// one, or for a video too long: facts.sound says which). Rejects with what is wrong with the
// video (said after its name): one the browser cannot decode, or one too short; and once
// `stale()` (other files chosen), so that a video no longer wanted is not decoded further.
async function decodeVideo(file, c, stale) {
  const seconds = c.frames / FRAMES_PER_SECOND;
  const stem = fileStem(file);
  return withVideo(file, async (video, { width, height, duration }) => {
    if (!(duration > seconds - 0.5 / FRAMES_PER_SECOND)) {
      throw new Error(
        'lasts ' + formatSeconds(duration) + ', the model takes ' + formatSeconds(seconds) + ' (' +
          plural(c.frames, 'frame') + ' at ' + FRAMES_PER_SECOND + ' a second)',
      );
    }
    const scale = Math.max(c.width / width, c.height / height);
    const [cropWidth, cropHeight] = [c.width / scale, c.height / scale];
    const canvas = document.createElement('canvas');
    [canvas.width, canvas.height] = [c.width, c.height];
    const g = canvas.getContext('2d');
    g.imageSmoothingQuality = 'high';
    const digits = String(c.frames).length;
    const frames = [];
    const unwanted = () => {
      if (stale()) throw new Error('was replaced');
    };
    for (let i = 0; i < c.frames; i++) {
      unwanted();
      const seeked = nextEvent(video, 'seeked');
      const shown = framePresented(video);
      video.currentTime = (i + 0.5) / FRAMES_PER_SECOND;
      await seeked;
      await shown;
      const [left, top] = [(width - cropWidth) / 2, (height - cropHeight) / 2];
      g.drawImage(video, left, top, cropWidth, cropHeight, 0, 0, c.width, c.height);
      frames.push(await canvasPng(canvas, stem + '-frame-' + String(i + 1).padStart(digits, '0') + '.png'));
    }
    // A video recorded in a browser may not know its length (Infinity): its size decides.
    const tooLong = (Number.isFinite(duration) && duration > SOUND_MAX_SECONDS) || file.size > SOUND_MAX_BYTES;
    unwanted();
    const audio = tooLong ? null : await decodeSound(file, c, stem + '.wav');
    const sound = tooLong ? 'too long' : audio ? 'decoded' : 'none';
    return { frames, audio, facts: { width, height, duration, sound } };
  });
}

// The canvas's picture as a PNG file named `name`.
async function canvasPng(canvas, name) {
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  if (!blob) throw new Error('has a frame this browser could not draw');
  return new File([blob], name, { type: 'image/png' });
}

// A file's name without its extension, for the files made from it.
function fileStem(file) {
  return file.name.replace(/\.[^.]*$/, '') || 'video';
}

// Opens `file` in a hidden, muted video element and runs `use(video, {width, height,
// duration})` once its size and length are known; the element and its URL are let go after.
// Rejects as nextEvent does, and for a file with no picture.
async function withVideo(file, use) {
  const url = URL.createObjectURL(file);
  const video = document.createElement('video');
  video.muted = true;
  video.preload = 'auto';
  try {
    const loaded = nextEvent(video, 'loadedmetadata');
    video.src = url;
    await loaded;
    const { videoWidth: width, videoHeight: height, duration } = video;
    if (!width || !height) throw new Error('shows no picture in this browser');
    return await use(video, { width, height, duration });
  } finally {
    video.removeAttribute('src');
    video.load();
    URL.revokeObjectURL(url);
  }
}

// The first channel of a file's sound at the model's rate, its first `audio_samples` (fewer
// where the sound is shorter), as a float WAV file named `name`; null where the browser decodes
// no sound from it (none, or a codec it lacks). Every browser decodes sound at 8 kHz and above
// (Chromium from 3 kHz): for a model's lower rate it is decoded at 48 kHz, and each sample is
// the mean of the ones it spans.
async function decodeSound(file, c, name) {
  const rate = c.sample_rate;
  const decodeRate = rate >= 8000 ? rate : 48000;
  let sound;
  try {
    sound = await new OfflineAudioContext(1, 1, decodeRate).decodeAudioData(await file.arrayBuffer());
  } catch (_) {
    return null;
  }
  if (!sound.length) return null;
  const channel = sound.getChannelData(0);
  const ratio = decodeRate / rate;
  const count = Math.min(c.audio_samples, Math.floor(channel.length / ratio));
  const samples = new Float32Array(count);
  for (let j = 0; j < count; j++) {
    const [from, to] = [Math.round(j * ratio), Math.max(Math.round((j + 1) * ratio), Math.round(j * ratio) + 1)];
    let sum = 0;
    for (let k = from; k < to; k++) sum += channel[k];
    samples[j] = sum / (to - from);
  }
  return new File([wavFile(samples, rate)], name, { type: 'audio/wav' });
}

// Mono 32-bit float samples as a WAV file's bytes (IEEE float, as the server's own WAV files
// hold their samples).
function wavFile(samples, rate) {
  const bytes = new ArrayBuffer(44 + 4 * samples.length);
  const view = new DataView(bytes);
  const tag = (at, text) => [...text].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  tag(0, 'RIFF');
  view.setUint32(4, 36 + 4 * samples.length, true);
  tag(8, 'WAVE');
  tag(12, 'fmt ');
  view.setUint32(16, 16, true);
  view.setUint16(20, 3, true); // IEEE float
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 4 * rate, true);
  view.setUint16(32, 4, true);
  view.setUint16(34, 32, true);
  tag(36, 'data');
  view.setUint32(40, 4 * samples.length, true);
  samples.forEach((v, i) => view.setFloat32(44 + 4 * i, v, true));
  return bytes;
}

// Waits until what the page reads of the files chosen now is known.
function clipReady() {
  const clip = state.clip;
  return Promise.all([clip.framesReady, clip.audioReady]);
}

function clipChosen() {
  // The answer shown is the last clip's; a request for an earlier one is abandoned.
  state.clipChoice += 1;
  if (state.clipAbort) {
    state.clipAbort.abort();
    state.clipAbort = null;
    $('clip-status').textContent = 'Cancelled: other files were chosen.';
  }
  $('clip-result').hidden = true;
  $('labels-result').hidden = true;
  $('error').hidden = true;
  const choice = state.clipChoice;
  $('clip-form').dataset.files = 'reading';
  updateClipFacts();
  clipReady().then(() => {
    if (choice !== state.clipChoice) return;
    $('clip-form').dataset.files = 'read';
    updateClipFacts();
  });
}

// Whether `size` is the model's frame size. The browser's size has the EXIF orientation
// applied, as the server's decoded frame has: it must be the model's exactly.
function clipFrameFits(size) {
  const c = state.info.clip;
  return size.width === c.width && size.height === c.height;
}

// What the server would refuse the frames for, as far as the page can tell.
function clipFrameProblems() {
  const clip = state.clip;
  const c = state.info.clip;
  const model = formatSize({ width: c.width, height: c.height });
  const problems = [];
  if (clip.videos && clip.frames.length > 1) {
    problems.push('give the frames one way: one video, or image files');
    return problems;
  }
  if (clip.source && clip.source.error) {
    const advice = clip.source.error === CANNOT_DECODE ? ' (a .y4m video or image files will do)' : '';
    problems.push('the video (' + clip.source.file.name + ') ' + clip.source.error + advice);
    return problems;
  }
  const v = clip.videoFacts;
  if (clip.video && v) {
    if (v.width !== c.width || v.height !== c.height) {
      problems.push('the video\'s frames are ' + formatSize(v) + ', the model takes ' + model);
    }
    if (v.frames !== null && v.frames < c.frames) {
      problems.push('the video has ' + plural(v.frames, 'frame') + ', the model takes ' + c.frames);
    }
  }
  if (!clip.video && clip.frames.length && clip.frames.length !== c.frames) {
    problems.push('the model takes ' + c.frames + ' frames, ' + clip.frames.length + ' image files are chosen');
  }
  clip.frames.forEach((frame, i) => {
    if (frame.size && !clipFrameFits(frame.size)) {
      problems.push(
        'frame ' + (i + 1) + ' (' + frame.file.name + ') is ' + formatSize(frame.size) + ', the model takes ' + model,
      );
    }
  });
  return problems;
}

function clipAudioProblems() {
  const a = state.clip.audioFacts;
  const c = state.info.clip;
  const problems = [];
  if (!state.clip.audio || !a) return problems;
  if (a.rate !== c.sample_rate) {
    problems.push(
      'the audio is at ' + formatNumber(a.rate) + ' Hz, the model takes ' + formatNumber(c.sample_rate) + ' Hz',
    );
  }
  if (a.samples < c.audio_samples) {
    problems.push(
      'the audio has ' + plural(a.samples, 'sample') + ', the model takes ' + formatNumber(c.audio_samples),
    );
  }
  return problems;
}

// A count and its noun: "1 frame", "2 frames"; `many` where not the noun and an s.
function plural(n, noun, many = noun + 's') {
  return formatNumber(n) + ' ' + (n === 1 ? noun : many);
}

// The form's parts, in the order sent: the video or the frames, then the audio.
function clipParts() {
  const clip = state.clip;
  const parts = clip.video ? [['video', clip.video]] : clip.frames.map((f) => ['frame', f.file]);
  if (clip.audio) parts.push(['audio', clip.audio]);
  return parts;
}

// Everything the page can tell the server would refuse; with `missing`, files not chosen too.
function clipProblems(missing) {
  const clip = state.clip;
  const c = state.info.clip;
  const problems = [];
  const absent = [];
  if (!clip.frames.length && !clip.source) absent.push('the frames (a video or ' + c.frames + ' image files)');
  const sound = clip.source && clip.source.facts ? clip.source.facts.sound : 'decoded';
  const why = { none: ': the video has no sound this browser decodes', 'too long': ': ' + SOUND_TOO_LONG }[sound] || '';
  if (!clip.audio) absent.push('the audio (a WAV file' + why + ')');
  if (missing && absent.length) problems.push('choose ' + absent.join(' and '));
  problems.push(...clipFrameProblems(), ...clipAudioProblems());
  const l = state.info.limits;
  const bytes = formBytes(clipParts());
  if (clip.frames.length && clip.audio && bytes > l.payload_limit) {
    const [sent, limit] = formatBytesApart(bytes, l.payload_limit);
    problems.push('the files come to about ' + sent + ' as a form, more than the server takes (' + limit + ')');
  }
  const topK = $('clip-top-k');
  const k = topK.value.trim();
  if (missing && (topK.validity.badInput || (k !== '' && !(Number.isSafeInteger(Number(k)) && Number(k) >= 1)))) {
    problems.push('the labels to show must be a whole number of at least 1, or empty');
  }
  return problems;
}

// What the page says of the chosen files, and what the server would refuse them for.
function updateClipFacts() {
  if (!isClipTask()) return;
  const clip = state.clip;
  const frameFacts = $('clip-frames-facts');
  const frameProblems = clipFrameProblems();
  let line = '';
  if (clip.source) {
    const v = clip.source.facts;
    const parts = [clip.source.file.name, formatBytes(clip.source.file.size)];
    const c = state.info.clip;
    if (v) {
      const sound = { none: ', no sound this browser decodes', 'too long': ', its sound not decoded' }[v.sound] || '';
      parts.push(formatSize(v) + ', ' + formatSeconds(v.duration) + sound);
      parts.push(
        plural(c.frames, 'frame') + ' made of its first ' + formatSeconds(c.frames / FRAMES_PER_SECOND) +
          ', cropped about the centre to ' + formatSize({ width: c.width, height: c.height }),
      );
    } else if (!clip.source.error) parts.push('decoding in this browser…');
    line = parts.join(' · ');
  } else if (clip.video) {
    const v = clip.videoFacts;
    const parts = [clip.video.name, formatBytes(clip.video.size)];
    if (v) parts.push(formatSize(v) + (v.frames === null ? '' : ', ' + plural(v.frames, 'frame')));
    else if (v === false) parts.push('not a .y4m video this page reads, the server may still');
    line = parts.join(' · ');
  } else if (clip.frames.length) {
    const bytes = clip.frames.reduce((sum, f) => sum + f.file.size, 0);
    line = plural(clip.frames.length, 'file') + ', ' + formatBytes(bytes);
  }
  frameFacts.textContent = line;
  frameFacts.classList.toggle('over', frameProblems.length > 0);
  $('clip-frames-list').replaceChildren(
    ...(clip.video ? [] : clip.frames).map((frame) => {
      const li = document.createElement('li');
      li.dataset.name = frame.file.name;
      const parts = [frame.file.name, formatBytes(frame.file.size)];
      if (frame.size) parts.push(formatSize(frame.size));
      else if (frame.size === false) parts.push('this browser cannot show it, the server may still read it');
      li.textContent = parts.join(' · ');
      li.classList.toggle('over', !!frame.size && !clipFrameFits(frame.size));
      return li;
    }),
  );
  const audioFacts = $('clip-audio-facts');
  const audioProblems = clipAudioProblems();
  if (clip.audio) {
    const a = clip.audioFacts;
    const parts = [clip.audio.name, formatBytes(clip.audio.size)];
    if (clip.audioFromVideo) parts.unshift('the video\'s sound');
    if (a) {
      const channels = a.channels === 1 ? 'mono' : a.channels + ' channels (the first is used)';
      parts.push(formatNumber(a.rate) + ' Hz, ' + plural(a.samples, 'sample') + ', ' + channels);
    } else if (a === false) parts.push('not a WAV file this page reads, the server may still');
    audioFacts.textContent = parts.join(' · ');
  } else audioFacts.textContent = '';
  audioFacts.classList.toggle('over', audioProblems.length > 0);

  const out = $('clip-check');
  const problems = clipProblems(false);
  out.classList.toggle('over', problems.length > 0);
  if (problems.length) {
    out.textContent = capitalise(problems.join('; ')) + '.';
  } else if (clip.frames.length && clip.audio) {
    const c = state.info.clip;
    out.textContent =
      'A clip of ' + plural(c.frames, 'frame') + ' and ' + plural(c.audio_samples, 'audio sample') + ', about ' +
      formatBytes(formBytes(clipParts())) + ' to send.';
  } else {
    out.textContent = '';
  }
}

// Files dropped on the clip's card: a WAV file is the audio, the others the frames.
function takeClipFiles(files) {
  const audio = files.filter(isAudio);
  const frames = files.filter((f) => !isAudio(f));
  if (audio.length) {
    setFiles($('clip-audio-file'), audio.slice(0, 1));
    chooseClipAudio(audio[0]);
  }
  if (frames.length) {
    setFiles($('clip-frames-file'), frames);
    chooseClipFrames(frames);
  }
}

// Files dropped become the file input's, as if chosen there.
function setFiles(input, files) {
  try {
    const transfer = new DataTransfer();
    for (const file of files) transfer.items.add(file);
    input.files = transfer.files;
  } catch (_) {
    // Older browsers cannot set a file input's files; the page still sends them.
  }
}

async function autoencode() {
  if (state.busy) return;
  // The checks need what the page reads of the files, known moments after they are chosen.
  const choice = state.clipChoice;
  await clipReady();
  if (choice !== state.clipChoice) return;
  // A second press while the files were read: the first press's request is out.
  if (state.busy) return;
  const problems = clipProblems(true);
  const status = $('clip-status');
  if (problems.length) {
    const out = $('clip-check');
    out.textContent = 'Not sent: ' + problems.join('; ') + '.';
    out.classList.add('over');
    status.textContent = '';
    if (!state.clip.frames.length) $('clip-frames-file').focus();
    else if (!state.clip.audio) $('clip-audio-file').focus();
    return;
  }
  const labelsOnly = $('clip-labels-only').checked;
  const query = new URLSearchParams();
  const topK = $('clip-top-k').value.trim();
  if (topK !== '') query.set('top_k', topK);
  if (labelsOnly) query.set('reconstruct', 'false');
  const path = '/autoencode' + (String(query) ? '?' + query : '');
  const form = formOf(clipParts());
  const abort = new AbortController();
  state.clipAbort = abort;
  const cancel = $('clip-cancel');
  cancel.hidden = false;
  status.textContent = labelsOnly
    ? 'Finding the labels: the clip is encoded, then the label\'s query decoded…'
    : 'Autoencoding: the clip is encoded, then every pixel and audio sample decoded in chunks…';
  await submit(
    $('autoencode'),
    'Autoencoding…',
    () => call('POST', path, form, { signal: abort.signal }),
    (answer, elapsed) => showClip(answer, elapsed),
    () => choice === state.clipChoice && !abort.signal.aborted,
  );
  cancel.hidden = true;
  if (state.clipAbort === abort) state.clipAbort = null;
  const outcome = document.body.dataset.status;
  if (outcome === 'error') status.textContent = 'Not done: the server\'s error is below.';
  // The Cancel button is gone: focus goes back to the form's button.
  if (abort.signal.aborted && document.activeElement === document.body) $('autoencode').focus();
}

function cancelClip() {
  if (!state.clipAbort) return;
  state.clipAbort.abort();
  state.clipAbort = null;
  $('clip-status').textContent = 'Cancelled: the server drops the chunks not yet run.';
}

// Browsers play audio from about 3,000 Hz (Chromium's least rate): a small model's is slower.
function audioUnplayable() {
  const audio = $('clip-audio');
  if (!audio.getAttribute('src')) return;
  const rate = Number(audio.dataset.rate);
  $('clip-audio-note').textContent =
    'This browser cannot play ' + formatNumber(rate) + ' Hz audio' + (rate < 3000 ? ' (browsers play from about 3,000 Hz)' : '') +
    ': the download link has it.';
}

function base64Bytes(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

// A clip's answer: its labels (the classifier's list), and its reconstructed frames and audio
// unless only the labels were asked.
function showClip(answer, elapsed) {
  showLabels(answer.labels, elapsed);
  const link = $('clip-wav');
  if (link.href) URL.revokeObjectURL(link.href);
  link.removeAttribute('href');
  const audio = $('clip-audio');
  const frames = answer.frames || [];
  $('clip-frames').replaceChildren(
    ...frames.map((png, i) => {
      const img = document.createElement('img');
      img.className = 'clip-frame';
      img.src = 'data:image/png;base64,' + png;
      img.alt = 'Reconstructed frame ' + (i + 1) + ' of ' + frames.length;
      return img;
    }),
  );
  const chunks = plural(answer.chunks, 'forward pass', 'forward passes') + ' of the decoder';
  const time = ', answered in ' + Math.round(elapsed) + ' ms';
  $('clip-audio-note').textContent = '';
  if (answer.audio && answer.frames) {
    audio.dataset.rate = String(answer.sample_rate);
    audio.src = 'data:audio/wav;base64,' + answer.audio;
    const wav = new Blob([base64Bytes(answer.audio)], { type: 'audio/wav' });
    state.clipWav = wav;
    link.href = URL.createObjectURL(wav);
    link.textContent = 'Download reconstruction.wav, ' + formatBytes(wav.size);
    $('clip-timing').textContent =
      plural(frames.length, 'frame') + ' and ' + formatNumber(answer.sample_rate) + ' Hz audio, ' + chunks + time;
    $('clip-result').hidden = false;
    $('clip-status').textContent = 'Done: the labels, ' + plural(frames.length, 'frame') + ' and the audio below.';
  } else {
    audio.removeAttribute('src');
    audio.load();
    $('clip-result').hidden = true;
    $('clip-status').textContent = 'Done: the labels below (labels only, ' + chunks + time + ').';
  }
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
  sendFrom('clip-form', null, autoencode);
  $('clip-cancel').addEventListener('click', cancelClip);
  $('clip-audio').addEventListener('error', audioUnplayable);
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
