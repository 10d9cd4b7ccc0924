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

test("DeepSeek's base_url, the root without /v1: models, chat plain and streamed", async () => {
  const root = new OpenAI({ apiKey: client.apiKey, baseURL: env.TG_TEST_GATEWAY, maxRetries: 0, timeout: 120000 });
  const ids = [];
  for await (const m of root.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model), ids.join(','));
  assert.equal((await root.models.retrieve(model)).id, model);
  const r = await root.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0 });
  const v1 = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0 });
  assert.equal(r.choices[0].message.content, v1.choices[0].message.content);
  const stream = await root.chat.completions.create({
    model, messages, max_tokens: 4, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, r.choices[0].message.content);
  assert.equal(usage.completion_tokens, r.usage.completion_tokens);
});

test('a bad key is an AuthenticationError', async () => {
  const bad = new OpenAI({ apiKey: 'sk-' + '1'.repeat(48), baseURL, maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model, messages, max_tokens: 1 }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
});

test('an unknown model is a NotFoundError', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'nope', messages, max_tokens: 1 }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found' && e.param === null);
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

// ---- issue 10, second part: json_schema, JSON or a tool call, no raw tool markers ----

const person = {
  type: 'object',
  properties: {
    name: { type: 'string' },
    age: { type: 'integer' },
    kind: { enum: ['human', 'robot'] },
    tags: { type: 'array', items: { type: 'string' } },
    address: { type: 'object', properties: { city: { type: 'string' }, zip: { type: ['string', 'null'] } },
      required: ['city'], additionalProperties: false },
    note: { type: 'string' },
  },
  required: ['name', 'age', 'kind', 'tags', 'address'],
  additionalProperties: false,
};

// the schema above, checked by hand (the subset the server enforces)
function checkPerson(v) {
  const keys = Object.keys(v);
  assert.ok(keys.every((k) => k in person.properties), 'unknown member in ' + JSON.stringify(v));
  for (const k of person.required) assert.ok(k in v, k + ' missing in ' + JSON.stringify(v));
  assert.equal(typeof v.name, 'string');
  assert.ok(Number.isInteger(v.age), 'age ' + v.age);
  assert.ok(['human', 'robot'].includes(v.kind), v.kind);
  assert.ok(Array.isArray(v.tags) && v.tags.every((t) => typeof t === 'string'));
  assert.equal(typeof v.address.city, 'string');
  assert.ok(Object.keys(v.address).every((k) => k === 'city' || k === 'zip'));
  if ('zip' in v.address) assert.ok(v.address.zip === null || typeof v.address.zip === 'string');
  if ('note' in v) assert.equal(typeof v.note, 'string');
}

test('json_schema: answers that finish with stop validate against the schema (plain and streamed)', async () => {
  const response_format = { type: 'json_schema', json_schema: { name: 'person', strict: true, schema: person } };
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Describe a person.' }], response_format,
      max_tokens: 90, temperature: 1, seed,
    });
    assert.equal(r.choices[0].finish_reason, 'stop');
    checkPerson(JSON.parse(r.choices[0].message.content));
  }
  const stream = client.chat.completions.stream({
    model, messages: [{ role: 'user', content: 'Describe a person.' }], response_format,
    max_tokens: 90, temperature: 1, seed: 9,
  });
  const done = await stream.finalChatCompletion();
  assert.equal(done.choices[0].finish_reason, 'stop');
  checkPerson(JSON.parse(done.choices[0].message.content));
});

test('json_schema: unsupported keywords are a BadRequestError naming them', async () => {
  await assert.rejects(client.chat.completions.create({
    model, messages, max_tokens: 4,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: {
      type: 'object', properties: { age: { type: 'integer', contains: 2 }, s: { type: 'string', pattern: 'a+' } } } } },
  }), (e) => e instanceof OpenAI.BadRequestError && e.status === 400 &&
    e.param === 'response_format.json_schema.schema' && e.message.includes("'contains', 'pattern'") &&
    e.message.includes('properties.age'));
});

test('json_schema: ranges and lengths as zod v4 writes them hold in every answer', async () => {
  // z.object({ id: z.int(), age: z.int().min(18).max(120), score: z.number().positive().max(1),
  //   tags: z.array(z.string().min(1).max(3)).min(2).max(4), at: z.iso.date() without its pattern })
  const schema = {
    $schema: 'https://json-schema.org/draft/2020-12/schema', type: 'object', additionalProperties: false,
    required: ['id', 'age', 'score', 'tags', 'day'],
    properties: {
      id: { type: 'integer', minimum: -9007199254740991, maximum: 9007199254740991 },
      age: { type: 'integer', minimum: 18, maximum: 120 },
      score: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
      tags: { type: 'array', items: { type: 'string', minLength: 1, maxLength: 3 }, minItems: 2, maxItems: 4 },
      day: { type: 'string', format: 'date' },
    },
  };
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Bounded' }], max_tokens: 200, temperature: 1.2, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'b', strict: true, schema } },
    });
    const v = JSON.parse(r.choices[0].message.content);
    assert.ok(Number.isInteger(v.age) && v.age >= 18 && v.age <= 120, r.choices[0].message.content);
    assert.ok(v.score > 0 && v.score <= 1, r.choices[0].message.content);
    assert.ok(Number.isInteger(v.id) && Math.abs(v.id) <= 9007199254740991);
    assert.ok(v.tags.length >= 2 && v.tags.length <= 4 && v.tags.every((t) => [...t].length >= 1 && [...t].length <= 3));
    assert.match(v.day, /^\d{4}-\d\d-\d\d$/);
    assert.equal(new Date(v.day + 'T00:00:00Z').toISOString().slice(0, 10), v.day); // a real day
  }
});

test('json_schema: zod v4 dates, date-times and uuids (format and pattern, as zodResponseFormat sends them)', async () => {
  // z.object({ at: z.iso.datetime(), uid: z.uuid(), day: z.iso.date() }) through openai/helpers/zod
  // with zod 4.6.7, verbatim: every answer matches zod's own patterns
  const schema = JSON.parse(String.raw`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"at":{"type":"string","format":"date-time","pattern":"^(?:(?:\\d\\d[2468][048]|\\d\\d[13579][26]|\\d\\d0[48]|[02468][048]00|[13579][26]00)-02-29|\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|(?:02)-(?:0[1-9]|1\\d|2[0-8])))T(?:(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d+)?(?:Z))$"},"uid":{"type":"string","format":"uuid","pattern":"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$"},"day":{"type":"string","format":"date","pattern":"^(?:(?:\\d\\d[2468][048]|\\d\\d[13579][26]|\\d\\d0[48]|[02468][048]00|[13579][26]00)-02-29|\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|(?:02)-(?:0[1-9]|1\\d|2[0-8])))$"}},"required":["at","uid","day"],"additionalProperties":false}`);
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'When and which' }], max_tokens: 120, temperature: 1.2, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'x', strict: true, schema } },
    });
    const v = JSON.parse(r.choices[0].message.content);
    for (const k of ['at', 'uid', 'day']) {
      assert.match(v[k], new RegExp(schema.properties[k].pattern), `${k}: ${r.choices[0].message.content}`);
    }
    assert.ok(!Number.isNaN(Date.parse(v.at)));
  }
});

test('json_schema: zod v4 times, emails, hostnames, ips, durations, multipleOf (as zodResponseFormat sends them)', async () => {
  // z.object({ at: z.iso.time(), mail: z.email(), host: z.hostname(), ip: z.ipv4(), ip6: z.ipv6(),
  //   took: z.iso.duration(), qty: z.number().multipleOf(0.5) }), z.toJSONSchema with zod 4.6.7, verbatim:
  // every answer matches zod's own patterns (z.iso.time() sends a pattern and no format: a time of day
  // without offset)
  const schema = JSON.parse(String.raw`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"at":{"type":"string","pattern":"^(?:[01]\\d|2[0-3]):[0-5]\\d(?::[0-5]\\d(?:\\.\\d+)?)?$"},"mail":{"type":"string","format":"email","pattern":"^(?:[A-Za-z0-9_'+\\-]+\\.)*[A-Za-z0-9_'+\\-]*[A-Za-z0-9_+-]@(?:[A-Za-z0-9][A-Za-z0-9\\-]*\\.)+[A-Za-z]{2,}$"},"host":{"type":"string","format":"hostname","pattern":"^(?=.{1,253}\\.?$)[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\\.[a-zA-Z0-9](?:[-0-9a-zA-Z]{0,61}[0-9a-zA-Z])?)*\\.?$"},"ip":{"type":"string","format":"ipv4","pattern":"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])$"},"ip6":{"type":"string","format":"ipv6","pattern":"^(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:((:[0-9a-fA-F]{1,4}){1,6})|:((:[0-9a-fA-F]{1,4}){1,7}|:))$"},"took":{"type":"string","format":"duration","pattern":"^P(?:(\\d+W)|(?!.*W)(?=\\d|T\\d)(\\d+Y)?(\\d+M)?(\\d+D)?(T(?=\\d)(\\d+H)?(\\d+M)?(\\d+([.,]\\d+)?S)?)?)$"},"qty":{"type":"number","multipleOf":0.5}},"required":["at","mail","host","ip","ip6","took","qty"],"additionalProperties":false}`);
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Where and when' }], max_tokens: 200, temperature: 1.2, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'x', strict: true, schema } },
    });
    const t = r.choices[0].message.content, v = JSON.parse(t);
    for (const k of ['at', 'mail', 'host', 'ip', 'ip6', 'took']) {
      assert.match(v[k], new RegExp(schema.properties[k].pattern), `${k}: ${t}`);
    }
    assert.ok(Number.isFinite(v.qty) && Number.isInteger(v.qty * 2), t);
  }
});

test('json_schema: zod v4 tuples and records (draft 7 items array, additionalProperties a schema)', async () => {
  // z.object({ pair: z.tuple([z.string(), z.number()]), scores: z.record(z.string(), z.number()) }),
  // z.toJSONSchema with zod 4.6.7 (target draft-7), verbatim; strict: false (OpenAI's strict mode wants
  // additionalProperties false everywhere, so a record is a non-strict schema)
  const schema = JSON.parse(String.raw`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"pair":{"type":"array","items":[{"type":"string"},{"type":"number"}],"additionalItems":false,"minItems":2,"maxItems":2},"scores":{"type":"object","propertyNames":{"type":"string"},"additionalProperties":{"type":"number"}}},"required":["pair","scores"],"additionalProperties":false}`);
  let members = 0;
  for (const seed of [1, 2, 3, 4]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Pairs and scores' }], max_tokens: 80, temperature: 1.2, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'x', strict: false, schema } },
    });
    const t = r.choices[0].message.content, v = JSON.parse(t);
    assert.deepEqual(Object.keys(v), ['pair', 'scores'], t);
    assert.ok(Array.isArray(v.pair) && v.pair.length === 2 && typeof v.pair[0] === 'string' &&
      typeof v.pair[1] === 'number', t);
    assert.ok(v.scores && typeof v.scores === 'object' && !Array.isArray(v.scores), t);
    for (const [k, x] of Object.entries(v.scores)) assert.ok(k.length > 0 && typeof x === 'number', t);
    members += Object.keys(v.scores).length;
  }
  await assert.rejects(client.chat.completions.create({
    model, messages, max_tokens: 4,
    tools: [{ type: 'function', function: { name: 'f', strict: true, parameters: schema } }],
  }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'tools[0].function.parameters' &&
    e.message.includes('additionalProperties'));
});

// ---- strict function tools: every call's arguments follow its function's parameters ----

const alarm = {
  type: 'object', additionalProperties: false, required: ['at', 'days', 'label', 'snooze'],
  properties: {
    at: { type: 'object', additionalProperties: false, required: ['hour', 'minute'],
      properties: { hour: { type: 'integer' }, minute: { type: 'integer' } } },
    days: { type: 'array', items: { type: 'string', enum: ['mon', 'tue', 'sat', 'sun'] } },
    label: { type: ['string', 'null'] },
    snooze: { anyOf: [{ type: 'integer' }, { type: 'null' }] },
  },
};
const strictTools = [
  { type: 'function', function: { name: 'set_alarm', strict: true, parameters: alarm } },
  { type: 'function', function: { name: 'ping', strict: true,
    parameters: { type: 'object', properties: {}, required: [], additionalProperties: false } } },
];

// written here, apart from the server's compiler
function checkStrictCall(tc) {
  const v = tc.function.parsed_arguments ?? JSON.parse(tc.function.arguments);
  if (tc.function.name === 'ping') return assert.deepEqual(v, {});
  assert.equal(tc.function.name, 'set_alarm');
  assert.deepEqual(Object.keys(v), ['at', 'days', 'label', 'snooze'], tc.function.arguments);
  assert.deepEqual(Object.keys(v.at), ['hour', 'minute']);
  assert.ok(Number.isInteger(v.at.hour) && Number.isInteger(v.at.minute), tc.function.arguments);
  assert.ok(Array.isArray(v.days) && v.days.every((d) => ['mon', 'tue', 'sat', 'sun'].includes(d)));
  assert.ok(v.label === null || typeof v.label === 'string');
  assert.ok(v.snooze === null || Number.isInteger(v.snooze));
}

test('strict tools: every call validates against its parameters (parse, plain and streamed)', async () => {
  let calls = 0;
  for (const seed of [1, 2, 3]) {
    // chat.completions.parse parses the arguments of strict function tools (parsed_arguments)
    const r = await client.chat.completions.parse({
      model, messages: [{ role: 'user', content: 'Wake me up on weekends.' }], tools: strictTools,
      tool_choice: 'required', max_tokens: 300, temperature: 1, seed,
    });
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    for (const tc of r.choices[0].message.tool_calls) {
      assert.notEqual(tc.function.parsed_arguments, undefined);
      checkStrictCall(tc);
      calls++;
    }
  }
  const stream = client.chat.completions.stream({
    model, messages: [{ role: 'user', content: 'Alarm?' }], tools: strictTools,
    tool_choice: { type: 'function', function: { name: 'set_alarm' } }, max_tokens: 300, temperature: 1, seed: 7,
  });
  const done = await stream.finalChatCompletion();
  assert.equal(done.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(done.choices[0].message.tool_calls.map((t) => t.function.name), ['set_alarm']);
  checkStrictCall(done.choices[0].message.tool_calls[0]);
  assert.ok(calls >= 3);
});

test('strict tools: a schema strict mode cannot take is a BadRequestError naming the parameters', async () => {
  const optional = { ...alarm, required: ['at', 'days'] }; // label, snooze optional: strict needs all required
  await assert.rejects(client.chat.completions.create({
    model, messages, max_tokens: 4,
    tools: [strictTools[1], { type: 'function', function: { name: 'set_alarm', strict: true, parameters: optional } }],
  }), (e) => e instanceof OpenAI.BadRequestError && e.status === 400 &&
    e.param === 'tools[1].function.parameters' && e.message.includes("'required'"));
  // the same schema without strict: accepted
  const r = await client.chat.completions.create({
    model, messages, max_tokens: 4,
    tools: [{ type: 'function', function: { name: 'set_alarm', parameters: optional } }],
  });
  assert.equal(r.object, 'chat.completion');
});

// DeepSeek-V3's tool markers (<｜tool▁calls▁begin｜> ... <｜tool▁sep｜>): ids 128806-128814 of its tokenizer
const markers = Array.from({ length: 9 }, (_, i) => 128806 + i);
const pushAll = Object.fromEntries(markers.map((id) => [String(id), 100]));

test('json_object with tools and tool_choice auto: a tool call or a JSON answer, each whole', async () => {
  const ask = (bias, seed) => client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Weather in Paris, as JSON?' }], tools, tool_choice: 'auto',
    response_format: { type: 'json_object' }, max_tokens: 60, temperature: 1, seed, logit_bias: bias,
  });
  // the model reaching for the block (its opener pushed): a tool call
  const call = await ask({ 128806: 100 }, 1);
  assert.equal(call.choices[0].finish_reason, 'tool_calls');
  for (const tc of call.choices[0].message.tool_calls) {
    assert.ok(['get_weather', 'get_time'].includes(tc.function.name));
    assert.equal(typeof JSON.parse(tc.function.arguments), 'object');
  }
  // the opener pushed away: a JSON answer
  const json = await ask({ 128806: -100 }, 2);
  assert.equal(json.choices[0].finish_reason, 'stop');
  assert.equal(json.choices[0].message.tool_calls, undefined);
  assert.equal(typeof JSON.parse(json.choices[0].message.content), 'object');
  // left to the model: one or the other
  for (const seed of [3, 4, 5]) {
    const r = await ask(undefined, seed);
    const c = r.choices[0];
    if (c.finish_reason === 'tool_calls') assert.ok(c.message.tool_calls.length >= 1);
    else {
      assert.equal(c.finish_reason, 'stop');
      assert.equal(typeof JSON.parse(c.message.content), 'object');
    }
  }
});

test('no raw tool markers in text, even when the model is pushed to them', async () => {
  const bad = /\uFF5Ctool\u2581/; // "｜tool▁"
  const plain = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 1, seed: 5, logit_bias: pushAll,
  });
  assert.ok(!bad.test(plain.choices[0].message.content), plain.choices[0].message.content);
  assert.ok(plain.usage.completion_tokens >= 1);
  const none = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 1, seed: 5, logit_bias: pushAll, tools, tool_choice: 'none',
  });
  assert.ok(!bad.test(none.choices[0].message.content), none.choices[0].message.content);
  assert.equal(none.choices[0].message.tool_calls, undefined);
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 1, seed: 6, logit_bias: pushAll, stream: true,
  });
  let text = '';
  for await (const chunk of stream) if (chunk.choices.length) text += chunk.choices[0].delta.content ?? '';
  assert.ok(!bad.test(text), text);
  // with tools (auto) the markers other than the opener never show either: pushed, the opener starts a call
  const auto = await client.chat.completions.create({
    model, messages, max_tokens: 60, temperature: 1, seed: 7, logit_bias: pushAll, tools,
  });
  assert.ok(!bad.test(auto.choices[0].message.content ?? ''), auto.choices[0].message.content);
  assert.equal(auto.choices[0].finish_reason, 'tool_calls');
});

test('n choices: each sampled on its own, usage summed, streamed with each choice index', async () => {
  const ask = (extra) => client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 1, seed: 21, ...extra });
  const one = await ask({});
  const three = await ask({ n: 3 });
  assert.deepEqual(three.choices.map((c) => c.index), [0, 1, 2]);
  assert.equal(three.choices[0].message.content, one.choices[0].message.content, 'choice 0 is the n = 1 answer');
  assert.ok(new Set(three.choices.map((c) => c.message.content)).size > 1, 'choices are sampled apart');
  assert.equal(three.usage.prompt_tokens, one.usage.prompt_tokens, 'the prompt counts once');
  assert.equal(three.usage.completion_tokens, 3 * 6, 'completion tokens summed over choices (all cut at 6)');
  for (const c of three.choices) assert.equal(c.finish_reason, 'length');
  const stream = await ask({ n: 3, stream: true, stream_options: { include_usage: true } });
  const texts = ['', '', ''];
  const finish = [null, null, null];
  let usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      texts[c.index] += c.delta.content ?? '';
      finish[c.index] = c.finish_reason ?? finish[c.index];
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.deepEqual(texts, three.choices.map((c) => c.message.content));
  assert.deepEqual(finish, ['length', 'length', 'length']);
  assert.deepEqual(usage.completion_tokens, three.usage.completion_tokens);
  await assert.rejects(ask({ n: 17 }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'n');
});

test('json_schema as Pydantic writes a model ($defs, $ref, Optional as anyOf with null) validates', async () => {
  const schema = {
    $defs: { Address: { type: 'object', title: 'Address', required: ['city', 'zip'],
      properties: { city: { type: 'string', title: 'City' },
        zip: { anyOf: [{ type: 'string' }, { type: 'null' }], default: null, title: 'Zip' } } } },
    type: 'object', title: 'Person', required: ['name', 'home', 'pets'],
    properties: { name: { type: 'string' }, home: { $ref: '#/$defs/Address' },
      pets: { anyOf: [{ type: 'array', items: { type: 'string' } }, { type: 'null' }] } },
  };
  for (const seed of [1, 2]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'A person.' }], max_tokens: 80, temperature: 1, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'Person', schema } },
    });
    assert.equal(r.choices[0].finish_reason, 'stop');
    const v = JSON.parse(r.choices[0].message.content);
    assert.deepEqual(Object.keys(v), ['name', 'home', 'pets']);
    assert.equal(typeof v.name, 'string');
    assert.deepEqual(Object.keys(v.home), ['city', 'zip']);
    assert.equal(typeof v.home.city, 'string');
    assert.ok(v.home.zip === null || typeof v.home.zip === 'string');
    assert.ok(v.pets === null || (Array.isArray(v.pets) && v.pets.every((p) => typeof p === 'string')));
  }
});

// ---- conformance audit: what SDKs and their users send ----

// stop strings the demo model writes within a few tokens, so a request without a cap ends soon
const soon = [' ', 'e', 'a', '\u7684'];

test('max_tokens: null (an unset cap, as SDK users pass it) is no cap, plain and streamed', async () => {
  const r = await client.chat.completions.create({ model, messages, max_tokens: null, stop: soon, temperature: 0 });
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.completion_tokens >= 1);
  // streamed, the gateway also rewrites stream_options: the cap goes in beside it
  const base = { model, messages, stop: soon, temperature: 0, stream: true };
  for (const body of [{ ...base, max_tokens: null }, { ...base, max_tokens: null, stream_options: null },
    { ...base, stream_options: { include_usage: false }, max_tokens: null }]) {
    const s = await client.chat.completions.create(body);
    let finish = null;
    for await (const chunk of s) for (const c of chunk.choices) finish = c.finish_reason ?? finish;
    assert.ok(['stop', 'length'].includes(finish), String(finish));
  }
});

test('stop takes up to 16 strings (DeepSeek), each honoured; 17 is a BadRequestError on stop', async () => {
  const ask = (extra) => client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 1, seed: 11, ...extra });
  const full = (await ask({})).choices[0].message.content;
  assert.ok(full.length >= 4, full);
  const cut = full.slice(2, 4);
  const others = Array.from({ length: 15 }, (_, i) => '\u0001never' + i);
  for (const o of others) assert.ok(!full.includes(o));
  const s = await ask({ stop: [...others, cut] }); // the one that matches last of the 16
  assert.equal(s.choices[0].message.content, full.slice(0, full.indexOf(cut)));
  assert.equal(s.choices[0].finish_reason, 'stop');
  await assert.rejects(ask({ stop: [...others, cut, 'x'] }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'stop');
});

test('x-ratelimit-* headers: remaining never above the limit, retry-after on 429 (RateLimitError)', async () => {
  const name = 'sdk-rl-' + Math.random().toString(16).slice(2, 14);
  execFileSync(ctl, ['customer', 'create', name, '--credit-usd', '1.00']);
  const out = execFileSync(ctl, ['key', 'create', '--customer', name, '--rpm', '1', '--tpm', '100000']).toString();
  const c = new OpenAI({ apiKey: out.trim().split('\n').pop().trim(), baseURL, maxRetries: 0, timeout: 120000 });
  const check = (h) => {
    for (const k of ['requests', 'tokens']) {
      const lim = Number(h.get('x-ratelimit-limit-' + k));
      const rem = Number(h.get('x-ratelimit-remaining-' + k));
      assert.ok(Number.isInteger(lim) && Number.isInteger(rem) && rem >= 0 && rem <= lim, `${k}: ${rem} of ${lim}`);
    }
  };
  const { response } = await c.chat.completions.create({ model, messages, max_tokens: 2 }).withResponse();
  check(response.headers);
  // the token bucket drains meanwhile (the tokens a lease holds were charged when it was granted)
  await new Promise((res) => setTimeout(res, 300));
  await assert.rejects(c.chat.completions.create({ model, messages, max_tokens: 2 }), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError && e.status === 429, String(e));
    assert.equal(e.code, 'rate_limit_exceeded');
    assert.ok(Number(e.headers.get('retry-after')) >= 1);
    check(e.headers);
    return true;
  });
  const models = await c.models.list().withResponse();
  check(models.response.headers);
});

test('parameters of the pinned SDK types: cache hints and stream_options.include_obfuscation accepted', async () => {
  const r = await client.chat.completions.create({
    model, messages, max_tokens: 2, prompt_cache_key: 'k1', prompt_cache_retention: '24h',
    prompt_cache_options: { ttl: '30m' }, safety_identifier: 'u-1', user: 'u-1',
  });
  assert.equal(r.usage.completion_tokens, 2);
  const s = await client.chat.completions.create({
    model, messages, max_tokens: 2, stream: true, stream_options: { include_usage: true, include_obfuscation: false },
  });
  let usage = null;
  for await (const chunk of s) if (chunk.usage) usage = chunk.usage;
  assert.equal(usage.completion_tokens, 2);
  await assert.rejects(client.chat.completions.create({ model, messages, max_tokens: 2, moderation: { model: 'x' } }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'moderation' && e.code === 'unsupported_parameter');
});

// ---- conformance audit 2: streams, tool deltas, JSON mode, what SDK users echo back ----

test('stream chunks as OpenAI sends them: same id/created/model, role first, finish last, usage fields', async () => {
  const s = await client.chat.completions.create({
    model, messages, max_tokens: 4, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const c of s) chunks.push(c);
  const body = chunks.slice(0, -1);
  const last = chunks[chunks.length - 1];
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.deepEqual([c.id, c.created, c.model], [chunks[0].id, chunks[0].created, model]);
  }
  assert.equal(body[0].choices[0].delta.role, 'assistant');
  assert.deepEqual(body.map((c) => c.choices[0].finish_reason), [...Array(body.length - 1).fill(null), 'length']);
  for (const c of body) assert.equal(c.usage, null, 'include_usage: "usage": null on the other chunks');
  assert.deepEqual(last.choices, []);
  const u = last.usage;
  assert.equal(u.completion_tokens, 4);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  assert.equal(u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens, u.prompt_tokens);
  assert.equal(u.prompt_tokens_details.cached_tokens, u.prompt_cache_hit_tokens);
  assert.equal(u.completion_tokens_details.reasoning_tokens, 0);
  // not asked for: no usage chunk and no "usage" member at all (the gateway asks the worker for
  // usage, which then writes "usage":null in every chunk: that member is cut on the way)
  const plain = await client.chat.completions.create({ model, messages, max_tokens: 3, temperature: 0, stream: true });
  for await (const c of plain) {
    assert.ok(c.choices.length, 'no usage-only chunk');
    assert.ok(!('usage' in c), JSON.stringify(c));
  }
});

test('a required tool call streams as a tool_calls delta (index, id, type, function) and goes back whole', async () => {
  const ask = { model, messages: [{ role: 'user', content: 'Weather in Oslo?' }], tools, tool_choice: 'required',
    parallel_tool_calls: false, max_tokens: 60, temperature: 1, seed: 3 };
  const s = await client.chat.completions.create({ ...ask, stream: true });
  const calls = [];
  let finish = null;
  let role = null;
  for await (const c of s) {
    const ch = c.choices[0];
    if (!ch) continue;
    role = role ?? ch.delta.role;
    for (const tc of ch.delta.tool_calls ?? []) {
      if (tc.id) calls[tc.index] = { id: tc.id, type: tc.type, name: tc.function.name, arguments: '' };
      calls[tc.index].arguments += tc.function.arguments ?? '';
    }
    finish = ch.finish_reason ?? finish;
  }
  assert.equal(role, 'assistant');
  assert.equal(finish, 'tool_calls');
  assert.equal(calls.length, 1, 'parallel_tool_calls false: one call');
  assert.equal(calls[0].type, 'function');
  assert.ok(calls[0].id.startsWith('call_'), calls[0].id);
  assert.ok(['get_weather', 'get_time'].includes(calls[0].name), calls[0].name);
  assert.equal(typeof JSON.parse(calls[0].arguments), 'object');
  // the same call answered plainly is the same call
  const plain = await client.chat.completions.create(ask);
  const pc = plain.choices[0].message.tool_calls;
  assert.deepEqual(pc.map((t) => [t.function.name, t.function.arguments]), [[calls[0].name, calls[0].arguments]]);
  // fed back, as SDK users write the history (OpenAI's null function_call and audio included)
  const assistant = { role: 'assistant', content: null, function_call: null, audio: null, refusal: null,
    tool_calls: calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } })) };
  const r = await client.chat.completions.create({
    model, max_tokens: 2, temperature: 0, tools, messages: [...ask.messages, assistant,
      { role: 'tool', tool_call_id: calls[0].id, content: '{"temp": -3}' }],
  });
  assert.ok(r.usage.prompt_tokens > plain.usage.prompt_tokens);
  // a call of another type is refused, naming it
  await assert.rejects(client.chat.completions.create({
    model, max_tokens: 2, tools, messages: [...ask.messages,
      { ...assistant, tool_calls: [{ ...assistant.tool_calls[0], type: 'custom' }] },
      { role: 'tool', tool_call_id: calls[0].id, content: 'x' }],
  }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages[1].tool_calls[0].type');
});

test('JSON mode needs no "json" in the prompt: the answer is grammar-constrained, plain and streamed', async () => {
  const ask = { model, messages: [{ role: 'user', content: 'Describe a cat.' }], response_format: { type: 'json_object' },
    max_tokens: 20, temperature: 1, seed: 8 };
  const r = await client.chat.completions.create(ask);
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(typeof JSON.parse(r.choices[0].message.content), 'object');
  const s = client.chat.completions.stream(ask);
  const done = await s.finalChatCompletion();
  assert.equal(done.choices[0].message.content, r.choices[0].message.content);
  await assert.rejects(client.chat.completions.create({ ...ask, response_format: { type: 'yaml' } }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format.type');
});

test('DeepSeek chat prefix completion on /beta: the answer continues the prefix, as the same text completed', async () => {
  const beta = new OpenAI({ apiKey: client.apiKey, baseURL: env.TG_TEST_GATEWAY + '/beta', maxRetries: 0, timeout: 120000 });
  const messages = [{ role: 'user', content: 'Please write quick sort code' },
    { role: 'assistant', content: '```python\n', prefix: true }];
  const r = await beta.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0, stop: ['```'] });
  const c = await client.completions.create({
    model, prompt: '<\uff5cUser\uff5c>Please write quick sort code<\uff5cAssistant\uff5c>```python\n', max_tokens: 6,
    temperature: 0, stop: ['```'] });
  assert.equal(r.choices[0].message.content, c.choices[0].text);
  assert.equal(r.usage.prompt_tokens, c.usage.prompt_tokens);
  // a prefix that is not the last message is named
  await assert.rejects(beta.chat.completions.create({ model, messages: [messages[1], messages[0]], max_tokens: 2 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages[0].prefix');
});

test('completions.create (legacy completions and DeepSeek FIM on /beta): text, stream, suffix, usage', async () => {
  const ask = { model, prompt: 'def fibonacci(n):\n    ', max_tokens: 6, temperature: 0 };
  const r = await client.completions.create(ask);
  assert.equal(r.object, 'text_completion');
  assert.ok(r.id.startsWith('cmpl-'));
  assert.equal(r.choices.length, 1);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 6);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 6);
  // streamed: the same text, the usage chunk last
  const s = await client.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of s) {
    assert.equal(chunk.object, 'text_completion');
    if (chunk.choices.length) {
      text += chunk.choices[0].text;
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, r.choices[0].text);
  assert.equal(finish, 'length');
  assert.equal(usage.prompt_tokens, r.usage.prompt_tokens);
  assert.equal(usage.completion_tokens, 6);
  // fill in the middle, as DeepSeek's docs call it: base_url .../beta
  const beta = new OpenAI({ apiKey: client.apiKey, baseURL: env.TG_TEST_GATEWAY + '/beta', maxRetries: 0, timeout: 120000 });
  const f = await beta.completions.create({ ...ask, suffix: '\n    return a' });
  assert.equal(f.object, 'text_completion');
  assert.equal(f.usage.prompt_tokens, r.usage.prompt_tokens + 3 + 4, 'FIM begin, hole, end and the suffix (4 tokens)');
  const fs = await beta.completions.create({ ...ask, suffix: '\n    return a', stream: true });
  let ftext = '';
  for await (const chunk of fs) ftext += chunk.choices[0]?.text ?? '';
  assert.equal(ftext, f.choices[0].text);
  // legacy logprobs
  const lp = await client.completions.create({ ...ask, max_tokens: 3, logprobs: 2 });
  assert.equal(lp.choices[0].logprobs.tokens.join(''), lp.choices[0].text);
  assert.equal(lp.choices[0].logprobs.top_logprobs.length, 3);
  await assert.rejects(client.completions.create({ ...ask, prompt: ['a', 'b'] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'prompt');
});

// ---- session 14: hostile schemas, each a BadRequestError naming the field or an answer that validates ----

test('hostile schemas: a BadRequestError naming the field, or an answer JavaScript reads valid', async () => {
  const obj = (properties) => ({ type: 'object', properties, required: Object.keys(properties), additionalProperties: false });
  let deep = { type: 'string' };
  for (let i = 0; i < 1000; i++) deep = obj({ a: deep });
  const refused = {
    deep_1000: deep,
    recursive_ref: { ...obj({ n: { $ref: '#/$defs/N' } }), $defs: { N: obj({ n: { $ref: '#/$defs/N' } }) } },
    enum_10000: obj({ e: { enum: Array.from({ length: 10000 }, (_, i) => 'v' + i) } }),
    items_false_minItems: obj({ a: { type: 'array', items: false, minItems: 1 } }),
    pattern: obj({ p: { type: 'string', pattern: '^(a+)+$' } }),
    minLength_int32: obj({ s: { type: 'string', minLength: 2 ** 31 - 1 } }),
    anyOf_100: obj({ u: { anyOf: Array.from({ length: 100 }, (_, i) => obj({ ['k' + i]: { type: 'integer' } })) } }),
  };
  for (const [name, schema] of Object.entries(refused)) {
    await assert.rejects(client.chat.completions.create({
      model, messages, max_tokens: 8,
      response_format: { type: 'json_schema', json_schema: { name: 'h', strict: true, schema } },
    }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format.json_schema.schema', name);
    await assert.rejects(client.chat.completions.create({
      model, messages, max_tokens: 8, tool_choice: 'required',
      tools: [{ type: 'function', function: { name: 'f', strict: true, parameters: schema } }],
    }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'tools[0].function.parameters', name);
  }
  // numbers as JavaScript reads them (doubles): strictly inside exclusive bounds, finite when unbounded
  const nums = obj({ lt1: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1 },
    pos: { type: 'integer', minimum: 1 }, any: { type: 'number' } });
  let stopped = 0;
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Numbers' }], max_tokens: 120, temperature: 1.2, seed,
      response_format: { type: 'json_schema', json_schema: { name: 'n', strict: true, schema: nums } },
    });
    if (r.choices[0].finish_reason !== 'stop') continue;
    stopped++;
    const t = r.choices[0].message.content, v = JSON.parse(t);
    assert.ok(v.lt1 > 0 && v.lt1 < 1, t);
    assert.ok(Number.isInteger(v.pos) && v.pos >= 1 && Number.isFinite(v.pos), t);
    assert.ok(Number.isFinite(v.any), t);
  }
  assert.ok(stopped >= 3, `${stopped} of 6 answers ended with stop`);
});
