// The official OpenAI Node SDK against the gateway of the test stack, the way
// a customer uses it: list models, complete, stream with usage, and get the
// SDK's own error classes for bad keys, unknown models and bad requests.
// Run by `make test-integration` with NODE_EXTRA_CA_CERTS pointing at the
// stack's self-signed certificate.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';

const env = process.env;
const baseURL = env.TG_TEST_GATEWAY + '/v1';
const model = env.TG_TEST_MODEL;
const ctl = env.TG_TEST_BIN + '/tollgatectl';

function newKey() {
  const name = 'sdk-' + Math.random().toString(16).slice(2, 14);
  execFileSync(ctl, ['customer', 'create', name, '--credit-usd', '1.00']);
  const out = execFileSync(ctl, ['key', 'create', '--customer', name]).toString().trim().split('\n');
  return out[out.length - 1].trim();
}

const client = new OpenAI({ apiKey: newKey(), baseURL, maxRetries: 0, timeout: 120000 });
const messages = [{ role: 'user', content: 'Say something about toll roads.' }];

test('models.list shows the served model', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model), ids.join(','));
});

test('chat.completions.create returns text and exact usage', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  const u = r.usage;
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  assert.ok(u.completion_tokens >= 1 && u.completion_tokens <= 8);
  assert.equal(u.prompt_tokens_details.cached_tokens, u.prompt_cache_hit_tokens);
});

test('streaming gives the same text and the usage chunk', async () => {
  const plain = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? '';
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, plain.choices[0].message.content);
  assert.equal(finish, plain.choices[0].finish_reason);
  assert.ok(usage, 'a usage chunk');
  assert.equal(usage.prompt_tokens, plain.usage.prompt_tokens);
  assert.equal(usage.completion_tokens, plain.usage.completion_tokens);
});

test('a bad key is an AuthenticationError', async () => {
  const bad = new OpenAI({ apiKey: 'sk-' + '1'.repeat(48), baseURL, maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model, messages, max_tokens: 1 }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
});

test('an unknown model is a NotFoundError', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'nope', messages, max_tokens: 1 }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
});

test('a bad request is a BadRequestError', async () => {
  await assert.rejects(client.chat.completions.create({ model, messages: 'not a list', max_tokens: 1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400);
});

// ---- issue 10: tools, JSON mode, strict parameters, sampling knobs ----

const tools = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

test('tool_choice required: the SDK gets tool_calls with JSON arguments', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools, tool_choice: 'required',
    max_tokens: 60, temperature: 1, seed: 2,
  });
  const c = r.choices[0];
  assert.equal(c.finish_reason, 'tool_calls');
  assert.ok(c.message.tool_calls.length >= 1);
  for (const tc of c.message.tool_calls) {
    assert.equal(tc.type, 'function');
    assert.ok(['get_weather', 'get_time'].includes(tc.function.name), tc.function.name);
    assert.equal(typeof JSON.parse(tc.function.arguments), 'object');
  }
  // the call goes back into the history with its result, and the model answers
  const r2 = await client.chat.completions.create({
    model, max_tokens: 4, temperature: 0, tools, tool_choice: 'none',
    messages: [{ role: 'user', content: 'Weather in Paris?' }, c.message,
      ...c.message.tool_calls.map((tc) => ({ role: 'tool', tool_call_id: tc.id, content: '{"temp": 21}' }))],
  });
  assert.equal(r2.choices[0].message.tool_calls, undefined);
  assert.ok(r2.usage.prompt_tokens > r.usage.prompt_tokens);
});

test('a named tool streams as one tool_calls delta (SDK stream helper)', async () => {
  const stream = client.chat.completions.stream({
    model, messages: [{ role: 'user', content: 'Time?' }], tools,
    tool_choice: { type: 'function', function: { name: 'get_time' } }, max_tokens: 40, temperature: 1, seed: 4,
  });
  const done = await stream.finalChatCompletion();
  const c = done.choices[0];
  assert.equal(c.finish_reason, 'tool_calls');
  assert.deepEqual(c.message.tool_calls.map((t) => t.function.name), ['get_time']);
  assert.equal(typeof JSON.parse(c.message.tool_calls[0].function.arguments), 'object');
});

test('JSON mode: the demo model (random weights) answers JSON that parses, finish_reason stop', async () => {
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Reply in JSON.' }], response_format: { type: 'json_object' },
      max_tokens: 24, temperature: 1, seed,
    });
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.equal(typeof JSON.parse(r.choices[0].message.content), 'object');
  }
});

test('an unknown parameter is a BadRequestError naming it', async () => {
  await assert.rejects(client.chat.completions.create({ model, messages, max_tokens: 1, foo: 1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'foo' &&
      e.error.message === 'Unrecognized request argument supplied: foo');
});

test('seed repeats, stop cuts, logprobs come back', async () => {
  const ask = (extra) => client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 1, ...extra });
  const a = await ask({ seed: 11 });
  const b = await ask({ seed: 11 });
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  const full = a.choices[0].message.content;
  assert.ok(full.length >= 4, full);
  const cut = full.slice(2, 4);
  const s = await ask({ seed: 11, stop: [cut] });
  assert.equal(s.choices[0].message.content, full.slice(0, full.indexOf(cut)));
  assert.equal(s.choices[0].finish_reason, 'stop');
  const lp = await ask({ seed: 11, max_tokens: 1, logprobs: true, top_logprobs: 2 });
  assert.equal(lp.choices[0].logprobs.content.length, 1);
});
