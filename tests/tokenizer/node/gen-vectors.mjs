// gen-vectors.mjs — dev-time generator of the tokenizer test vectors.
//
// Encodes a deterministic corpus with the reference implementation
// (@huggingface/tokenizers, pinned in package.json) and renders chat
// templates with @huggingface/jinja, writing into tests/tokenizer/vectors/:
//   encode.tsv.gz    hex(text) \t ids (comma-separated)         one string per line
//   decode.tsv.gz    ids \t skip_special(0|1) \t hex(decoded text)
//   chat.jsonl       {"kind","add_generation_prompt","messages","text","ids"}
//
//   usage: node gen-vectors.mjs TOKENIZER_DIR OUT_DIR [--encode-only]
// (--encode-only: just encode.tsv.gz, for checking other byte-level BPE
// tokenizers, e.g. Llama-3's, by hand)
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import fs from "fs";
import zlib from "zlib";

const [dir, outDir, flag] = process.argv.slice(2);
const encodeOnly = flag === "--encode-only";
if (!dir || !outDir) {
  console.error("usage: node gen-vectors.mjs TOKENIZER_DIR OUT_DIR");
  process.exit(2);
}
const tj = JSON.parse(fs.readFileSync(dir + "/tokenizer.json", "utf8"));
const tc = JSON.parse(fs.readFileSync(dir + "/tokenizer_config.json", "utf8"));
const tok = new Tokenizer(tj, tc);

// ---- deterministic PRNG (mulberry32) ----
let seed = 20261128;
function rnd() {
  seed |= 0;
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];

// ---- corpus ----
const english = [
  "The quick brown fox jumps over the lazy dog.",
  "Per-token billing is only honest if our token counts equal the model's.",
  "It's a truth universally acknowledged, isn't it? We'll see; they'd agree, I'm sure.",
  "Mr. O'Neil paid $1,234.56 on 2024-03-15 at 10:45pm (UTC+8) — about 3.5% more.",
  "HELLO world!!! What's up??? ...and then... nothing.",
  "e-mail: jane.doe+test@example.com, URL: https://example.org/a/b?c=d&e=f#g",
  "Don't stop believin'. Hold on to that feelin'.",
  "In 1969, Apollo 11 landed on the Moon; 12 people walked there by 1972.",
  "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
  "  leading spaces, trailing spaces   ",
  "tab\tseparated\tvalues\tand\ttabs",
  "CamelCaseIdentifiers and snake_case_names and SCREAMING_CASE and kebab-case-words",
];
const chinese = [
  "深度求索的大语言模型按词元计费。", "我爱北京天安门，天安门上太阳升。", "今天天气很好，我们去公园散步吧！",
  "人工智能正在改变世界：从医疗到教育，从交通到金融。", "《红楼梦》是中国古典四大名著之一。",
  "价格：每百万词元 2 元（缓存命中 0.5 元）。", "龍鳳呈祥，繁體中文也要支持。", "𠀀𠀁𠮷野家",
];
const japanese = [
  "こんにちは、世界！", "日本語のテキストをトークン化します。", "カタカナとひらがなと漢字が混ざっています。",
  "東京都渋谷区で会議があります。ｶﾀｶﾅ半角もあります。", "ー・ヽヾゝゞ〃々〆〇",
];
const korean = ["안녕하세요, 세계!", "한국어 문장을 토큰화합니다.", "서울특별시 강남구 테헤란로 123", "ㄱㄴㄷㄹ ㅏㅑㅓㅕ 한글"];
const arabic = ["مرحبا بالعالم", "اللغة العربية جميلة جداً.", "السَّلَامُ عَلَيْكُمْ", "١٢٣٤٥٦٧٨٩٠ رقم"];
const cyrillic = ["Привет, мир!", "Съешь же ещё этих мягких французских булок, да выпей чаю.", "Ёжик в тумане", "Україна, Беларусь, Србија"];
const others = [
  "नमस्ते दुनिया", "हिन्दी में लिखा गया वाक्य।", "สวัสดีชาวโลก", "שלום עולם", "Γειά σου Κόσμε",
  "Ελληνικά: αβγδεζηθ ΑΒΓΔ", "ქართული ენა", "Հայերեն", "Tiếng Việt có dấu: Đây là một câu.",
  "Ça va? Où est la bibliothèque? Über, Straße, façade, naïve, coöperate",
  "ᚠᚢᚦᚨᚱᚲ ᚷᚹ", "ኢትዮጵያ", "தமிழ் மொழி", "ಕನ್ನಡ", "বাংলা ভাষা", "ພາສາລາວ", "မြန်မာ", "ខ្មែរ",
];
const code = [
  "#include <stdio.h>\nint main(void) {\n    printf(\"hello, %s\\n\", \"world\");\n    return 0;\n}\n",
  "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "const add = (a, b) => a + b;\nexport default function App() { return <div className=\"x\">{add(1, 2)}</div>; }\n",
  "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
  "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
  "SELECT id, name FROM users WHERE created_at >= '2024-01-01' AND balance > 0 ORDER BY id DESC LIMIT 10;",
  "<!DOCTYPE html>\n<html><head><title>T</title></head><body><p class='a'>x &amp; y</p></body></html>",
  "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
  "public class Main {\r\n  public static void main(String[] args) {\r\n    System.out.println(\"Hi\");\r\n  }\r\n}\r\n",
  "x = [i**2 for i in range(100) if i % 3 == 0]  # squares\n\tindented\t\tmore\n",
  "if (a != b && c <= d || !e) { x += 1; y -= 2; z *= 3; w /= 4; } // ops: ++ -- -> => :: ... ?? ?.",
  "   \n    \n\t\n",
  "\\begin{equation} E = mc^2 \\end{equation} $\\alpha + \\beta_{i}^{2}$",
  "body { margin: 0 auto; color: #ff00ff; } @media (max-width: 600px) { .a > .b ~ .c + .d { } }",
];
const json = [
  '{"model":"deepseek-chat","messages":[{"role":"user","content":"Hi"}],"stream":true}',
  '{"a": [1, 2.5, -3e10, true, false, null], "b": {"c": "d\\u00e9\\n"}}',
  '[{"id":1},{"id":2},{"id":3}]',
  '{\n  "name": "tollgate",\n  "version": "1.0.0",\n  "nested": {\n    "deep": [\n      {}\n    ]\n  }\n}',
];
const emoji = [
  "👨‍👩‍👧‍👦 family", "👍🏻👍🏼👍🏽👍🏾👍🏿", "🏳️‍🌈 🏴‍☠️", "🇺🇸🇯🇵🇨🇳🇩🇪", "❤️‍🔥 ✨🎉🎊", "🧑🏽‍💻 coding", "😀😃😄😁😆😅🤣😂",
  "👩‍❤️‍💋‍👨", "#️⃣ 1️⃣ *️⃣", "🫠🫡🫢🫣", "©️®️™️",
];
const combining = [
  "e\u0301 a\u0300 o\u0308 n\u0303", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319algo",
  "\u0301\u0301 leading marks", "café café", "\u0915\u094d\u0937", "a\u20dd b\u20e3", "\u1100\u1161\u11a8",
];
// every White_Space code point, and other invisible/space-like ones
const wsChars = [
  "\t", "\n", "\u000b", "\f", "\r", " ", "\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002",
  "\u2003", "\u2004", "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029",
  "\u202f", "\u205f", "\u3000", "\u180e", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",
  "\u001c", "\u001d", "\u001e", "\u001f", "\u0000",
];
const specials = [
  "<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜tool▁calls▁begin｜>",
  "<｜tool▁sep｜>", "<|EOT|>", "<｜▁pad▁｜>", "<｜fim▁hole｜>", "<｜place▁holder▁no▁12｜>",
];
const lookalikes = [
  "<|User|>", "<｜User|>", "<｜User｜", "｜User｜>", "< ｜User｜>", "<｜user｜>", "<｜Assistant", "<｜end▁of▁sentence",
  "<｜end_of_sentence｜>", "<|endoftext|>", "<s></s>", "<think></think>", "[INST] [/INST]", "<<SYS>>",
  "<｜place▁holder▁no▁999999｜>", "<｜tool▁call▁begin｜x", "<<｜User｜>>", "<｜｜>",
];
const langs = [english, chinese, japanese, korean, arabic, cyrillic, others, code, json, emoji, combining];
const allText = langs.flat();

// random code points from chosen blocks (no surrogates)
const blocks = [
  [0x20, 0x7e], [0x00, 0x1f], [0x80, 0xff], [0x100, 0x24f], [0x300, 0x36f], [0x370, 0x3ff], [0x400, 0x4ff],
  [0x590, 0x5ff], [0x600, 0x6ff], [0x900, 0x97f], [0xe00, 0xe7f], [0x1100, 0x11ff], [0x1680, 0x16ff],
  [0x1800, 0x18af], [0x2000, 0x206f], [0x2070, 0x209f], [0x20a0, 0x20cf], [0x2100, 0x214f], [0x2190, 0x21ff],
  [0x2200, 0x22ff], [0x2460, 0x24ff], [0x2500, 0x257f], [0x2600, 0x26ff], [0x2700, 0x27bf], [0x3000, 0x303f],
  [0x3040, 0x309f], [0x30a0, 0x30ff], [0x3400, 0x4dbf], [0x4e00, 0x9fff], [0xa000, 0xa4cf], [0xac00, 0xd7a3],
  [0xe000, 0xf8ff], [0xf900, 0xfaff], [0xfb00, 0xfdff], [0xfe00, 0xfe6f], [0xff00, 0xffef], [0xfff0, 0xffff],
  [0x10000, 0x1007f], [0x10400, 0x1044f], [0x1d400, 0x1d7ff], [0x1f000, 0x1faff], [0x20000, 0x2a6df],
  [0xe0000, 0xe007f], [0xf0000, 0xf00ff], [0x10fff0, 0x10ffff], [0x30, 0x39], [0x660, 0x669], [0xff10, 0xff19],
];
function randCp() {
  const [a, b] = pick(blocks);
  return a + ri(b - a + 1);
}
function soup(n) {
  let s = "";
  for (let i = 0; i < n; i++) {
    const r = rnd();
    if (r < 0.15) s += pick(wsChars);
    else if (r < 0.2) s += pick(["\r\n", "\n\n", "\r", "  ", "\t\t"]);
    else if (r < 0.25) s += String(ri(1e6));
    else if (r < 0.3) s += pick(["'s", "'t", "'re", "'LL", "!a", ".b", "-x", "$", "@@", "``", "\\\\", "\"", "'"]);
    else s += String.fromCodePoint(randCp());
  }
  return s;
}

const corpus = [];
const add = (s) => corpus.push(s);
add("");
for (const s of allText) add(s);
for (const c of wsChars) {
  add(c);
  add(c + c + c);
  add("a" + c + "b");
  add("word" + c + " next");
  add(" " + c + "\n" + c + "x");
  add("1" + c + "2" + c + c + "3");
  add(c + "\r\n" + c);
}
for (const s of specials) {
  add(s);
  add("Hello" + s + "world");
  add(" " + s + " ");
  add(s + s);
  add("\n" + s + "\n\n");
}
for (const s of lookalikes) {
  add(s);
  add("text " + s + " text");
}
// digits
for (let k = 1; k <= 40; k++) {
  let d = "";
  for (let i = 0; i < k; i++) d += String(ri(10));
  add(d);
  add("x" + d + "y");
  add(d + "." + d.slice(0, 3));
}
add("1234567890".repeat(30));
add("١٢٣٤٥٦٧٨٩٠".repeat(5) + " ０１２３４５６７８９ ⅠⅡⅢ ½¼ ²³");
// whitespace runs and mixed newlines
for (let k = 0; k < 60; k++) {
  let s = "";
  const m = 1 + ri(12);
  for (let i = 0; i < m; i++) s += pick([" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n\n", "   \n", pick(wsChars)]) + (rnd() < 0.5 ? pick(["a", "b c", "if", "。", "x=1", ""]) : "");
  add(s);
}
for (let n = 1; n <= 20; n++) add(" ".repeat(n * 3) + "x" + "\n".repeat(n));
// random mixes of the texts
for (let k = 0; k < 900; k++) {
  const m = 1 + ri(4);
  let s = "";
  for (let i = 0; i < m; i++) s += pick(allText) + pick(["", " ", "\n", "\n\n", "\t", pick(wsChars)]);
  if (rnd() < 0.3) s += pick(specials);
  if (rnd() < 0.2) s = pick(lookalikes) + s;
  add(s);
}
// random word-level sentences
const words = allText.join(" ").split(/\s+/).filter((w) => w);
for (let k = 0; k < 500; k++) {
  const m = 1 + ri(25);
  let s = "";
  for (let i = 0; i < m; i++) s += (i ? pick([" ", " ", " ", "  ", "\n", ", ", ". ", "\t"]) : "") + pick(words);
  add(s);
}
// code point soup
for (let k = 0; k < 1200; k++) add(soup(1 + ri(k < 600 ? 12 : 80)));
// long strings
add(pick(english).repeat(50));
add("a".repeat(3000));
add("ab".repeat(1500) + "😀".repeat(300));
add(chinese.join("").repeat(20));
add(soup(5000));

const hex = (s) => Buffer.from(s, "utf8").toString("hex");
let lines = [];
let roundtripFail = 0;
for (const s of corpus) {
  const ids = tok.encode(s).ids;
  if ((ids.length ? tok.decode(ids) : "") !== s) roundtripFail++;
  lines.push(hex(s) + "\t" + ids.join(","));
}
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(outDir + "/encode.tsv.gz", zlib.gzipSync(lines.join("\n") + "\n", { level: 9 }));
console.error(`encode: ${corpus.length} strings, ${roundtripFail} do not round-trip in the reference`);
if (encodeOnly) process.exit(0);

// ---- NFC vectors (for Qwen-style tokenizers with an NFC normalizer) ----
const nfcExtra = [
  "e\u0301", "\u1e9b\u0323", "\u0041\u030a\u0301", "\u212b", "\u1100\u1161\u11a8", "\uac00\u11a8",
  "\u1100\u1161", "\u0344", "\u0958", "\u09c7\u09be", "\u0b47\u0b3e\u0b57", "\u0cc6\u0cc2\u0cd5",
  "a\u0328\u0301\u0315\u0300", "\u0301a", "\u0301\u0300\u0316", "Vie\u0302\u0323t Nam", "\u2126\u00c5\u1e0b\u0323",
  "\ud834\udd5e", "\u0f73\u0f75\u0f81", "\u3099\u304b\u3099", "\u1025\u102e", "\u05b0\u05b1\u05b8\u05bc",
];
const nfcLines = [];
for (const x of [...nfcExtra, ...corpus]) {
  const y = x.normalize("NFC");
  if (y !== x || nfcLines.length < 200) nfcLines.push(hex(x) + "\t" + hex(y));
}
fs.writeFileSync(outDir + "/nfc.tsv.gz", zlib.gzipSync(nfcLines.join("\n") + "\n", { level: 9 }));
console.error(`nfc: ${nfcLines.length} strings`);

// ---- decode vectors: random id sequences (split characters, specials) ----
const nv = tok.get_vocab(true).size;
lines = [];
for (let k = 0; k < 600; k++) {
  const m = 1 + ri(12);
  const ids = [];
  for (let i = 0; i < m; i++) {
    const r = rnd();
    if (r < 0.1) ids.push(pick([0, 1, 2, 128803, 128804, 128805, 128806, 128814]));
    else if (r < 0.5) ids.push(ri(300)); // byte tokens and short pieces
    else ids.push(ri(128000));
  }
  const skip = k % 2;
  const out = tok.decode(ids, { skip_special_tokens: !!skip });
  lines.push(ids.join(",") + "\t" + skip + "\t" + hex(out));
}
fs.writeFileSync(outDir + "/decode.tsv.gz", zlib.gzipSync(lines.join("\n") + "\n", { level: 9 }));
console.error(`decode: ${lines.length} id sequences (vocab ${nv})`);

// ---- chat templates ----
const v3 = tc.chat_template;
// DeepSeek-R1's chat template as published in deepseek-ai/DeepSeek-R1's
// tokenizer_config.json (no npm package ships that file; this is its text).
const r1 =
  "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}";
const mixtral =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
// Tools: no published DeepSeek-V3/R1 template renders them.  The tool block
// of vLLM's examples/tool_chat_template_deepseekv3.jinja (its text, without
// the template's stray indentation) goes right after the system prompt;
// tokenizer/tok_chat.c does the same.
const toolBlock =
  "{%- if tools %}{{ '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n" +
  "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}" +
  "{%- for tool in tools %}{{ '\\n' + (tool | tojson) }}{%- endfor %}{{ '\\n</tools>\\n\\n' }}" +
  "{{ 'For function call returns, you should first print <｜tool▁calls▁begin｜>' }}" +
  "{{ 'For each function call, you should return object like:\\n' }}" +
  "{{ '<｜tool▁call▁begin｜>function<｜tool▁sep｜><function_name>\\n```json\\n<function_arguments_in_json_format>\\n```<｜tool▁call▁end｜>' }}" +
  "{{ 'At the end of function call returns, you should print <｜tool▁calls▁end｜><｜end▁of▁sentence｜>' }}{%- endif %}";
const withTools = (t, anchor) => {
  if (!t.includes(anchor)) throw new Error("tool anchor not found: " + anchor);
  return t.replace(anchor, anchor + toolBlock);
};
const templates = {
  deepseek_v3: [new Template(withTools(v3, "{{bos_token}}{{ns.system_prompt}}")), "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
  deepseek_r1: [new Template(withTools(r1, "{{ bos_token }}{{ ns.system_prompt }}")), "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
  mixtral: [new Template(mixtral), "<s>", "</s>"],
};
const call = (name, args, id) => ({ id, type: "function", function: { name, arguments: args } });
const convs = [
  [{ role: "user", content: "Hello!" }],
  [{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: "Hi" }],
  [
    { role: "system", content: "Be brief." },
    { role: "system", content: "Answer in French." },
    { role: "user", content: "What is 2+2?" },
    { role: "assistant", content: "Quatre." },
    { role: "user", content: "And 3+3?" },
  ],
  [
    { role: "user", content: "What's the weather in Paris?" },
    { role: "assistant", content: null, tool_calls: [call("get_weather", '{"city": "Paris"}', "call_1")] },
    { role: "tool", content: '{"temp": 21, "sky": "clear"}', tool_call_id: "call_1" },
  ],
  [
    { role: "system", content: "Use tools." },
    { role: "user", content: "Weather in Paris and Tokyo?" },
    {
      role: "assistant",
      content: null,
      tool_calls: [call("get_weather", '{"city":"Paris"}', "a"), call("get_weather", '{"city":"Tokyo"}', "b")],
    },
    { role: "tool", content: "21C", tool_call_id: "a" },
    { role: "tool", content: "18C", tool_call_id: "b" },
    { role: "assistant", content: "Paris is 21C, Tokyo 18C." },
    { role: "user", content: "Thanks! 谢谢" },
  ],
  [
    { role: "user", content: "Solve x^2=4" },
    { role: "assistant", content: "<think>\nx = ±2 because...\n</think>\n\nx = 2 or x = -2." },
    { role: "user", content: "Now x^2=9" },
  ],
  [
    { role: "user", content: "a" },
    { role: "assistant", content: null, tool_calls: [call("f", "{}", "1")] },
    { role: "tool", content: "1" },
    { role: "assistant", content: null, tool_calls: [call("g", '{"x":[1,2]}', "2"), call("h", '{"y":"z"}', "3")] },
    { role: "tool", content: "2" },
    { role: "tool", content: "3" },
  ],
  [{ role: "user", content: "Text with <｜User｜> inside and\nnewlines\r\n and emoji 👍🏽" }],
  [
    { role: "user", content: "Q1" },
    { role: "assistant", content: "A1 with </think> marker in content" },
    { role: "user", content: "Q2" },
    { role: "assistant", content: "A2" },
  ],
  [{ role: "system", content: "" }, { role: "user", content: "" }],
  [{ role: "user", content: "  spaces  " }, { role: "assistant", content: "\n\nnewlines\n\n" }, { role: "user", content: "ok" }],
  [
    { role: "user", content: "Look it up." },
    { role: "assistant", content: "Let me check.", tool_calls: [call("search", '{"q":"x"}', "s1")] },
    { role: "tool", content: "result 1" },
    { role: "assistant", content: "<think>ok</think>Found it." },
    { role: "user", content: "More?" },
    { role: "assistant", content: null, tool_calls: [call("search", '{"q":"y"}', "s2"), call("fetch", '{"u":1}', "s3")] },
    { role: "tool", content: "r2" },
    { role: "tool", content: "r3" },
    { role: "assistant", content: "Done." },
  ],
];
// Conversations with tool definitions (OpenAI's `tools`), rendered with the
// tool block; tools_json is each tool's tojson text as Jinja wrote it.
const fn = (name, description, parameters) => ({ type: "function", function: { name, description, parameters } });
const weather = fn("get_weather", "Current weather in a city", {
  type: "object", properties: { city: { type: "string", description: "City name, e.g. Paris" }, unit: { type: "string", enum: ["c", "f"] } },
  required: ["city"],
});
const toolSets = [
  [weather],
  [weather, { type: "function", function: { name: "get_time", parameters: { type: "object", properties: {} } } },
   fn("search", "Search the web — «quotes», 中文, emoji 🔎 and \"escapes\"\n\t", { type: "object", properties: { q: { type: "string", maxLength: 200 }, n: { type: "integer", minimum: 1, maximum: 10 }, exact: { type: "boolean", default: false }, w: { type: "number", default: 0.5 }, x: { type: ["string", "null"] } } })],
];
const toolConvs = [
  [{ role: "user", content: "What's the weather in Paris?" }],
  [{ role: "system", content: "You are a helpful assistant." }, { role: "user", content: "Weather in Paris?" }],
  [
    { role: "system", content: "Use tools." },
    { role: "user", content: "What's the weather in Paris?" },
    { role: "assistant", content: null, tool_calls: [call("get_weather", '{"city": "Paris"}', "call_1")] },
    { role: "tool", content: '{"temp": 21}', tool_call_id: "call_1" },
    { role: "assistant", content: "It is 21C in Paris." },
    { role: "user", content: "And Tokyo?" },
  ],
];
const out = [];
for (const [kind, [tmpl, bos, eos]] of Object.entries(templates)) {
  for (const messages of convs) {
    for (const agp of [false, true]) {
      let text;
      try {
        text = tmpl.render({ messages, add_generation_prompt: agp, bos_token: bos, eos_token: eos });
      } catch (e) {
        continue; // e.g. Mixtral refuses system and tool roles; tested separately in C
      }
      const ids = tok.encode(text).ids;
      out.push(JSON.stringify({ kind, add_generation_prompt: agp, messages, text, ids }));
    }
  }
  if (kind === "mixtral") continue; // its template has no tools
  const tj = new Template("{{ tool | tojson }}");
  for (const tools of toolSets) {
    const tools_json = tools.map((tool) => tj.render({ tool }));
    for (const messages of toolConvs) {
      for (const agp of [false, true]) {
        const text = tmpl.render({ messages, tools, add_generation_prompt: agp, bos_token: bos, eos_token: eos });
        const ids = tok.encode(text).ids;
        out.push(JSON.stringify({ kind, add_generation_prompt: agp, messages, tools, tools_json, text, ids }));
      }
    }
  }
}
fs.writeFileSync(outDir + "/chat.jsonl", out.join("\n") + "\n");
console.error(`chat: ${out.length} rendered conversations`);
