// tollgate dashboards: one page, views by URL hash, data from /dashboard/api/.
// Money comes from the server as exact decimal strings (pico-USD and USD
// rounded to 6 decimals); the page shows those strings and adds pico amounts
// with BigInt, never with floating point.  Charts plot numbers for drawing
// only; each chart keeps the exact strings it was drawn from (dataset.exact)
// so its totals can be checked against the database.
'use strict';

const API = '/dashboard/api/';
let session = null;
const charts = {};
window.tgCharts = charts;

// ---- small helpers --------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function table(cols, rows, id) {
  return el('table', { id },
    el('thead', {}, el('tr', {}, cols.map(c => el('th', { class: c.num ? 'num' : null }, c.t)))),
    el('tbody', {}, rows.map(r => el('tr', {}, cols.map(c => {
      const v = c.f(r);
      return el('td', { class: c.num ? 'num' : null, 'data-col': c.k || null }, v === null || v === undefined ? '' : v);
    })))));
}

function card(label, value, sub, id) {
  return el('div', { class: 'card', id }, el('div', { class: 'label' }, label),
    el('div', { class: 'value' }, value), sub ? el('div', { class: 'sub' }, sub) : null);
}

// A USD amount for show, from the decimal string the server writes (tg_usd: "-1.500000"): the
// sign before the dollar sign, cents always, further decimals only when not zero ("-$1.50",
// "$0.000123", "$2.00"). Before 2026-12-01 the sign came after it ("$-1.500000").
function usdText(s) {
  let t = String(s);
  const neg = t.startsWith('-');
  if (neg) t = t.slice(1);
  let [i, f = ''] = t.split('.');
  f = f.replace(/0+$/, '').padEnd(2, '0');
  return (neg && /[1-9]/.test(i + f) ? '-' : '') + '$' + i + '.' + f;
}
const usd = s => (s === null || s === undefined) ? '—' : usdText(s);
const ts = s => s ? new Date(s).toISOString().replace('T', ' ').slice(0, 19) : '';
const sumPico = xs => xs.reduce((a, x) => a + BigInt(x || '0'), 0n);
// pico-USD (decimal string or BigInt) as USD rounded half away from zero to 6
// decimals, like the server's tg_usd.
function picoUsd(p) {
  let v = BigInt(p), neg = v < 0n;
  if (neg) v = -v;
  let micro = (v + 500000n) / 1000000n;
  const s = (micro / 1000000n).toString() + '.' + (micro % 1000000n).toString().padStart(6, '0');
  return (neg && micro > 0n ? '-' : '') + s;
}

// 100 * a / b (BigInt, b > 0) rounded half up to 2 decimals, as a string ("66.67"), as the
// ratio chart rounds each period (before 2026-11-30 the card cut the digits off: 2/3 was 66.66).
function percent2(a, b) {
  const q = (a * 20000n + b) / (2n * b);
  return (q / 100n).toString() + '.' + (q % 100n).toString().padStart(2, '0');
}

async function api(path, opts) {
  opts = opts || {};
  const headers = { 'Accept': 'application/json' };
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  if (opts.method && opts.method !== 'GET' && session) headers['X-CSRF-Token'] = session.csrf;
  const r = await fetch(API + path, {
    method: opts.method || 'GET', headers, credentials: 'same-origin',
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await r.text();
  let j = null;
  try { j = JSON.parse(text); } catch (e) { j = null; }
  if (r.status === 401 && path !== 'login') { session = null; showLogin(); }
  if (!r.ok) throw new Error((j && j.error && j.error.message) || ('HTTP ' + r.status));
  return j;
}

// The date pickers' "To" day is shown included (From 2026-11-30, To
// 2026-11-30 is that whole UTC day); the API's `to` is exclusive, so the page
// sends the midnight (UTC) after it.
function dayAfter(d) {
  const t = Date.parse(d + 'T00:00:00Z');
  return isFinite(t) ? new Date(t + 86400e3).toISOString().slice(0, 10) : d;
}
const withTo = o => Object.assign({}, o, { to: o.to ? dayAfter(o.to) : '' });

function qs(o) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o)) if (v !== '' && v !== null && v !== undefined) p.set(k, v);
  const s = p.toString();
  return s ? '?' + s : '';
}

function destroyCharts() {
  for (const k of Object.keys(charts)) { charts[k].destroy(); delete charts[k]; }
}

// A chart drawn once its canvas is in the page (setView draws the pending ones).
let pendingCharts = [];
function chart(id, type, labels, datasets, opts) {
  const canvas = el('canvas', { id });
  const box = el('div', { class: 'chart' }, canvas);
  pendingCharts.push(() => {
    charts[id] = new Chart(canvas, {
      type, data: { labels, datasets },
      options: Object.assign({
        responsive: true, maintainAspectRatio: false, animation: false,
        plugins: { title: { display: !!(opts && opts.title), text: opts && opts.title } },
        scales: { x: { stacked: !!(opts && opts.stacked) }, y: { stacked: !!(opts && opts.stacked), beginAtZero: true } },
      }, (opts && opts.extra) || {}),
    });
  });
  return box;
}

let pollTimer = null;
// Each view takes a ticket before it fetches (begin) and shows itself only
// if no later view began meanwhile, so a slow answer never replaces a newer view.
let renderSeq = 0;
const begin = () => ++renderSeq;
function setView(tok, ...nodes) {
  if (tok !== renderSeq) { pendingCharts = []; return; }
  destroyCharts();
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  const v = document.getElementById('view');
  v.replaceChildren(...nodes);
  const draw = pendingCharts;
  pendingCharts = [];
  for (const f of draw) f();
}

// A view redrawn from its own controls (a filter, a page button): when the
// server refuses (a 400 for a filter it cannot read), the view stays as it was
// with the error above it, and undo puts the filter back, so the next visit
// to the view is not refused again.
function redraw(p, undo) {
  p.catch(e => {
    if (undo) undo();
    if (session) viewError(e.message); // else signed out meanwhile: the sign-in form is shown
  });
}
function viewError(msg) {
  const old = document.getElementById('view-error');
  if (old) old.remove();
  document.getElementById('view').prepend(el('p', { class: 'error', id: 'view-error' }, msg));
}

// ---- sign in / out --------------------------------------------------------

function showLogin() {
  renderSeq++; // a view still loading never shows itself over the sign-in form
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; } // e.g. the workers' poll
  // the filters were the last user's (a key id of theirs would filter the next one's usage to nothing)
  Object.assign(usageState, USAGE_DEFAULTS);
  Object.assign(reqState, REQ_DEFAULTS);
  destroyCharts();
  document.getElementById('view').replaceChildren();
  document.getElementById('nav').replaceChildren();
  document.getElementById('who').textContent = '';
  document.getElementById('logout').hidden = true;
  document.getElementById('login').hidden = false;
}

async function signIn(body) {
  const err = document.getElementById('login-error');
  err.textContent = '';
  try {
    session = await api('login', { method: 'POST', body });
    document.getElementById('login').hidden = true;
    document.getElementById('api-key').value = '';
    document.getElementById('login-password').value = '';
    // a link to one of this role's views (a bookmarked invoice) is kept through the sign-in;
    // anything else goes to the role's first view
    const views = session.role === 'operator' ? OPERATOR_VIEWS : CUSTOMER_VIEWS;
    const asked = location.hash.replace(/^#\//, '').split('/')[0];
    if (!views.some(([k]) => k === asked)) location.hash = '#/' + views[0][0]; // hashchange routes too
    start();
  } catch (e) {
    err.textContent = e.message;
  }
}

function setupLogin() {
  const tk = document.getElementById('tab-key'), tu = document.getElementById('tab-user');
  const fk = document.getElementById('login-key'), fu = document.getElementById('login-user');
  tk.addEventListener('click', () => { fk.hidden = false; fu.hidden = true; tk.classList.add('active'); tu.classList.remove('active'); });
  tu.addEventListener('click', () => { fk.hidden = true; fu.hidden = false; tu.classList.add('active'); tk.classList.remove('active'); });
  fk.addEventListener('submit', ev => { ev.preventDefault(); signIn({ api_key: document.getElementById('api-key').value.trim() }); });
  fu.addEventListener('submit', ev => {
    ev.preventDefault();
    signIn({ login: document.getElementById('login-name').value.trim(), password: document.getElementById('login-password').value.trim() });
  });
  document.getElementById('logout').addEventListener('click', async () => {
    try { await api('logout', { method: 'POST', body: {} }); } catch (e) { /* signed out anyway */ }
    session = null;
    location.hash = '';
    showLogin();
  });
}

const CUSTOMER_VIEWS = [['overview', 'Overview'], ['usage', 'Usage'], ['keys', 'Keys'], ['invoices', 'Invoices'], ['requests', 'Requests']];
const OPERATOR_VIEWS = [['operator', 'Revenue'], ['workers', 'Workers']];

function start() {
  const views = session.role === 'operator' ? OPERATOR_VIEWS : CUSTOMER_VIEWS;
  document.getElementById('nav').replaceChildren(...views.map(([k, t]) => el('a', { href: '#/' + k, id: 'nav-' + k }, t)));
  document.getElementById('who').textContent = session.role === 'operator'
    ? 'operator ' + session.login : session.customer + ' (' + session.login + ')';
  document.getElementById('logout').hidden = false;
  route();
}

let routeGen = 0;
async function route() {
  if (!session) return;
  const gen = ++routeGen;
  const views = session.role === 'operator' ? OPERATOR_VIEWS : CUSTOMER_VIEWS;
  let [name, arg] = location.hash.replace(/^#\//, '').split('/');
  if (!views.some(([k]) => k === name)) name = views[0][0];
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.id === 'nav-' + name);
  const fn = { overview, usage, keys, invoices, requests, operator, workers }[name];
  try {
    await fn(arg);
    if (gen === routeGen) document.body.dataset.view = name;
  } catch (e) {
    if (gen === routeGen) setView(begin(), el('p', { class: 'error' }, e.message));
  }
}

// ---- customer views -------------------------------------------------------

async function overview() {
  const tok = begin();
  const o = await api('overview');
  setView(tok,
    el('h1', {}, 'Overview'),
    el('div', { class: 'cards' },
      card('Balance', usd(o.balance_usd), o.balance_pico + ' pico-USD', 'balance'),
      card('Spend in ' + o.month, usd(o.month_cost_usd), o.month_requests + ' requests', 'month-spend'),
      card('Spend today (UTC)', usd(o.today_cost_usd), null, 'today-spend'),
      card('Monthly limit', o.monthly_limit_usd ? usd(o.monthly_limit_usd) : 'none',
        o.monthly_limit_usd ? 'headroom ' + usd(o.monthly_headroom_usd) : null, 'monthly-limit'),
      card('Daily limit', o.daily_limit_usd ? usd(o.daily_limit_usd) : 'none',
        o.daily_limit_usd ? 'headroom ' + usd(o.daily_headroom_usd) : null, 'daily-limit')),
    el('h2', {}, 'Credit history'),
    o.credits.length ? table([
      { t: 'When (UTC)', f: r => ts(r.created_at) },
      { t: 'Kind', f: r => r.kind },
      { t: 'Amount (USD)', num: 1, f: r => r.amount_usd, k: 'amount' },
      { t: 'Note', f: r => r.note },
    ], o.credits, 'credits') : el('p', { class: 'muted' }, 'No credits yet.'));
}

const USAGE_DEFAULTS = { by: 'day', key: '', model: '', from: '', to: '' };
const usageState = Object.assign({}, USAGE_DEFAULTS);

// Every period from `from` to `to` (so the charts show gaps as zero).
function periods(from, to, by, data) {
  const step = by === 'hour' ? 3600e3 : 86400e3;
  let t0 = Date.parse(from), t1 = Date.parse(to);
  if (!isFinite(t1)) t1 = Date.now();
  if (!isFinite(t0)) t0 = data.length ? Date.parse(data[0].period) : t1 - 29 * step;
  t0 = Math.floor(t0 / step) * step;
  const out = [];
  for (let t = t0; t < t1 && out.length < 2000; t += step) out.push(t);
  for (const d of data) { const t = Date.parse(d.period); if (!out.includes(t)) out.push(t); }
  return out.sort((a, b) => a - b);
}

async function usage() {
  const tok = begin();
  const u = await api('usage' + qs(withTo(usageState)));
  const ps = periods(u.from, u.to, u.by, u.data);
  const byT = new Map(u.data.map(d => [Date.parse(d.period), d]));
  const rows = ps.map(t => byT.get(t) || null);
  const labels = ps.map(t => u.by === 'hour' ? new Date(t).toISOString().slice(5, 13).replace('T', ' ') + 'h'
    : new Date(t).toISOString().slice(0, 10));
  const col = k => rows.map(r => r ? Number(r[k]) : 0);
  const exact = k => rows.map(r => r ? String(r[k]) : '0');
  const ds = (label, k, color, extra) => Object.assign({ label, data: col(k), exact: exact(k), backgroundColor: color, borderColor: color }, extra || {});
  const ratio = rows.map(r => {
    if (!r) return null;
    const hit = Number(r.prompt_cache_hit_tokens), miss = Number(r.prompt_cache_miss_tokens);
    return hit + miss ? Math.round(1e4 * hit / (hit + miss)) / 100 : null;
  });
  // counters are strings of digits (beyond 2^53 a JSON number loses them): added with BigInt
  const big = (r, ...ks) => ks.reduce((a, k) => a + BigInt(r[k]), 0n);
  const errorsExact = rows.map(r => r ? big(r, 'failed_5xx', 'refused_5xx').toString() : '0');
  const okExact = rows.map(r => r ? (BigInt(r.requests) - BigInt(r.failed_5xx)).toString() : '0');
  const t = u.totals;
  const hitTot = BigInt(t.prompt_cache_hit_tokens), missTot = BigInt(t.prompt_cache_miss_tokens);
  const sel = (id, opts, value, onchange) => el('select', { id, onchange }, opts.map(([v, l]) => el('option', { value: v, selected: v === value }, l)));
  // the model filtered on stays offered when the period has none of its usage (else the
  // selector would read "all models" over numbers of that model only)
  const models = usageState.model && !u.models.includes(usageState.model) ? [usageState.model, ...u.models] : u.models;
  const change = k => ev => { const old = usageState[k]; usageState[k] = ev.target.value; redraw(usage(), () => { usageState[k] = old; }); };
  setView(tok,
    el('h1', {}, 'Usage and cost'),
    el('div', { class: 'controls' },
      el('label', {}, 'By', sel('usage-by', [['day', 'day'], ['hour', 'hour']], usageState.by, change('by'))),
      el('label', {}, 'Key', sel('usage-key', [['', 'all keys'], ...u.keys.map(k => [String(k.id), k.prefix + (k.name ? ' ' + k.name : '')])], usageState.key, change('key'))),
      el('label', {}, 'Model', sel('usage-model', [['', 'all models'], ...models.map(m => [m, m])], usageState.model, change('model'))),
      el('label', {}, 'From', el('input', { id: 'usage-from', type: 'date', value: usageState.from, onchange: change('from') })),
      el('label', { title: 'this day included (UTC)' }, 'To', el('input', { id: 'usage-to', type: 'date', value: usageState.to, onchange: change('to') }))),
    el('div', { class: 'cards' },
      card('Cost', usd(t.cost_usd), t.cost_pico + ' pico-USD', 'usage-cost'),
      card('Requests', String(t.requests), null, 'usage-requests'),
      card('Cache-hit ratio', hitTot + missTot > 0n ? percent2(hitTot, hitTot + missTot) + ' %' : '—', 'of prompt tokens', 'usage-ratio'),
      card('Refused', big(t, 'refused_402', 'refused_429').toString(), '402: ' + t.refused_402 + ', 429: ' + t.refused_429, 'usage-refused'),
      card('Errors', big(t, 'failed_5xx', 'refused_5xx').toString(), null, 'usage-errors')),
    el('div', { class: 'charts' },
      chart('chart-tokens', 'bar', labels, [
        ds('cache hit', 'prompt_cache_hit_tokens', '#7aa2f7'),
        ds('cache miss', 'prompt_cache_miss_tokens', '#2f5bd3'),
        ds('output', 'completion_tokens', '#f59e0b'),
      ], { stacked: true, title: 'Tokens by class' }),
      chart('chart-cost', 'bar', labels, [
        { label: 'cost (USD)', data: rows.map(r => r ? Number(BigInt(r.cost_pico)) / 1e12 : 0), exact: exact('cost_pico'), backgroundColor: '#16a34a' },
      ], { title: 'Cost (USD)', extra: { scales: { y: { beginAtZero: true, ticks: { callback: v => usdText(Number(v).toFixed(6)) } } } } }),
      chart('chart-ratio', 'line', labels, [
        { label: 'cache-hit ratio %', data: ratio, borderColor: '#7c3aed', backgroundColor: '#7c3aed', spanGaps: true },
      ], { title: 'Cache-hit ratio (%)', extra: { scales: { y: { min: 0, max: 100 } } } }),
      chart('chart-requests', 'bar', labels, [
        { label: 'answered', data: okExact.map(Number), exact: okExact, backgroundColor: '#2f5bd3' },
        ds('402 refused', 'refused_402', '#f59e0b'),
        ds('429 refused', 'refused_429', '#ea580c'),
        { label: 'errors (5xx)', data: errorsExact.map(Number), exact: errorsExact, backgroundColor: '#c0362c' },
      ], { stacked: true, title: 'Requests, refusals and errors' })),
    el('h2', {}, 'Totals'),
    table([
      { t: 'Cache-hit tokens', num: 1, f: x => x.prompt_cache_hit_tokens, k: 'hit' },
      { t: 'Cache-miss tokens', num: 1, f: x => x.prompt_cache_miss_tokens, k: 'miss' },
      { t: 'Output tokens', num: 1, f: x => x.completion_tokens, k: 'output' },
      { t: 'Reasoning tokens', num: 1, f: x => x.reasoning_tokens, k: 'reasoning' },
      { t: 'Requests', num: 1, f: x => x.requests, k: 'requests' },
      { t: 'Cost (pico-USD)', num: 1, f: x => x.cost_pico, k: 'cost_pico' },
      { t: 'Cost (USD)', num: 1, f: x => x.cost_usd, k: 'cost_usd' },
    ], [t], 'usage-totals'));
  const tt = document.getElementById('usage-totals');
  if (tt) tt.dataset.filter = [u.by, u.key_id === null ? '' : u.key_id, u.model === null ? '' : u.model].join('|');
  if (tt) tt.dataset.range = u.from + '|' + u.to; // the period the server summed, [from, to)
}

// USD as the API reads it (bill_usd_parse): digits, at most 12 decimals, no sign or exponent
const USD_RE = /^[0-9]+(\.[0-9]{1,12})?$/;

async function keys() {
  const tok = begin();
  const k = await api('keys');
  const created = el('div', { id: 'key-created' });
  const form = el('form', { class: 'controls', id: 'key-form' },
    el('label', {}, 'Name', el('input', { id: 'key-name', maxlength: 200 })),
    el('label', {}, 'Daily limit (USD)', el('input', { id: 'key-daily', placeholder: 'none', inputmode: 'decimal' })),
    el('label', {}, 'Monthly limit (USD)', el('input', { id: 'key-monthly', placeholder: 'none', inputmode: 'decimal' })),
    el('button', { type: 'submit', id: 'key-create' }, 'Create key'));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    const body = {
      name: document.getElementById('key-name').value,
      daily_limit_usd: document.getElementById('key-daily').value.trim() || null,
      monthly_limit_usd: document.getElementById('key-monthly').value.trim() || null };
    // what the server would refuse is said at once, without a refused request (bill_dash_views.c)
    const bad = new TextEncoder().encode(body.name).length > 200 ? 'The name is longer than 200 bytes.'
      : [['daily_limit_usd', 'Daily'], ['monthly_limit_usd', 'Monthly']].filter(([k]) => body[k] !== null && !USD_RE.test(body[k]))
        .map(([, t]) => t + ' limit must be an amount of USD like 5 or 0.50 (at most 12 decimals), or empty for none.')[0];
    if (bad) return created.replaceChildren(el('p', { class: 'error' }, bad));
    try {
      const r = await api('keys', { method: 'POST', body });
      await keys();
      document.getElementById('key-created').replaceChildren(el('div', { class: 'notice' },
        'New key ' + r.prefix + ' (shown only now): ', el('code', { id: 'new-key' }, r.key)));
    } catch (e) {
      created.replaceChildren(el('p', { class: 'error' }, e.message));
    }
  });
  const revoke = key => async () => {
    // the key this session signed in with (a key session's login is its prefix): its revocation ends the session
    const own = session && session.signed_in_with !== 'login' && session.login === key.prefix;
    if (!confirm('Revoke ' + key.prefix + '? Requests with it are refused from now on.' +
      (own ? ' You signed in with this key: revoking it signs you out.' : ''))) return;
    try {
      await api('keys/' + key.id + '/revoke', { method: 'POST', body: {} });
      if (own) { // the session ended with the key: the sign-in form says why (no call refused with 401)
        session = null;
        location.hash = '';
        showLogin();
        document.getElementById('login-error').textContent = 'Signed out: the key you signed in with (' + key.prefix + ') is revoked.';
        return;
      }
      await keys();
    } catch (e) { created.replaceChildren(el('p', { class: 'error' }, e.message)); }
  };
  const limit = (l, h) => l === null ? 'none' : usd(l) + ' (left ' + usd(h) + ')';
  // a session of a key with limits makes no key and revokes none but its own (bill_dash_views.c):
  // said here instead of a form the server would refuse
  const restricted = !!(session && session.key_restricted);
  const own = r => session && session.signed_in_with !== 'login' && session.login === r.prefix;
  setView(tok,
    el('h1', {}, 'API keys'),
    restricted ? el('p', { class: 'notice', id: 'key-restricted' },
      'The key you signed in with has limits (rate, models, spending or expiry), so it cannot make keys or revoke others. ' +
      'Sign in with a dashboard login or a key without limits to manage keys.') : form,
    created,
    table([
      { t: 'Prefix', f: r => el('code', {}, r.prefix), k: 'prefix' },
      { t: 'Name', f: r => r.name },
      { t: 'State', f: r => el('span', { class: 'state-' + r.state }, r.state), k: 'state' },
      { t: 'RPM / TPM / conc.', f: r => [r.rpm || '∞', r.tpm || '∞', r.concurrency || '∞'].join(' / ') },
      { t: 'Daily limit', f: r => limit(r.daily_limit_usd, r.daily_headroom_usd) },
      { t: 'Monthly limit', f: r => limit(r.monthly_limit_usd, r.monthly_headroom_usd) },
      { t: 'Spent this month', num: 1, f: r => usd(r.month_cost_usd) },
      { t: 'Last used (UTC)', f: r => ts(r.last_used_at) },
      { t: '', f: r => r.state === 'revoked' || (restricted && !own(r)) ? '' : el('button', { class: 'danger', 'data-key': r.prefix, onclick: revoke(r) }, 'Revoke') },
    ], k.data, 'keys-table'));
}

async function invoices(month) {
  const tok = begin();
  const list = await api('invoices');
  const nodes = [el('h1', {}, 'Invoices'),
    table([
      { t: 'Month', f: r => el('a', { href: '#/invoices/' + r.month }, r.month), k: 'month' },
      { t: 'Requests', num: 1, f: r => r.requests },
      { t: 'Total (USD)', num: 1, f: r => r.total_usd, k: 'total' },
      { t: 'Invoice', f: r => r.open ? 'open month (draft)' : r.status },
    ], list.data, 'invoices-table')];
  if (month) {
    const inv = await api('invoices/' + encodeURIComponent(month));
    nodes.push(el('h2', {}, 'Invoice ' + inv.month + ' — ' + inv.customer),
      el('div', { class: 'controls' },
        el('a', { href: API + 'invoices/' + inv.month + '/csv', id: 'invoice-csv', download: 'invoice-' + inv.month + '.csv' }, 'Download CSV'),
        el('a', { href: API + 'invoices/' + inv.month, id: 'invoice-json', download: 'invoice-' + inv.month + '.json' }, 'Download JSON')),
      table([
        { t: '#', num: 1, f: r => r.line },
        { t: 'Period', f: r => r.period + (r.late ? ' (late)' : '') },
        { t: 'Model', f: r => r.model },
        { t: 'Token class', f: r => r.token_class },
        { t: 'Unit price (µUSD / 1M)', num: 1, f: r => r.unit_price_micro_usd_per_1m },
        { t: 'Tokens', num: 1, f: r => r.quantity },
        { t: 'Amount (USD)', num: 1, f: r => r.amount_usd },
      ], inv.lines, 'invoice-lines'),
      el('div', { class: 'cards' },
        card('Total', usd(inv.total_usd), inv.total_pico + ' pico-USD', 'invoice-total'),
        card('Status', inv.status, inv.requests + ' requests', 'invoice-status'),
        // every ledger movement of the month, so opening + credits + adjustments + refunds - total = closing
        card('Opening balance', usd(inv.opening_balance_usd), inv.opening_balance_pico + ' pico-USD', 'invoice-opening'),
        card('Credits in the month', usd(picoUsd(inv.credits_pico)), inv.credits_pico + ' pico-USD', 'invoice-credits'),
        card('Adjustments', usd(picoUsd(inv.adjustments_pico)), inv.adjustments_pico + ' pico-USD', 'invoice-adjustments'),
        card('Refunds', usd(picoUsd(inv.refunds_pico)), inv.refunds_pico + ' pico-USD', 'invoice-refunds'),
        card('Closing balance', usd(inv.closing_balance_usd), inv.closing_balance_pico + ' pico-USD', 'invoice-closing')));
  }
  setView(tok, ...nodes);
}

const REQ_DEFAULTS = { from: '', to: '', key: '', model: '', status: '' };
const reqState = Object.assign({}, REQ_DEFAULTS);
// The request log's typed filters as the server reads them (bill_dash_views.c).
const REQ_CHECK = {
  key: [/^[0-9]{0,18}$/, 'Key id must be a key\'s number (digits), or empty for all keys'],
  status: [/^([0-9]{3})?$/, 'Status must be an HTTP status (3 digits), or empty for all'],
};
async function requests(arg, before, pages) {
  const tok = begin();
  pages = pages || [];
  const r = await api('requests' + qs(Object.assign(withTo(reqState), { before: before || '', limit: 25 })));
  const f = (k, attrs) => el('input', Object.assign({ id: 'req-' + k, value: reqState[k], onchange: ev => {
    const bad = REQ_CHECK[k] && !REQ_CHECK[k][0].test(ev.target.value.trim());
    if (bad) return viewError(REQ_CHECK[k][1]); // said at once, not a refused request
    const old = reqState[k];
    reqState[k] = ev.target.value.trim();
    redraw(requests(), () => { reqState[k] = old; });
  } }, attrs));
  setView(tok,
    el('h1', {}, 'Request log'),
    el('div', { class: 'controls' },
      el('label', {}, 'From', f('from', { type: 'date' })), el('label', { title: 'this day included (UTC)' }, 'To', f('to', { type: 'date' })),
      el('label', {}, 'Key id', f('key', { size: 6 })), el('label', {}, 'Model', f('model', { size: 16 })),
      el('label', {}, 'Status', f('status', { size: 4, placeholder: '200' }))),
    table([
      { t: 'When (UTC)', f: x => ts(x.received_at) },
      { t: 'Request id', f: x => el('code', {}, x.request_id), k: 'id' },
      { t: 'Key', f: x => x.key_prefix },
      { t: 'Model', f: x => x.model },
      { t: 'Status', num: 1, f: x => x.http_status },
      { t: 'Hit', num: 1, f: x => x.prompt_cache_hit_tokens },
      { t: 'Miss', num: 1, f: x => x.prompt_cache_miss_tokens },
      { t: 'Output', num: 1, f: x => x.completion_tokens },
      { t: 'Cost (USD)', num: 1, f: x => x.cost_usd, k: 'cost' },
      { t: 'ms', num: 1, f: x => x.duration_ms },
    ], r.data, 'requests-table'),
    el('div', { class: 'controls' },
      pages.length ? el('button', { class: 'secondary', id: 'req-prev', onclick: () => redraw(requests(null, pages[pages.length - 1] || '', pages.slice(0, -1))) }, 'Previous') : null,
      r.has_more ? el('button', { class: 'secondary', id: 'req-next', onclick: () => redraw(requests(null, r.next, pages.concat([before || '']))) }, 'Next page') : null));
}

// ---- operator views -------------------------------------------------------

const REVENUE_DAYS = 365; // the revenue chart's days before today, at most (the all-time card counts all)

async function operator() {
  const tok = begin();
  const o = await api('admin/overview');
  // every day from the first with usage (a year back at most) to today, a day without any at 0, as
  // the usage charts do (before 2026-12-01 such days were left out: the bars closed up over the gap)
  const DAY = 86400e3, today = Math.floor(Date.now() / DAY) * DAY;
  const first = o.by_day.length ? Date.parse(o.by_day[0].period) : today;
  const days = [];
  for (let t = Math.max(first, today - REVENUE_DAYS * DAY); t <= today; t += DAY) days.push(t);
  const byDay = new Map(o.by_day.map(d => [Date.parse(d.period), d]));
  const dayCost = days.map(t => byDay.has(t) ? byDay.get(t).cost_pico : '0');
  const labels = days.map(t => new Date(t).toISOString().slice(0, 10));
  setView(tok,
    el('h1', {}, 'Revenue'),
    el('div', { class: 'cards' },
      card('Revenue (all time)', usd(o.top.total_cost_usd), o.top.total_cost_pico + ' pico-USD', 'op-revenue'),
      // paying: a cost above zero in the period (top.customers also counts those only refused)
      card('Paying customers', o.paying_customers, o.top.customers + ' with any traffic', 'op-customers')),
    el('div', { class: 'charts' },
      chart('chart-revenue', 'bar', labels, [
        { label: 'revenue (USD)', data: dayCost.map(p => Number(BigInt(p)) / 1e12), exact: dayCost, backgroundColor: '#16a34a' }],
        { title: 'Revenue per day (USD), the last ' + (REVENUE_DAYS + 1) + ' days at most', extra: { scales: { y: { beginAtZero: true, ticks: { callback: v => usdText(Number(v).toFixed(6)) } } } } }),
      chart('chart-model-tokens', 'bar', o.by_model.map(m => m.model), [
        { label: 'cache hit', data: o.by_model.map(m => Number(m.prompt_cache_hit_tokens)), backgroundColor: '#7aa2f7' },
        { label: 'cache miss', data: o.by_model.map(m => Number(m.prompt_cache_miss_tokens)), backgroundColor: '#2f5bd3' },
        { label: 'output', data: o.by_model.map(m => Number(m.completion_tokens)), backgroundColor: '#f59e0b' }],
        { stacked: true, title: 'Tokens by model' })),
    el('h2', {}, 'By model'),
    table([
      { t: 'Model', f: r => r.model, k: 'model' },
      { t: 'Requests', num: 1, f: r => r.requests },
      { t: 'Hit', num: 1, f: r => r.prompt_cache_hit_tokens }, { t: 'Miss', num: 1, f: r => r.prompt_cache_miss_tokens },
      { t: 'Output', num: 1, f: r => r.completion_tokens },
      { t: 'Revenue (USD)', num: 1, f: r => r.cost_usd, k: 'cost_usd' },
      { t: 'pico-USD', num: 1, f: r => r.cost_pico, k: 'cost_pico' },
    ], o.by_model, 'op-by-model'),
    el('h2', {}, 'Top spenders'),
    table([
      { t: '#', num: 1, f: r => r.rank }, { t: 'Customer', f: r => r.customer, k: 'customer' },
      { t: 'Requests', num: 1, f: r => r.requests },
      { t: 'Tokens in', num: 1, f: r => (BigInt(r.prompt_cache_hit_tokens) + BigInt(r.prompt_cache_miss_tokens)).toString() },
      { t: 'Tokens out', num: 1, f: r => r.completion_tokens },
      { t: 'Revenue (USD)', num: 1, f: r => r.cost_usd, k: 'cost_usd' },
      { t: 'pico-USD', num: 1, f: r => r.cost_pico, k: 'cost_pico' },
    ], o.top.data, 'op-top'),
    el('h2', {}, 'Nearest to zero balance'),
    table([
      { t: 'Customer', f: r => r.customer, k: 'customer' },
      { t: 'Balance (USD)', num: 1, f: r => r.balance_usd, k: 'balance' },
    ], o.near_zero, 'op-near-zero'),
    el('h2', {}, 'Near a spending limit (80 % or more)'),
    o.near_limit.length ? table([
      { t: 'Kind', f: r => r.kind }, { t: 'Customer', f: r => r.customer, k: 'customer' }, { t: 'Key', f: r => r.prefix },
      { t: 'Used', num: 1, f: r => r.used_percent + ' %', k: 'used' },
      { t: 'Today / daily limit', f: r => usd(r.today_cost_usd) + ' / ' + (r.daily_limit_usd ? usd(r.daily_limit_usd) : 'none') },
      { t: 'Month / monthly limit', f: r => usd(r.month_cost_usd) + ' / ' + (r.monthly_limit_usd ? usd(r.monthly_limit_usd) : 'none') },
    ], o.near_limit, 'op-near-limit') : el('p', { class: 'muted', id: 'op-near-limit' }, 'Nobody is near a limit.'));
}

async function workers() {
  const draw = async () => {
    const w = await api('admin/workers');
    const m = (x, k) => x.metrics && x.metrics[k] !== undefined ? String(x.metrics[k]) : '—';
    const mib = (x, k) => x.metrics && x.metrics[k] !== undefined ? (x.metrics[k] / 1048576).toFixed(1) + ' MiB' : '—';
    const prefix = x => {
      const k = Object.keys(x.metrics || {}).filter(n => n.includes('prefix'));
      return k.length ? k.map(n => n.replace('tollgate_engine_', '') + ' ' + x.metrics[n]).join(', ') : '—';
    };
    const t = table([
      { t: 'Worker', f: x => x.url, k: 'url' },
      { t: 'Models', f: x => x.models.join(', ') },
      { t: 'State', f: x => el('span', { class: 'state-' + x.state }, x.state), k: 'state' },
      { t: 'Running seqs', num: 1, f: x => m(x, 'tollgate_engine_active_sequences') },
      { t: 'Queue', num: 1, f: x => m(x, 'tollgate_engine_queue_depth'), k: 'queue' },
      { t: 'In flight (gateway)', num: 1, f: x => x.outstanding },
      { t: 'Tokens/s', num: 1, f: x => x.tokens_per_s.toFixed(1), k: 'tps' },
      { t: 'KV cache', num: 1, f: x => m(x, 'tollgate_engine_kv_cache_tokens') + ' tok, ' + mib(x, 'tollgate_engine_kv_cache_bytes') },
      { t: 'Prefix cache', f: x => prefix(x) },
      { t: 'Generated (total)', num: 1, f: x => m(x, 'tollgate_engine_completion_tokens_total') },
      { t: 'Failures', num: 1, f: x => x.failures },
    ], w.data, 'workers-table');
    const box = document.getElementById('workers-box');
    if (box) box.replaceChildren(t, el('p', { class: 'muted' }, 'Read from each worker\'s /metrics every ' + (w.poll_ms / 1000) + ' s while this page is open.'));
  };
  const tok = begin();
  setView(tok, el('h1', {}, 'Worker pool'), el('div', { id: 'workers-box' }));
  await draw();
  // only while this view is the one shown (signing out or another view meanwhile: no poll)
  if (tok === renderSeq && session) pollTimer = setInterval(() => { draw().catch(() => {}); }, 2000);
}

// ---- boot -------------------------------------------------------------------

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', async () => {
  setupLogin();
  try {
    const s = await api('session');
    if (!s.signed_in) return showLogin();
    session = s;
    document.getElementById('login').hidden = true;
    start();
  } catch (e) {
    showLogin();
  }
});
