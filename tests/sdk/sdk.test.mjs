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
