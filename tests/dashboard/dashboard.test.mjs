// Browser tests of the dashboards (issue 11), in Debian's headless Chromium
// driven by playwright-core, against the test stack (var/test/env: gateway,
// engine, PostgreSQL, Redis).  Every number the page shows is checked against
// the database; screenshots of each view go to $TG_TEST_DIR/dashboard-shots/.
//
// Usage is seeded through the real gateway and engine (chat completions), so
// the rollups, the ledger and the invoice come from the same settlement path
// as in production.  No fixed sleeps: every wait polls for an event with a
// generous deadline.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
for (const v of ['TG_TEST_GATEWAY', 'TG_TEST_ADMIN', 'TG_TEST_ADMIN_TOKEN', 'TG_TEST_PG', 'TG_TEST_BIN', 'TG_TEST_DIR', 'TG_TEST_MODEL'])
  if (!env[v]) throw new Error(`${v} is not set: run under make test (scripts/test.sh sources var/test/env)`);
const GW = env.TG_TEST_GATEWAY, MODEL = env.TG_TEST_MODEL;
const SHOTS = path.join(env.TG_TEST_DIR, 'dashboard-shots');
mkdirSync(SHOTS, { recursive: true });
const sfx = Date.now().toString(36);
const A = `dash-a-${sfx}`, B = `dash-b-${sfx}`;
const month = new Date().toISOString().slice(0, 7);

const PSQL = (() => {
  const d = '/usr/lib/postgresql';
  const v = readdirSync(d).sort((a, b) => Number(b) - Number(a))[0];
  return `${d}/${v}/bin/psql`;
})();
// A USD amount as the page shows it, from tg_usd's text: the sign before the dollar sign, cents
// always, further decimals only when not zero ("-1.500000" -> "-$1.50", "0.000120" -> "$0.00012").
const dollars = u => (u.startsWith('-') ? '-$' + u.slice(1) : '$' + u).replace(/(\.\d\d\d*?)0+$/, '$1');
function sql(q) {
  return execFileSync(PSQL, ['-X', '-qtA', '-F', '\t', env.TG_TEST_PG, '-c', q], { encoding: 'utf8', timeout: 30000 }).trim();
}
function ctl(...args) {
  return execFileSync(path.join(env.TG_TEST_BIN, 'tollgatectl'), args, {
    encoding: 'utf8', timeout: 30000,
    env: { ...env, TOLLGATE_ADMIN_URL: env.TG_TEST_ADMIN, TOLLGATE_ADMIN_TOKEN: env.TG_TEST_ADMIN_TOKEN },
  });
}
const lastLine = s => s.trim().split('\n').pop().trim();
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function waitFor(what, fn, ms = 30000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(100);
  }
}
async function http(url, opts = {}) {
  return fetch(url, { ...opts, signal: AbortSignal.timeout(30000) });
}
async function chat(key, maxTokens = 4) {
  const r = await http(`${GW}/v1/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Tell me about tollgates' }], max_tokens: maxTokens }),
  });
  await r.text();
  return r.status;
}
async function modelsStatus(key) {
  const r = await http(`${GW}/v1/models`, { headers: { Authorization: `Bearer ${key}` } });
  await r.text();
  return r.status;
}
async function settled() {
  await waitFor('the settlement queue to drain', async () => {
    const r = await http(`${env.TG_TEST_ADMIN}/admin/v1/settlement`, { headers: { Authorization: `Bearer ${env.TG_TEST_ADMIN_TOKEN}` } });
    return (await r.json()).idle;
  });
}
// A session through the JSON API (no browser): cookie and csrf.
async function apiLogin(body, headers = {}) {
  const r = await http(`${GW}/dashboard/api/login`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body) });
  const j = await r.json();
  const sc = r.headers.get('set-cookie') || '';
  return { status: r.status, j, setCookie: sc, cookie: sc.split(';')[0], csrf: j.csrf, retryAfter: r.headers.get('retry-after') };
}
async function apiCall(s, p, opts = {}) {
  const headers = { Cookie: s.cookie, ...(opts.headers || {}) };
  if (opts.csrf !== false && opts.method && opts.method !== 'GET') headers['X-CSRF-Token'] = s.csrf;
  const r = await http(`${GW}/dashboard/api/${p}`, { method: opts.method || 'GET', headers, body: opts.body });
  const text = await r.text();
  let j = null;
  try { j = JSON.parse(text); } catch { j = null; }
  return { status: r.status, j, text };
}

const keys = {};
let custA, custB, browser, opsPassword, webPassword;

before(async () => {
  ctl('customer', 'create', A, '--credit-usd', '2.00');
  ctl('customer', 'create', B, '--credit-usd', '1.00');
  custA = sql(`SELECT id FROM customers WHERE name = '${A}'`);
  custB = sql(`SELECT id FROM customers WHERE name = '${B}'`);
  keys.a1 = lastLine(ctl('key', 'create', '--customer', A, '--name', 'main'));
  keys.a2 = lastLine(ctl('key', 'create', '--customer', A, '--name', 'to-revoke'));
  keys.a3 = lastLine(ctl('key', 'create', '--customer', A, '--name', 'slow', '--rpm', '1'));
  keys.b1 = lastLine(ctl('key', 'create', '--customer', B, '--name', 'b-main'));
  // a key without limits: a session of a key with any (a1 gets a monthly limit in the operator
  // test, a3 has rpm 1) makes no key and revokes none but its own (403 key_restricted)
  keys.a4 = lastLine(ctl('key', 'create', '--customer', A, '--name', 'keeper'));
  ctl('customer', 'spending-limits', A, '--monthly-usd', '1.00');
  opsPassword = lastLine(ctl('user', 'create', `ops-${sfx}`, '--operator'));
  webPassword = lastLine(ctl('user', 'create', `web-${sfx}`, '--customer', B));
  for (let i = 0; i < 3; i++) assert.equal(await chat(keys.a1), 200);
  for (let i = 0; i < 2; i++) assert.equal(await chat(keys.a2, 6), 200);
  assert.equal(await chat(keys.b1), 200);
  assert.equal(await chat(keys.a3), 200);
  assert.equal(await chat(keys.a3), 429); // RPM 1: a refusal in the rollup
  await settled();
  await waitFor('the 429 refusal in the rollup', () =>
    Number(sql(`SELECT coalesce(sum(refused_429), 0) FROM usage_hourly WHERE customer_id = ${custA}`)) >= 1);
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic'],
  });
});

after(async () => {
  if (browser) await browser.close();
});

async function newPage() {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(30000);
  const problems = [];
  page.on('console', m => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', e => problems.push(String(e)));
  page.on('request', r => { if (!r.url().startsWith(GW)) problems.push('request to another host: ' + r.url()); });
  return { ctx, page, problems };
}
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name + '.png'), fullPage: true });
const text = (page, sel) => page.locator(sel).first().innerText();

test('customer view: balance, usage charts, keys, invoice CSV, request log — equal to the database', { timeout: 240000 }, async () => {
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await page.fill('#api-key', keys.a1);
  await page.click('#login-key button[type=submit]');
  await page.waitForSelector('#balance');

  // Balance and this month's spend, to the unit.
  const [bal, balPico] = sql(`SELECT tg_usd(balance_pico), balance_pico FROM customers WHERE id = ${custA}`).split('\t');
  assert.equal(await text(page, '#balance .value'), dollars(bal));
  assert.equal(await text(page, '#balance .sub'), balPico + ' pico-USD');
  const monthCost = sql(`SELECT coalesce(sum(cost_pico), 0) FROM usage WHERE customer_id = ${custA}
    AND received_at >= date_trunc('month', now(), 'UTC')`);
  assert.equal(await text(page, '#month-spend .value'), dollars(sql(`SELECT tg_usd(${monthCost})`)));
  assert.match(await text(page, '#monthly-limit .sub'), /headroom/);
  assert.match(await text(page, '#credits'), /2\.000000/);
  await shot(page, 'customer-overview');

  // Usage: the charts' totals equal the usage rows in the database.
  await page.click('#nav-usage');
  await page.waitForFunction(() => window.tgCharts && window.tgCharts['chart-tokens'] && window.tgCharts['chart-requests'] && window.tgCharts['chart-cost']);
  const got = await page.evaluate(() => {
    const c = window.tgCharts;
    const sum = ds => ds.data.reduce((a, x) => a + (x || 0), 0);
    const t = Object.fromEntries(c['chart-tokens'].data.datasets.map(d => [d.label, sum(d)]));
    const r = Object.fromEntries(c['chart-requests'].data.datasets.map(d => [d.label, sum(d)]));
    const cost = c['chart-cost'].data.datasets[0].exact.reduce((a, x) => a + BigInt(x), 0n).toString();
    return { t, r, cost };
  });
  const [hit, miss, out, n, cost, n5xx] = sql(`SELECT sum(prompt_cache_hit_tokens), sum(prompt_cache_miss_tokens),
    sum(completion_tokens), count(*), sum(cost_pico), count(*) FILTER (WHERE http_status >= 500)
    FROM usage WHERE customer_id = ${custA}`).split('\t').map(String);
  assert.equal(String(got.t['cache hit']), hit);
  assert.equal(String(got.t['cache miss']), miss);
  assert.equal(String(got.t['output']), out);
  assert.equal(got.cost, cost);
  assert.equal(String(got.r['answered']), String(Number(n) - Number(n5xx)));
  const [r402, r429] = sql(`SELECT sum(refused_402), sum(refused_429) FROM usage_hourly WHERE customer_id = ${custA}`).split('\t');
  assert.equal(String(got.r['429 refused']), r429);
  assert.equal(String(got.r['402 refused']), r402);
  assert.ok(Number(r429) >= 1);
  assert.equal(await text(page, '#usage-totals td[data-col=cost_pico]'), cost);
  assert.equal(await text(page, '#usage-totals td[data-col=requests]'), n);
  await shot(page, 'customer-usage');
  // Per key: the chart follows the selector.
  const a2id = sql(`SELECT id FROM api_keys WHERE customer_id = ${custA} AND name = 'to-revoke'`);
  await page.selectOption('#usage-key', a2id);
  await page.waitForSelector(`#usage-totals[data-filter="day|${a2id}|"]`);
  const keyCost = await page.evaluate(() => window.tgCharts['chart-cost'].data.datasets[0].exact.reduce((a, x) => a + BigInt(x), 0n).toString());
  assert.equal(keyCost, sql(`SELECT sum(cost_pico) FROM usage WHERE key_id = ${a2id}`));

  // Keys: prefixes only; create one from the page, revoke another and see the API refuse it.
  await page.click('#nav-keys');
  await page.waitForSelector('#keys-table');
  const table = await text(page, '#keys-table');
  assert.ok(!table.includes(keys.a1) && !table.includes(keys.a2), 'a full key on the page');
  for (const p of sql(`SELECT prefix FROM api_keys WHERE customer_id = ${custA}`).split('\n')) assert.ok(table.includes(p));
  await page.fill('#key-name', 'from-page');
  await page.fill('#key-monthly', '0.50');
  await page.click('#key-create');
  const newKey = (await page.locator('#new-key').innerText()).trim();
  assert.match(newKey, /^sk-tg1-/);
  assert.equal(await modelsStatus(newKey), 200);
  assert.equal(sql(`SELECT monthly_limit_pico FROM api_keys WHERE customer_id = ${custA} AND name = 'from-page'`), '500000000000');
  assert.equal(await modelsStatus(keys.a2), 200);
  const prefixA2 = keys.a2.slice(0, 15);
  page.once('dialog', d => d.accept());
  await page.click(`button[data-key="${prefixA2}"]`);
  await waitFor('the API to refuse the revoked key', async () => (await modelsStatus(keys.a2)) === 401, 10000);
  await page.waitForFunction(p => [...document.querySelectorAll('#keys-table tr')].some(tr => tr.innerText.includes(p) && tr.innerText.includes('revoked')), prefixA2);
  assert.equal(sql(`SELECT count(*) FROM admin_audit WHERE action = 'key.revoke' AND target = 'key:${a2id}'`), '1');
  await shot(page, 'customer-keys');

  // Invoice: the page and the CSV equal the invoice, and the usage rows.
  await page.goto(`${GW}/dashboard/#/invoices/${month}`);
  await page.waitForSelector('#invoice-total');
  const monthTotal = sql(`SELECT coalesce(sum(cost_pico), 0) FROM usage WHERE customer_id = ${custA}
    AND received_at >= '${month}-01'::timestamp AT TIME ZONE 'UTC'`);
  assert.equal(await text(page, '#invoice-total .sub'), monthTotal + ' pico-USD');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#invoice-csv')]);
  const csvPath = path.join(SHOTS, `invoice-${month}.csv`);
  await download.saveAs(csvPath);
  // The CSV is the invoice document (tg_invoice_render): its usage lines add up
  // to the usage rows of the month, line by line.
  const csv = readFileSync(csvPath, 'utf8');
  assert.equal(csv, sql(`SELECT body_csv FROM tg_invoice_render(${custA}, '${month}-01'::date, NULL, NULL, NULL)`) + '\n');
  const lines = csv.trim().split('\n');
  assert.equal(lines[0], 'customer,month,record,period,model,token_class,quantity,unit_price_micro_usd_per_1m,amount_pico,amount_usd,note');
  const recs = lines.slice(1).map(l => l.split(','));
  const usageRows = recs.filter(r => r[2] === 'usage');
  const total = recs.find(r => r[2] === 'usage_total');
  assert.equal(total[8], monthTotal);
  assert.equal(usageRows.reduce((a, r) => a + BigInt(r[8]), 0n).toString(), monthTotal);
  for (const r of usageRows) {
    assert.equal(r[0], A);
    assert.equal(BigInt(r[6]) * BigInt(r[7]), BigInt(r[8])); // tokens x unit price = amount, exactly
  }
  const dbLines = sql(`SELECT model, cls, price, sum(n) FROM (
      SELECT model, 'input_cache_miss' AS cls, price_input_cache_miss AS price, prompt_cache_miss_tokens AS n FROM usage WHERE customer_id = ${custA}
      UNION ALL SELECT model, 'input_cache_hit', price_input_cache_hit, prompt_cache_hit_tokens FROM usage WHERE customer_id = ${custA}
      UNION ALL SELECT model, 'output', price_output, completion_tokens FROM usage WHERE customer_id = ${custA}) x
    GROUP BY 1, 2, 3 HAVING sum(n) > 0 ORDER BY 1, 2, 3`).split('\n').map(l => l.split('\t'));
  assert.deepEqual(usageRows.map(r => [r[4], r[5], r[7], r[6]]).sort(), dbLines.sort());
  await shot(page, 'customer-invoice');

  // Request log: newest first, paginated.
  await page.click('#nav-requests');
  await page.waitForSelector('#requests-table');
  const shown = await page.locator('#requests-table tbody tr').count();
  assert.equal(String(shown), sql(`SELECT least(count(*), 25) FROM usage WHERE customer_id = ${custA}`));
  const newest = sql(`SELECT request_id FROM usage WHERE customer_id = ${custA} ORDER BY received_at DESC, request_id DESC LIMIT 1`);
  assert.equal(await text(page, '#requests-table tbody td[data-col=id]'), newest);
  await page.fill('#req-status', '429');
  await page.press('#req-status', 'Enter');
  await page.waitForFunction(() => document.querySelectorAll('#requests-table tbody tr').length === 0);
  await page.fill('#req-status', '');
  await page.press('#req-status', 'Enter');
  await page.waitForSelector('#requests-table tbody tr');
  await shot(page, 'customer-requests');

  assert.deepEqual(problems, []);
  await ctx.close();
});

test('operator view: revenue by model and customer, near zero and near a limit, the worker pool', { timeout: 120000 }, async () => {
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await page.click('#tab-user');
  await page.fill('#login-name', `ops-${sfx}`);
  await page.fill('#login-password', opsPassword);
  await page.click('#login-user button[type=submit]');
  await page.waitForSelector('#op-top');
  const revenue = sql(`SELECT sum(cost_pico) FROM usage`);
  assert.equal(await text(page, '#op-revenue .sub'), revenue + ' pico-USD');
  const rowA = page.locator('#op-top tr', { hasText: A });
  assert.equal(await rowA.locator('td[data-col=cost_pico]').innerText(), sql(`SELECT sum(cost_pico) FROM usage WHERE customer_id = ${custA}`));
  const rowM = page.locator('#op-by-model tr', { hasText: MODEL });
  assert.equal(await rowM.locator('td[data-col=cost_pico]').innerText(), sql(`SELECT sum(cost_pico) FROM usage WHERE model = '${MODEL}'`));
  const lowest = sql(`SELECT name FROM customers WHERE closed_at IS NULL ORDER BY balance_pico, id LIMIT 1`);
  assert.equal(await text(page, '#op-near-zero td[data-col=customer]'), lowest);
  // The key created on the page with a $0.50 monthly limit is not near it; a
  // key whose limit is below what it spent is.
  const a1id = sql(`SELECT id FROM api_keys WHERE customer_id = ${custA} AND name = 'main'`);
  ctl('key', 'update', a1id, '--monthly-limit-usd', '0.000001');
  await page.reload();
  await page.waitForSelector('#op-near-limit tr');
  assert.ok((await text(page, '#op-near-limit')).includes(keys.a1.slice(0, 15)));
  await shot(page, 'operator-revenue');

  await page.click('#nav-workers');
  await page.waitForFunction(() => [...document.querySelectorAll('#workers-table td[data-col=state]')].some(td => td.innerText === 'up'), null, { timeout: 30000 });
  assert.ok((await text(page, '#workers-table')).includes(env.TG_TEST_ENGINE.replace(/\/$/, '')));
  await shot(page, 'operator-workers');
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('a customer sees nothing of another, even by guessing ids', { timeout: 60000 }, async () => {
  const s = await apiLogin({ api_key: keys.a4 });
  assert.equal(s.status, 200);
  assert.match(s.setCookie, /HttpOnly/);
  assert.match(s.setCookie, /Secure/);
  assert.match(s.setCookie, /SameSite=Strict/);
  const b1id = sql(`SELECT id FROM api_keys WHERE customer_id = ${custB} LIMIT 1`);
  const k = await apiCall(s, 'keys');
  assert.deepEqual(k.j.data.map(x => String(x.id)).sort(), sql(`SELECT id FROM api_keys WHERE customer_id = ${custA}`).split('\n').sort());
  assert.ok(!k.text.includes(B) && !k.text.includes('b-main'));
  assert.deepEqual((await apiCall(s, `requests?key=${b1id}`)).j.data, []);
  assert.equal((await apiCall(s, `usage?key=${b1id}`)).j.totals.requests, '0');
  const rev = await apiCall(s, `keys/${b1id}/revoke`, { method: 'POST', body: '{}' });
  assert.equal(rev.status, 404);
  assert.equal(await modelsStatus(keys.b1), 200);
  // B's request id as a cursor or filter finds nothing of B either.
  const bReq = sql(`SELECT request_id FROM usage WHERE customer_id = ${custB} LIMIT 1`);
  const page = await apiCall(s, `requests?before=9999999999999999,${bReq}`);
  assert.ok(page.j.data.every(r => r.key_prefix && !r.key_prefix.startsWith(keys.b1.slice(0, 15))));
  assert.ok(!page.text.includes(bReq));
  // The invoice is the session's customer's whatever is asked.
  const inv = await apiCall(s, `invoices/${month}`);
  assert.equal(inv.j.customer, A);
  // Operator views need an operator login.
  const denied = await apiCall(s, 'admin/overview');
  assert.equal(denied.status, 403);
  assert.equal(denied.j.error.type, 'permission_error');
  assert.equal((await apiCall(s, 'admin/workers')).status, 403);
  assert.equal((await http(`${GW}/dashboard/api/overview`)).status, 401);
  // A customer login of B sees B.
  const w = await apiLogin({ login: `web-${sfx}`, password: webPassword });
  assert.equal(w.status, 200);
  assert.equal((await apiCall(w, 'overview')).j.customer, B);
});

test('writes need the CSRF token and a same-origin Origin', { timeout: 60000 }, async () => {
  const s = await apiLogin({ api_key: keys.a4 });
  const before = sql(`SELECT count(*) FROM api_keys WHERE customer_id = ${custA}`);
  assert.equal((await apiCall(s, 'keys', { method: 'POST', body: '{"name":"x"}', csrf: false })).status, 403);
  assert.equal((await apiCall(s, 'keys', { method: 'POST', body: '{"name":"x"}', headers: { 'X-CSRF-Token': 'f'.repeat(64) }, csrf: false })).status, 403);
  assert.equal((await apiCall(s, 'keys', { method: 'POST', body: '{"name":"x"}', headers: { Origin: 'https://evil.example' } })).status, 403);
  assert.equal((await apiCall(s, 'logout', { method: 'POST', body: '{}', csrf: false })).status, 403);
  assert.equal(sql(`SELECT count(*) FROM api_keys WHERE customer_id = ${custA}`), before);
  const ok = await apiCall(s, 'keys', { method: 'POST', body: '{"name":"csrf-ok"}' });
  assert.equal(ok.status, 200);
  assert.match(ok.j.key, /^sk-tg1-/);
  // Signing out ends the session.
  assert.equal((await apiCall(s, 'logout', { method: 'POST', body: '{}' })).status, 200);
  assert.equal((await apiCall(s, 'overview')).status, 401);
});

test('logins are throttled per login, even for the right password', { timeout: 60000 }, async () => {
  const login = `victim-${sfx}`;
  const pw = lastLine(ctl('user', 'create', login, '--customer', B));
  for (let i = 0; i < 5; i++) assert.equal((await apiLogin({ login, password: 'tgp_' + '0'.repeat(32) })).status, 401);
  const t = await apiLogin({ login, password: pw });
  assert.equal(t.status, 429);
  assert.equal(t.j.error.type, 'rate_limit_error');
  assert.ok(Number(t.retryAfter) > 0);
  // Another login from the same address still signs in.
  assert.equal((await apiLogin({ login: `web-${sfx}`, password: webPassword })).status, 200);
  // A revoked login's sessions end.
  const w = await apiLogin({ login: `web-${sfx}`, password: webPassword });
  ctl('user', 'revoke', `web-${sfx}`);
  assert.equal((await apiCall(w, 'overview')).status, 401);
});

async function signInWithKey(page, key) {
  await page.fill('#api-key', key);
  await page.click('#login-key button[type=submit]');
  await page.waitForSelector('#balance');
}
async function signOut(page) {
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
}

test('counters beyond 2^53 keep every digit, in the JSON and on the page', { timeout: 60000 }, async () => {
  // Refusal counters (at least once, no usage row behind them) planted in the
  // hourly and the daily rollup alike, so every rollup check still agrees.
  const C = `dash-big-${sfx}`;
  ctl('customer', 'create', C);
  const key = lastLine(ctl('key', 'create', '--customer', C, '--name', 'big'));
  const id = sql(`SELECT id FROM customers WHERE name = '${C}'`);
  const big = '9007199254740993'; // 2^53 + 1: a double reads 9007199254740992
  sql(`INSERT INTO usage_hourly (customer_id, hour, key_id, model, refused_402, refused_429, refused_5xx)
    VALUES (${id}, date_trunc('hour', now(), 'UTC'), 0, '${MODEL}', ${big}, ${big}, ${big})`);
  sql(`INSERT INTO usage_daily (customer_id, day, refused_402, refused_429, refused_5xx)
    VALUES (${id}, date_trunc('day', now(), 'UTC'), ${big}, ${big}, ${big})`);
  const [r402, r429, r5xx, refused, errors] = sql(`SELECT sum(refused_402), sum(refused_429), sum(refused_5xx),
    sum(refused_402 + refused_429), sum(failed_5xx + refused_5xx) FROM usage_hourly WHERE customer_id = ${id}`).split('\t');
  const s = await apiLogin({ api_key: key });
  const u = await apiCall(s, 'usage');
  for (const r of [u.j.totals, ...u.j.data])
    for (const c of ['requests', 'failed_5xx', 'refused_402', 'refused_429', 'refused_5xx']) assert.match(r[c], /^[0-9]+$/, c);
  assert.equal(u.j.totals.refused_402, r402);
  assert.match((await apiCall(s, 'overview')).j.month_requests, /^[0-9]+$/);

  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await signInWithKey(page, key);
  await page.click('#nav-usage');
  await page.waitForSelector('#usage-totals');
  assert.equal(await text(page, '#usage-refused .value'), refused);
  assert.equal(await text(page, '#usage-refused .sub'), `402: ${r402}, 429: ${r429}`);
  assert.equal(await text(page, '#usage-errors .value'), errors);
  const exact = await page.evaluate(() => Object.fromEntries(window.tgCharts['chart-requests'].data.datasets
    .map(d => [d.label, d.exact.reduce((a, x) => a + BigInt(x), 0n).toString()])));
  assert.equal(exact['errors (5xx)'], r5xx);
  assert.equal(exact['402 refused'], r402);
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('signing out ends what the last user left running: the workers poll, the usage filters', { timeout: 60000 }, async () => {
  const { ctx, page, problems } = await newPage();
  const after = [];
  let out = false;
  page.on('request', r => { if (out && r.url().includes('/dashboard/api/admin/')) after.push(r.url()); });
  await page.goto(`${GW}/dashboard/`);
  await page.click('#tab-user');
  await page.fill('#login-name', `ops-${sfx}`);
  await page.fill('#login-password', opsPassword);
  await page.click('#login-user button[type=submit]');
  await page.waitForSelector('#op-top');
  await page.click('#nav-workers');
  await page.waitForSelector('#workers-table');
  await page.click('#logout');
  await page.waitForSelector('#login:not([hidden])');
  out = true;
  await sleep(5000); // the poll runs every 2 s: two rounds would have come by now
  assert.deepEqual(after, [], 'the workers poll ran on after signing out');

  // A's key filter on the usage page is not B's after A signs out in this tab.
  await signInWithKey(page, keys.a1);
  await page.click('#nav-usage');
  const a1id = sql(`SELECT id FROM api_keys WHERE customer_id = ${custA} AND name = 'main'`);
  await page.waitForSelector('#usage-key');
  await page.selectOption('#usage-key', a1id);
  await page.waitForSelector(`#usage-totals[data-filter="day|${a1id}|"]`);
  await signOut(page);
  await signInWithKey(page, keys.b1);
  await page.click('#nav-usage');
  await page.waitForSelector('#usage-totals');
  assert.equal(await page.locator('#usage-totals').getAttribute('data-filter'), 'day||');
  assert.equal(await text(page, '#usage-totals td[data-col=requests]'),
    sql(`SELECT count(*) FROM usage WHERE customer_id = ${custB} AND received_at >= now() - interval '30 days'`));
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('a request-log filter that cannot be read is named on the page, the view stays usable, no script error', { timeout: 60000 }, async () => {
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await signInWithKey(page, keys.a1);
  await page.click('#nav-requests');
  await page.waitForSelector('#requests-table tbody tr');
  await page.fill('#req-key', 'abc');
  await page.press('#req-key', 'Enter');
  await page.waitForSelector('#view-error', { timeout: 10000 });
  assert.match(await text(page, "#view-error"), /Key id must be/);
  assert.ok(await page.locator('#requests-table').isVisible());
  // The refused filter is not kept: the view comes back whole on the next visit.
  await page.click('#nav-overview');
  await page.waitForSelector('#balance');
  await page.click('#nav-requests');
  await page.waitForSelector('#requests-table tbody tr');
  assert.equal(await page.locator('#requests-table tbody tr').count(),
    Number(sql(`SELECT least(count(*), 25) FROM usage WHERE customer_id = ${custA}`)));
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('operator: a spend millions of times its limit is shown to the percent, not a failed page', { timeout: 60000 }, async () => {
  // A's month so far against a monthly limit of one pico-USD: tens of millions x 100 %, past int4.
  ctl('customer', 'spending-limits', A, '--monthly-usd', '0.000000000001');
  const month = sql(`SELECT sum(cost_pico) FROM usage_hourly WHERE customer_id = ${custA}
    AND hour >= date_trunc('month', now(), 'UTC')`);
  assert.ok(BigInt(month) * 100n > 2n ** 31n, `A's spend ${month} is too small for this test`);
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await page.click('#tab-user');
  await page.fill('#login-name', `ops-${sfx}`);
  await page.fill('#login-password', opsPassword);
  await page.click('#login-user button[type=submit]');
  await page.waitForSelector('#op-near-limit tr');
  const row = page.locator('#op-near-limit tr', { hasText: A }).filter({ hasText: 'customer' });
  assert.equal(await row.locator('td[data-col=used]').innerText(), (BigInt(month) * 100n).toString() + ' %');
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('usage from one day to the same day is that UTC day, whole', { timeout: 60000 }, async () => {
  const day = sql(`SELECT to_char(max(received_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM usage WHERE customer_id = ${custA}`);
  const next = sql(`SELECT to_char('${day}'::date + 1, 'YYYY-MM-DD')`);
  const [n, cost] = sql(`SELECT count(*), sum(cost_pico) FROM usage WHERE customer_id = ${custA}
    AND received_at >= '${day}'::timestamp AT TIME ZONE 'UTC' AND received_at < '${next}'::timestamp AT TIME ZONE 'UTC'`).split('\t');
  assert.ok(Number(n) > 0);
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await signInWithKey(page, keys.a1);
  await page.click('#nav-usage');
  await page.waitForSelector('#usage-totals');
  await page.fill('#usage-from', day);
  await page.waitForSelector(`#usage-totals[data-range^="${day}T00:00:00"]`);
  await page.fill('#usage-to', day);
  await page.waitForSelector(`#usage-totals[data-range$="${next}T00:00:00+00:00"]`);
  assert.equal(await text(page, '#usage-totals td[data-col=requests]'), n);
  assert.equal(await text(page, '#usage-totals td[data-col=cost_pico]'), cost);
  const labels = await page.evaluate(() => window.tgCharts['chart-cost'].data.labels);
  assert.deepEqual(labels, [day]);
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('the invoice page shows every movement of the month: opening, credits, adjustments, refunds, closing', { timeout: 60000 }, async () => {
  const C = `dash-inv-${sfx}`;
  ctl('customer', 'create', C, '--credit-usd', '5');
  ctl('credit', 'adjust', '--customer', C, '--usd', '-1.5', '--reason', '<b>fix</b> "1+1"');
  ctl('credit', 'refund', '--customer', C, '--usd', '0.25', '--reason', 'paid back');
  const key = lastLine(ctl('key', 'create', '--customer', C, '--name', 'inv'));
  assert.equal(await chat(key), 200);
  await settled();
  const id = sql(`SELECT id FROM customers WHERE name = '${C}'`);
  const m = sql(`SELECT to_char(max(created_at) AT TIME ZONE 'UTC', 'YYYY-MM') FROM ledger WHERE customer_id = ${id}`);
  const doc = JSON.parse(sql(`SELECT body_json FROM tg_invoice_render(${id}, '${m}-01'::date, NULL, NULL, NULL)`));
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await signInWithKey(page, key);
  await page.goto(`${GW}/dashboard/#/invoices/${m}`);
  await page.waitForSelector('#invoice-closing');
  const card = async k => [await text(page, `#invoice-${k} .value`), await text(page, `#invoice-${k} .sub`)];
  const pico = {};
  for (const [k, f] of [['opening', 'opening_balance'], ['credits', 'credits'], ['adjustments', 'adjustments'], ['refunds', 'refunds'], ['closing', 'closing_balance'], ['total', 'total']]) {
    const [v, sub] = await card(k);
    assert.equal(sub, doc[f + '_pico'] + ' pico-USD', k);
    assert.equal(v, dollars(sql(`SELECT tg_usd(${doc[f + '_pico']})`)), k);
    pico[k] = BigInt(doc[f + '_pico']);
  }
  // a negative amount: the sign before the dollar sign, cents shown (it was "$-1.500000")
  assert.equal((await card('adjustments'))[0], '-$1.50');
  assert.equal((await card('refunds'))[0], '-$0.25');
  assert.equal(pico.adjustments, -1500000000000n);
  assert.equal(pico.refunds, -250000000000n);
  assert.ok(pico.total > 0n);
  assert.equal(pico.opening + pico.credits + pico.adjustments + pico.refunds - pico.total, pico.closing);
  assert.equal(pico.closing.toString(), sql(`SELECT balance_pico FROM customers WHERE id = ${id}`));
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('operator: a closed customer is not among those nearest to zero or near a limit', { timeout: 60000 }, async () => {
  const Z = `dash-closed-${sfx}`;
  ctl('customer', 'create', Z);
  ctl('credit', 'adjust', '--customer', Z, '--usd', '-1000000', '--reason', 'owes'); // lower than anyone
  ctl('customer', 'spending-limits', Z, '--monthly-usd', '0');
  ctl('customer', 'close', Z);
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await page.click('#tab-user');
  await page.fill('#login-name', `ops-${sfx}`);
  await page.fill('#login-password', opsPassword);
  await page.click('#login-user button[type=submit]');
  await page.waitForSelector('#op-near-zero td[data-col=customer]');
  assert.equal(await text(page, '#op-near-zero td[data-col=customer]'),
    sql(`SELECT name FROM customers WHERE closed_at IS NULL ORDER BY balance_pico, id LIMIT 1`));
  assert.ok(!(await text(page, '#op-near-zero')).includes(Z), 'a closed customer is listed as nearest to zero');
  assert.ok(!(await text(page, '#op-near-limit')).includes(Z), 'a closed customer is listed as near a limit');
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('operator: the revenue chart shows every day, a day without usage at 0', { timeout: 60000 }, async () => {
  // Refusals (no cost, no usage row behind them) planted 5 and 2 days ago, in the hourly and the
  // daily rollup alike so every rollup check still agrees: the days between have no row at all.
  const G = `dash-gap-${sfx}`;
  ctl('customer', 'create', G);
  const id = sql(`SELECT id FROM customers WHERE name = '${G}'`);
  for (const d of [5, 2]) {
    sql(`INSERT INTO usage_hourly (customer_id, hour, key_id, model, refused_429)
      VALUES (${id}, date_trunc('day', now(), 'UTC') - interval '${d} days' + interval '3 hours', 0, '${MODEL}', 1)`);
    sql(`INSERT INTO usage_daily (customer_id, day, refused_429)
      VALUES (${id}, date_trunc('day', now(), 'UTC') - interval '${d} days', 1)`);
  }
  const day = d => new Date(Date.now() - d * 86400e3).toISOString().slice(0, 10);
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await page.click('#tab-user');
  await page.fill('#login-name', `ops-${sfx}`);
  await page.fill('#login-password', opsPassword);
  await page.click('#login-user button[type=submit]');
  await page.waitForFunction(() => window.tgCharts && window.tgCharts['chart-revenue']);
  const { labels, exact } = await page.evaluate(() => {
    const c = window.tgCharts['chart-revenue'];
    return { labels: c.data.labels, exact: c.data.datasets[0].exact };
  });
  // one bar a day, none missing, up to today (a year back at most)
  for (let i = 1; i < labels.length; i++)
    assert.equal(Date.parse(labels[i]) - Date.parse(labels[i - 1]), 86400e3, `${labels[i - 1]} ${labels[i]}`);
  assert.equal(labels[labels.length - 1], day(0));
  assert.ok(labels.length >= 6 && labels.length <= 366, labels.length);
  for (const d of [4, 3]) {
    const i = labels.indexOf(day(d));
    assert.ok(i >= 0, `${day(d)} in ${labels.join(' ')}`);
    assert.equal(exact[i], '0');
  }
  // the exact figures are the rollup's over those days
  assert.equal(exact.reduce((a, x) => a + BigInt(x), 0n).toString(), sql(`SELECT coalesce(sum(cost_pico), 0)
    FROM usage_hourly WHERE hour >= '${labels[0]}T00:00:00Z'`));
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('operator: paying customers are those with a cost, not those only refused', { timeout: 60000 }, async () => {
  const R = `dash-refused-${sfx}`;
  ctl('customer', 'create', R);
  const key = lastLine(ctl('key', 'create', '--customer', R, '--name', 'no-credit'));
  const id = sql(`SELECT id FROM customers WHERE name = '${R}'`);
  assert.equal(await chat(key), 402); // no credit: a refusal in the rollups, no cost
  await waitFor('the 402 refusal in the rollup', () =>
    Number(sql(`SELECT coalesce(sum(refused_402), 0) FROM usage_hourly WHERE customer_id = ${id}`)) >= 1);
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await page.click('#tab-user');
  await page.fill('#login-name', `ops-${sfx}`);
  await page.fill('#login-password', opsPassword);
  await page.click('#login-user button[type=submit]');
  await page.waitForSelector('#op-customers');
  const [paying, any] = sql(`SELECT count(*) FILTER (WHERE cost > 0), count(*) FROM
    (SELECT customer_id, sum(cost_pico) AS cost FROM usage_hourly GROUP BY 1) x`).split('\t');
  assert.ok(Number(any) > Number(paying));
  assert.equal(await text(page, '#op-customers .value'), paying);
  assert.equal(await text(page, '#op-customers .sub'), `${any} with any traffic`);
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('a key form the server would refuse is named on the page, nothing made, no console error', { timeout: 60000 }, async () => {
  const n = sql(`SELECT count(*) FROM api_keys WHERE customer_id = ${custA}`);
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  // rpm 1: a key with limits makes no key and revokes none but its own; the page says so
  // instead of offering a form the server refuses (403 key_restricted)
  await signInWithKey(page, keys.a3);
  await page.click('#nav-keys');
  await page.waitForSelector('#keys-table');
  assert.match(await text(page, '#key-restricted'), /has limits/);
  assert.equal(await page.locator('#key-form').count(), 0);
  assert.deepEqual(await page.locator('#keys-table button[data-key]').evaluateAll(bs => bs.map(b => b.dataset.key)),
    [keys.a3.slice(0, 15)]);
  await signOut(page);
  await signInWithKey(page, keys.a4);
  await page.click('#nav-keys');
  await page.waitForSelector('#keys-table');
  await page.fill('#key-name', 'bad limit');
  await page.fill('#key-monthly', '1e3');
  await page.click('#key-create');
  await page.waitForSelector('#key-created .error');
  assert.match(await text(page, '#key-created .error'), /monthly/i);
  await page.fill('#key-monthly', '');
  await page.fill('#key-name', 'é'.repeat(101)); // 101 characters, 202 bytes
  await page.click('#key-create');
  await page.waitForFunction(() => /200 bytes/.test(document.querySelector('#key-created').innerText));
  assert.equal(sql(`SELECT count(*) FROM api_keys WHERE customer_id = ${custA}`), n);
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('a link to an invoice opened signed out shows that invoice once signed in', { timeout: 60000 }, async () => {
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/#/invoices/${month}`);
  await page.fill('#api-key', keys.a1);
  await page.click('#login-key button[type=submit]');
  await page.waitForSelector('#invoice-total');
  const total = sql(`SELECT coalesce(sum(cost_pico), 0) FROM usage WHERE customer_id = ${custA}
    AND received_at >= '${month}-01'::timestamp AT TIME ZONE 'UTC'
    AND received_at < ('${month}-01'::date + interval '1 month')::timestamp AT TIME ZONE 'UTC'`);
  assert.equal(await text(page, '#invoice-total .sub'), total + ' pico-USD');
  assert.equal(new URL(page.url()).hash, `#/invoices/${month}`);
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('the cache-hit ratio is rounded to 2 decimals, as the chart rounds it', { timeout: 60000 }, async () => {
  // One request of 2 cache-hit and 1 cache-miss tokens, written as settlement writes it (usage
  // row, hourly and daily rollups, ledger debit: reconcile agrees): 2/3 is 66.67 %, not 66.66.
  const R = `dash-ratio-${sfx}`;
  ctl('customer', 'create', R, '--credit-usd', '1');
  const key = lastLine(ctl('key', 'create', '--customer', R, '--name', 'ratio'));
  const id = sql(`SELECT id FROM customers WHERE name = '${R}'`);
  sql(`WITH u AS (INSERT INTO usage (request_id, customer_id, key_id, model, prompt_tokens, prompt_cache_hit_tokens,
      prompt_cache_miss_tokens, completion_tokens, reasoning_tokens, price_input_cache_miss, price_input_cache_hit,
      price_output, cost_pico, http_status, stream, received_at, finished_at, recorded_at)
      VALUES (gen_random_uuid(), ${id}, NULL, '${MODEL}', 3, 2, 1, 0, 0, 270000, 70000, 1100000, 410000, 200, false,
      now(), now(), now()) RETURNING *),
    h AS (INSERT INTO usage_hourly (customer_id, hour, key_id, model, requests, prompt_cache_hit_tokens,
      prompt_cache_miss_tokens, cost_pico) SELECT customer_id, date_trunc('hour', received_at, 'UTC'), 0, model, 1, 2, 1,
      cost_pico FROM u RETURNING 1),
    d AS (INSERT INTO usage_daily (customer_id, day, requests, prompt_cache_hit_tokens, prompt_cache_miss_tokens, cost_pico)
      SELECT customer_id, date_trunc('day', received_at, 'UTC'), 1, 2, 1, cost_pico FROM u RETURNING 1)
    INSERT INTO ledger (customer_id, kind, amount_pico, request_id) SELECT customer_id, 'usage', -cost_pico, request_id FROM u`);
  assert.equal(sql(`SELECT count(*) FROM usage_hourly_mismatch WHERE customer_id = ${id}`), '0');
  const want = sql(`SELECT round(100.0 * sum(prompt_cache_hit_tokens) / sum(prompt_cache_hit_tokens + prompt_cache_miss_tokens), 2)
    FROM usage WHERE customer_id = ${id}`);
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await signInWithKey(page, key);
  await page.click('#nav-usage');
  await page.waitForSelector('#usage-ratio');
  assert.equal(await text(page, '#usage-ratio .value'), want + ' %');
  const chart = await page.evaluate(() => window.tgCharts['chart-ratio'].data.datasets[0].data.filter(x => x !== null));
  assert.deepEqual(chart, [Number(want)]);
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('the usage model selector shows the model filtered on, even for a period without it', { timeout: 60000 }, async () => {
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await signInWithKey(page, keys.a1);
  await page.click('#nav-usage');
  await page.waitForSelector('#usage-model');
  await page.selectOption('#usage-model', MODEL);
  await page.waitForSelector(`#usage-totals[data-filter="day||${MODEL}"]`);
  const before = sql(`SELECT to_char(min(received_at) AT TIME ZONE 'UTC' - interval '1 day', 'YYYY-MM-DD') FROM usage WHERE customer_id = ${custA}`);
  await page.fill('#usage-to', before); // a period before A's first request: no usage of any model
  await page.waitForFunction(() => window.tgCharts['chart-cost'] && !document.querySelector('#usage-totals').dataset.range.endsWith('infinity'));
  assert.equal(await page.locator('#usage-model').inputValue(), MODEL);
  assert.equal(await page.locator('#usage-totals').getAttribute('data-filter'), `day||${MODEL}`);
  assert.equal(await text(page, '#usage-totals td[data-col=requests]'), '0');
  assert.deepEqual(problems, []);
  await ctx.close();
});

test('revoking the key you signed in with signs you out, saying why, with no refused call', { timeout: 60000 }, async () => {
  const key = lastLine(ctl('key', 'create', '--customer', A, '--name', 'self-revoke'));
  const { ctx, page, problems } = await newPage();
  await page.goto(`${GW}/dashboard/`);
  await signInWithKey(page, key);
  await page.click('#nav-keys');
  await page.waitForSelector('#keys-table');
  let dialog = '';
  page.once('dialog', d => { dialog = d.message(); d.accept(); });
  await page.click(`button[data-key="${key.slice(0, 15)}"]`);
  await page.waitForSelector('#login:not([hidden])');
  assert.match(dialog, /You signed in with this key/);
  assert.match(await text(page, '#login-error'), /key you signed in with .* is revoked/);
  await waitFor('the API to refuse the revoked key', async () => (await modelsStatus(key)) === 401, 10000);
  assert.deepEqual(problems, []);
  await ctx.close();
});
