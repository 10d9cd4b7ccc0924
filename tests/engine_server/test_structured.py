#!/usr/bin/python3
"""Hostile structured-output requests against a real `tollgate-engine serve`
on the demo model of test_server.py (port 18732, TG_TEST_STRUCT_PORT to move
it): what a client may send as response_format json_schema or as a strict
tool's parameters, each of them answered either with a clean 400 in the API's
error format naming the field, or with an answer valid against the schema as
sent, within bounded time and memory; never a crash, a hang, a 500 or
invalid JSON.  The schemas are those a fuzzer or a hostile client writes:
1,000 levels of nesting, recursive $ref, 10,000-value enums, enum values
sharing long prefixes, long consts, catastrophic patterns, lengths and counts
at the integer limits, many optional members, anyOf of 100 branches.

The validator here (valid()) is written apart from the engine, from JSON
Schema's text, for the keywords api/README.md "Structured output" accepts."""
import decimal
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (the demo model, start(), request())
from tgskip import main  # noqa: E402

PORT = int(os.environ.get("TG_TEST_STRUCT_PORT", "18732"))
FIELD_RF, FIELD_TOOL = "response_format.json_schema.schema", "tools[0].function.parameters"
# A request's wall time on the demo model (2 threads): at most this many
# seconds (the slowest hostile case takes about 6 s on a loaded 2-core host).
SLOW_S = 60
# The worker's resident memory may grow by at most this over the whole run.
RSS_GROWTH_MB = 256


def setUpModule():
    ts.ensure_models()
    ts.start("structured", PORT, ts.MODEL_DIR)


def tearDownModule():
    ts.tearDownModule()


def rss_mb():
    p = ts.procs["structured"][0]
    with open("/proc/%d/status" % p.pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024.0
    return 0.0


class Raw:
    """JSON text put into a body as it is (deeper than json.dumps recurses)."""

    def __init__(self, text):
        self.text = text


def enc(o):
    if isinstance(o, Raw):
        return o.text
    if isinstance(o, dict):
        return "{" + ",".join(json.dumps(k) + ":" + enc(v) for k, v in o.items()) + "}"
    if isinstance(o, list):
        return "[" + ",".join(enc(v) for v in o) + "]"
    return json.dumps(o)


def post(body, stream=False):
    body = dict(body, stream=stream)
    t = time.monotonic()
    st, _, out = ts.request(PORT, "POST", "/v1/chat/completions", enc(body).encode())
    return st, out, time.monotonic() - t


# ---- a JSON Schema validator for the supported keywords -----------------------------

NUM = (int, float, decimal.Decimal)  # answers are read with parse_float=Decimal: exact, at any length
decimal.getcontext().prec = 400      # multipleOf's remainder of a long number, exactly


def num(x):
    return decimal.Decimal(repr(x)) if isinstance(x, float) else decimal.Decimal(x)


def ref(root, r):
    if r == "#":
        return root
    for pre, key in (("#/$defs/", "$defs"), ("#/definitions/", "definitions")):
        if r.startswith(pre):
            return root[key][r[len(pre):].replace("~1", "/").replace("~0", "~")]
    raise AssertionError("unsupported $ref %r" % r)


def same(a, b):
    """JSON equality (1 == 1.0, true != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, NUM) and isinstance(b, NUM):
        return num(a) == num(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def is_type(v, t):
    if t == "integer":
        return isinstance(v, NUM) and not isinstance(v, bool) and num(v) == num(v).to_integral_value()
    if t == "number":
        return isinstance(v, NUM) and not isinstance(v, bool)
    return isinstance(v, {"object": dict, "array": list, "string": str, "boolean": bool,
                          "null": type(None)}[t])


def valid(v, sc, root):
    if sc is True or sc is False:
        return sc
    if "$ref" in sc and not valid(v, ref(root, sc["$ref"]), root):
        return False
    if "allOf" in sc and not all(valid(v, b, root) for b in sc["allOf"]):
        return False
    if "anyOf" in sc and not any(valid(v, b, root) for b in sc["anyOf"]):
        return False
    if "oneOf" in sc and sum(valid(v, b, root) for b in sc["oneOf"]) != 1:
        return False
    if "const" in sc and not same(v, sc["const"]):
        return False
    if "enum" in sc and not any(same(v, e) for e in sc["enum"]):
        return False
    if "type" in sc and not any(is_type(v, t) for t in (sc["type"] if isinstance(sc["type"], list) else [sc["type"]])):
        return False
    if isinstance(v, NUM) and not isinstance(v, bool):
        x = num(v)
        for k, bad in (("minimum", lambda b: x < b), ("maximum", lambda b: x > b),
                       ("exclusiveMinimum", lambda b: x <= b), ("exclusiveMaximum", lambda b: x >= b)):
            if isinstance(sc.get(k), (int, float)) and not isinstance(sc.get(k), bool) and bad(num(sc[k])):
                return False
        if "multipleOf" in sc and x % num(sc["multipleOf"]) != 0:
            return False
    if isinstance(v, str) and not sc.get("minLength", 0) <= len(v) <= sc.get("maxLength", len(v)):
        return False
    if isinstance(v, list):
        if not sc.get("minItems", 0) <= len(v) <= sc.get("maxItems", len(v)):
            return False
        pre, rest = sc.get("prefixItems", []), sc.get("items", True)
        if isinstance(rest, list):
            pre, rest = rest, sc.get("additionalItems", True)
        for i, x in enumerate(v):
            if not valid(x, pre[i] if i < len(pre) else rest, root):
                return False
    if isinstance(v, dict):
        props = sc.get("properties", {})
        if not set(sc.get("required", [])) <= set(v):
            return False
        for k, x in v.items():
            if not valid(x, props[k] if k in props else sc.get("additionalProperties", True), root):
                return False
    return True


# ---- the hostile schemas ------------------------------------------------------------

def obj(props, req=None):
    return {"type": "object", "properties": props, "required": list(props) if req is None else req,
            "additionalProperties": False}


def nest_obj(n):
    return Raw('{"type":"object","properties":{"a":' * n + '{"type":"string"}' +
               '},"required":["a"],"additionalProperties":false}' * n)


def nest_arr(n):
    return Raw('{"type":"object","properties":{"a":' + '{"type":"array","items":' * n + '{"type":"string"}' +
               '}' * n + '},"required":["a"],"additionalProperties":false}')


HOSTILE = {
    # nesting: past the JSON reader (128), past the schema limit (16), at it
    "deep_object_1000": nest_obj(1000),
    "deep_array_1000": nest_arr(1000),
    "deep_object_40": nest_obj(40),
    "deep_object_15": nest_obj(15),
    # recursion: the grammar is a finite tree
    "ref_recursive": dict(obj({"n": {"$ref": "#/$defs/N"}}), **{"$defs": {"N": obj({"n": {"$ref": "#/$defs/N"}})}}),
    "ref_root": obj({"n": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}),
    "ref_mutual": dict(obj({"x": {"$ref": "#/$defs/A"}}),
                       **{"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}}),
    # enums: huge, at the limit, sharing long prefixes, long values
    "enum_10000": obj({"e": {"enum": ["v%d" % i for i in range(10000)]}}),
    "enum_64": obj({"e": {"enum": ["v%d" % i for i in range(64)]}}),
    "enum_shared_prefix": obj({"e": {"enum": ["x" * 200 + "%02d" % i for i in range(60)]}}),
    "enum_prefix_past_limit": obj({"e": {"enum": ["x" * 5000 + "a", "x" * 5000 + "b"]}}),
    "const_100k": obj({"c": {"const": "y" * 100000}}),
    "const_200": obj({"c": {"const": "y" * 200}}),
    # regular expressions: not run by the grammar, so refused
    "pattern_catastrophic": obj({"p": {"type": "string", "pattern": "^(a+)+$"}}),
    # lengths and counts at the integer limits
    "minLength_int32": obj({"s": {"type": "string", "minLength": 2 ** 31 - 1}}),
    "minLength_2p63": obj({"s": {"type": "string", "minLength": 2 ** 63}}),
    "maxLength_int32": obj({"s": {"type": "string", "maxLength": 2 ** 31 - 1}}),
    "maxLength_int64": obj({"s": {"type": "string", "maxLength": 2 ** 63 - 1}}),
    "minItems_int32": obj({"a": {"type": "array", "items": {"type": "integer"}, "minItems": 2 ** 31 - 1}}),
    "maxItems_int32": obj({"a": {"type": "array", "items": {"type": "integer"}, "maxItems": 2 ** 31 - 1}}),
    "minItems_negative": obj({"a": {"type": "array", "minItems": -1}}),
    "minItems_4096": obj({"a": {"type": "array", "items": {"type": "integer"}, "minItems": 4096}}),
    "minLength_4096": obj({"s": {"type": "string", "minLength": 4096}}),
    "minimums_multiplied": obj({"p%d" % i: {"type": "array", "minItems": 4096, "items": {
        "type": "array", "minItems": 4096, "items": {"type": "string", "minLength": 4096}}} for i in range(8)}),
    "items_false_minItems": obj({"a": {"type": "array", "items": False, "minItems": 1}}),
    # many members
    "optional_64": {"type": "object", "properties": {"p%d" % i: {"type": "integer"} for i in range(64)},
                    "additionalProperties": False},
    "optional_65": {"type": "object", "properties": {"p%d" % i: {"type": "integer"} for i in range(65)},
                    "additionalProperties": False},
    "required_64": obj({"p%d" % i: {"type": "integer"} for i in range(64)}),
    "long_names_record": {"type": "object", "properties": {"k" * 240 + "%02d" % i: {"type": "string"}
                                                           for i in range(64)},
                          "additionalProperties": {"type": "string"}},
    # unions
    "anyOf_100_objects": obj({"u": {"anyOf": [obj({"k%d" % i: {"type": "integer"}}) for i in range(100)]}}),
    "anyOf_100_same": obj({"u": {"anyOf": [{"type": "string"}] * 100}}),
    "anyOf_5_types": obj({"u": {"anyOf": [{"type": t} for t in ("string", "integer", "boolean", "null", "array")]}}),
    # numbers at the edges
    "number_huge_bounds": obj({"n": {"type": "number", "minimum": 1e308, "maximum": 1.7976931348623157e308}}),
    "number_tiny_range": obj({"n": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e-9}}),
    "integer_empty_range": obj({"n": {"type": "integer", "minimum": 0.5, "maximum": 0.7}}),
    # names
    "empty_and_odd_names": obj({"": {"type": "string"}, "\u0000": {"type": "string"}, "\"\\": {"type": "integer"},
                                "\U0001F600": {"type": "null"}}),
    "name_300_bytes": obj({"k" * 300: {"type": "string"}}),
    "root_array": {"type": "array"},
}


class Hostile(unittest.TestCase):
    maxDiff = None

    def check(self, name, body, field, schema, stream=False):
        st, out, dt = post(body, stream)
        self.assertLess(dt, SLOW_S, "%s: %.1f s" % (name, dt))
        if st != 200:
            self.assertEqual(st, 400, "%s: %s" % (name, out[:300]))
            err = json.loads(out)["error"]
            self.assertEqual(set(err), {"message", "type", "param", "code"}, name)
            self.assertEqual(err["type"], "invalid_request_error", name)
            self.assertEqual(err["param"], field, "%s: %s" % (name, err["message"]))
            self.assertTrue(err["code"] and err["message"], name)
            return "400"
        if stream:
            evs = [json.loads(e) for e in ts.sse(out) if e != "[DONE]"]
            chs = [e["choices"][0] for e in evs if e["choices"]]
            fin = [c["finish_reason"] for c in chs if c.get("finish_reason")][-1]
            text = "".join(c["delta"].get("content") or "" for c in chs)
            args = "".join(tc["function"].get("arguments") or "" for c in chs
                           for tc in c["delta"].get("tool_calls") or [])
        else:
            ch = json.loads(out)["choices"][0]
            fin, text = ch["finish_reason"], ch["message"].get("content") or ""
            args = "".join(tc["function"]["arguments"] for tc in ch["message"].get("tool_calls") or [])
        if fin == "length":
            return "length"
        self.assertIn(fin, ("stop", "tool_calls"), name)
        v = json.loads(args if fin == "tool_calls" else text, parse_float=decimal.Decimal)
        if not isinstance(schema, Raw):
            self.assertTrue(valid(v, schema, schema), "%s: %s" % (name, (args or text)[:400]))
        return fin

    def test_each_hostile_schema_is_a_clean_400_or_a_valid_answer(self):
        rss0 = rss_mb()
        seen = {}
        for name, sc in HOSTILE.items():
            for kind in ("rf", "tool"):
                body = {"model": ts.MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 120,
                        "temperature": 1.0, "seed": len(name)}
                if kind == "rf":
                    body["response_format"] = {"type": "json_schema",
                                               "json_schema": {"name": "h", "strict": True, "schema": sc}}
                else:
                    body["tools"] = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": sc}}]
                    body["tool_choice"] = "required"
                seen[(name, kind)] = self.check(name, body, FIELD_RF if kind == "rf" else FIELD_TOOL, sc,
                                                stream=name.endswith("_64"))
        # the answers the limits promise: refusals where the compiler says so, answers elsewhere
        for name in ("deep_object_1000", "deep_array_1000", "deep_object_40", "ref_recursive", "ref_root",
                     "ref_mutual", "enum_10000", "enum_prefix_past_limit", "const_100k", "pattern_catastrophic",
                     "minLength_int32", "minLength_2p63", "minItems_int32", "minItems_negative",
                     "items_false_minItems", "optional_65", "anyOf_100_objects", "anyOf_100_same",
                     "number_huge_bounds", "integer_empty_range", "name_300_bytes", "root_array"):
            self.assertEqual((name, seen[(name, "rf")], seen[(name, "tool")]), (name, "400", "400"))
        for name in ("deep_object_15", "enum_64", "enum_shared_prefix", "maxLength_int32", "maxLength_int64",
                     "maxItems_int32", "anyOf_5_types", "number_tiny_range", "empty_and_odd_names"):
            self.assertNotEqual(seen[(name, "rf")], "400", name)
        self.assertLess(rss_mb() - rss0, RSS_GROWTH_MB)
        st, _, b = ts.request(PORT, "GET", "/health")
        self.assertEqual(st, 200, b)

    def test_budget_that_fits_ends_valid(self):
        # a budget that covers the shortest answer ends with EOS and a valid one, for the
        # shapes above that are accepted (every byte a token at worst, and EOS)
        for name in ("enum_shared_prefix", "const_200", "deep_object_15", "empty_and_odd_names", "anyOf_5_types",
                     "number_tiny_range"):
            sc = HOSTILE[name]
            body = {"model": ts.MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 400,
                    "temperature": 1.0, "seed": 7,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "h", "schema": sc}}}
            for stream in (False, True):
                self.assertEqual(self.check(name, body, FIELD_RF, sc, stream), "stop", name)


if __name__ == "__main__":
    main()
