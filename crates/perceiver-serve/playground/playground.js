// perceiver serve playground: reads /info, posts the text to /fill-mask, shows the answer.
// Plain browser JavaScript, no libraries, no build step.
'use strict';

// The byte-level tokenizer's special tokens, by id; byte b is id b + 6.
const SPECIAL_TOKENS = ['[PAD]', '[BOS]', '[EOS]', '[MASK]', '[CLS]', '[SEP]'];
const MASK_ID = 3;
const NUM_SPECIAL = SPECIAL_TOKENS.length;
const VOCAB_SIZE = 256 + NUM_SPECIAL;
const KEY_STORAGE = 'perceiver-serve-api-key';

const $ = (id) => document.getElementById(id);
const utf8 = new TextEncoder();

const state = {
  info: null,
  apiKey: readKey(),
  busy: false,
  requests: 0,
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

function showInfo(info) {
  state.info = info;
  $('model-id').textContent = info.model_id;
  $('model-task').textContent = info.task || 'fill-mask';
  $('model-precision').textContent = info.precision || '?';
  $('model-parameters').textContent = formatCount(info.parameters);
  $('model-version').textContent = info.version;
  document.title = info.model_id + ' · perceiver serve';
  const l = info.limits;
  const facts = [
    ['Longest text', l.max_input_length + ' tokens (bytes and masks)'],
    ['Texts per request', l.max_client_batch_size],
    ['Candidates per request', l.max_predictions + ' (masked bytes × candidates)'],
    ['Largest request body', formatBytes(l.payload_limit)],
    ['Requests at once', l.max_concurrent_requests],
    ['Batch', l.max_batch_requests + ' texts, ' + l.max_batch_tokens + ' tokens'],
    ['Batch wait', l.max_batch_wait_us + ' µs'],
  ];
  const dl = $('limits');
  dl.replaceChildren(
    ...facts.map(([name, value]) => {
      const div = document.createElement('div');
      const dt = document.createElement('dt');
      const dd = document.createElement('dd');
      dt.textContent = name;
      dd.textContent = String(value);
      div.append(dt, dd);
      return div;
    }),
  );
  const supported = !info.task || info.task === 'fill-mask';
  $('fill-form').hidden = !supported;
  $('unsupported').hidden = supported;
  if (!supported) {
    $('unsupported').textContent =
      'This page does not try ' + info.task + ' models yet; the API docs describe the routes.';
  }
  updateCount();
  document.body.dataset.info = 'loaded';
}

// ---------------------------------------------------------------- requests

async function call(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (state.apiKey) headers.Authorization = 'Bearer ' + state.apiKey;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
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
}

async function fill() {
  if (state.busy) return;
  const text = $('text').value;
  const parameters = { add_special_tokens: $('special').checked };
  const topK = $('top-k').value.trim();
  // An empty box leaves the server's default; anything else goes as typed, for the server to judge.
  if (topK !== '') parameters.top_k = Number(topK);
  state.busy = true;
  const button = $('fill');
  button.disabled = true;
  button.textContent = 'Filling…';
  document.body.dataset.status = 'busy';
  const started = performance.now();
  try {
    const r = await call('POST', '/fill-mask', { inputs: text, parameters });
    const elapsed = performance.now() - started;
    if (r.ok && r.json) {
      $('error').hidden = true;
      showAnswer(text, parameters, r.json, elapsed);
      document.body.dataset.status = 'done';
    } else {
      if (r.status === 401) askForKey(r);
      showError(r);
      document.body.dataset.status = 'error';
    }
  } catch (e) {
    showError({ status: 0, json: null, text: 'cannot reach the server: ' + e.message });
    document.body.dataset.status = 'error';
  } finally {
    state.busy = false;
    button.disabled = false;
    button.textContent = 'Fill masks';
    state.requests += 1;
    document.body.dataset.requests = String(state.requests);
  }
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
  const bar = document.createElement('span');
  bar.className = 'bar';
  bar.setAttribute('aria-hidden', 'true');
  const fillBar = document.createElement('span');
  fillBar.style.width = Math.max(0, Math.min(100, c.score * 100)) + '%';
  bar.append(fillBar);
  const pct = document.createElement('span');
  pct.className = 'pct';
  pct.textContent = formatPercent(c.score);
  li.append(glyph, bar, pct);
  return li;
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

function main() {
  $('fill-form').addEventListener('submit', (e) => {
    e.preventDefault();
    fill();
  });
  $('text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      fill();
    }
  });
  $('text').addEventListener('input', updateCount);
  $('special').addEventListener('change', updateCount);
  $('mask-selection').addEventListener('click', maskSelection);
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
