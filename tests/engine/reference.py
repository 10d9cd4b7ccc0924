#!/usr/bin/python3
"""An independent PyTorch reference for the engine's forward pass.

It follows the published modelling code of each architecture rather than the
engine: DeepSeek-V3 / V2 attention in its plain (non-absorbed) form, with
k_nope and v expanded from kv_b_proj for every head and RoPE applied the
Hugging Face way (de-interleave, rotate_half); the MoE gates as DeepSeek's
inference/model.py computes them; Mixtral as transformers' modeling_mixtral.
It reads safetensors itself (numpy), dequantizes FP8 e4m3 with 128x128
weight_scale_inv blocks, and computes everything in fp32 on those values.

    reference.py MODEL_DIR OUT_PREFIX [--seed N] [--prefill P]

writes OUT_PREFIX.json (ids, expert choices, greedy tokens, metadata) and
OUT_PREFIX.logits.f32 (little-endian fp32, [33, vocab]: the logits after the
P-token prefill (default 64) and after each of 32 decode steps).  Long
prefills (P > 512) generate 16 greedy tokens instead of 64 (each one is a
full forward pass over the prompt here).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

torch.set_grad_enabled(False)


# ---- safetensors ------------------------------------------------------------

def e4m3_table():
    t = np.zeros(256, dtype=np.float32)
    for v in range(256):
        s = -1.0 if v & 0x80 else 1.0
        e = (v >> 3) & 0xF
        m = v & 7
        if e == 15 and m == 7:
            t[v] = np.nan
        elif e == 0:
            t[v] = s * (m / 8.0) * 2.0 ** -6
        else:
            t[v] = s * (1 + m / 8.0) * 2.0 ** (e - 7)
    return t


E4M3 = e4m3_table()


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in hdr.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = raw[base + b:base + e]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F8_E4M3":
            a = E4M3[np.frombuffer(buf, dtype=np.uint8)]
        else:
            raise ValueError(f"{path}: {name}: dtype {dt}")
        out[name] = (dt, a.reshape(shape).copy())
    return out


def load_folder(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    raw = {}
    for f in files:
        raw.update(read_safetensors(os.path.join(d, f)))
    W = {}
    for name, (dt, a) in raw.items():
        if name.endswith("_scale_inv"):
            continue
        if dt == "F8_E4M3":
            s = raw[name + "_scale_inv"][1]
            r, c = a.shape
            full = np.repeat(np.repeat(s, 128, axis=0), 128, axis=1)[:r, :c]
            a = a * full
        W[name] = torch.from_numpy(a.astype(np.float32))
    cfg = json.load(open(os.path.join(d, "config.json")))
    return cfg, W


# ---- shared pieces -------------------------------------------------------------

def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def mlp(x, g, u, d):
    return torch.nn.functional.silu(x @ g.T) * (x @ u.T) @ d.T


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def yarn_mscale(scale, m):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def rope_cos_sin(cfg, dim, npos):
    """cos, sin [npos, dim] in the rotate_half layout (frequencies repeated)."""
    base = float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    amp = 1.0
    rs = cfg.get("rope_scaling")
    if rs and (rs.get("type") or rs.get("rope_type")) == "yarn":
        factor = rs["factor"]
        orig = rs["original_max_position_embeddings"]
        bf, bs = rs.get("beta_fast", 32), rs.get("beta_slow", 1)

        def corr(rot):
            return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

        low = max(math.floor(corr(bf)), 0)
        high = min(math.ceil(corr(bs)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        mask = 1.0 - ramp  # 1 keeps the original frequency
        inv = (inv / factor) * (1 - mask) + inv * mask
        amp = yarn_mscale(factor, rs.get("mscale", 1)) / yarn_mscale(factor, rs.get("mscale_all_dim", 0))
    t = torch.arange(npos, dtype=torch.float64)
    f = torch.outer(t, inv)
    emb = torch.cat((f, f), dim=-1)
    return (emb.cos() * amp).float(), (emb.sin() * amp).float()


def causal_attention(q, k, v, scale):
    """q [H, S, d], k [H, S, d], v [H, S, dv] -> [S, H*dv]."""
    S = q.shape[1]
    s = (q @ k.transpose(1, 2)) * scale
    mask = torch.triu(torch.ones(S, S, dtype=torch.bool), 1)
    s = s.masked_fill(mask, float("-inf"))
    p = torch.softmax(s.float(), dim=-1)
    o = p @ v
    return o.transpose(0, 1).reshape(S, -1)


# ---- DeepSeek V2 / V3 -------------------------------------------------------------

class DeepSeek:
    def __init__(self, cfg, W):
        self.c, self.W = cfg, W
        self.v3 = cfg["architectures"][0] == "DeepseekV3ForCausalLM"
        self.eps = cfg["rms_norm_eps"]
        self.H = cfg["num_attention_heads"]
        self.dn, self.dr, self.dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        self.kvr = cfg["kv_lora_rank"]
        self.scale = (self.dn + self.dr) ** -0.5
        rs = cfg.get("rope_scaling")
        if rs and rs.get("mscale_all_dim"):
            m = yarn_mscale(rs["factor"], rs["mscale_all_dim"])
            self.scale *= m * m
        self.trace = []
        self.group_flips = 0

    def attn(self, l, x, cos, sin):
        W, p = self.W, f"model.layers.{l}.self_attn."
        S, H, dn, dr, dv = x.shape[0], self.H, self.dn, self.dr, self.dv
        if self.c.get("q_lora_rank"):
            q = rms_norm(x @ W[p + "q_a_proj.weight"].T, W[p + "q_a_layernorm.weight"], self.eps) @ W[p + "q_b_proj.weight"].T
        else:
            q = x @ W[p + "q_proj.weight"].T
        q = q.view(S, H, dn + dr).transpose(0, 1)
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        ckv = x @ W[p + "kv_a_proj_with_mqa.weight"].T
        c, k_pe = ckv[:, :self.kvr], ckv[:, self.kvr:].view(1, S, dr)
        kv = (rms_norm(c, W[p + "kv_a_layernorm.weight"], self.eps) @ W[p + "kv_b_proj.weight"].T)
        kv = kv.view(S, H, dn + dv).transpose(0, 1)
        k_nope, v = kv[..., :dn], kv[..., dn:]

        def ro(t):  # Hugging Face: de-interleave pairs, then rotate_half
            b, s, d = t.shape
            t = t.reshape(b, s, d // 2, 2).transpose(3, 2).reshape(b, s, d)
            return t * cos[:S] + rotate_half(t) * sin[:S]

        q_pe, k_pe = ro(q_pe), ro(k_pe)
        qf = torch.cat((q_nope, q_pe), -1)
        kf = torch.cat((k_nope, k_pe.expand(H, S, dr)), -1)
        o = causal_attention(qf, kf, v, self.scale)
        return o @ W[p + "o_proj.weight"].T

    def gate(self, l, x):
        W, c, p = self.W, self.c, f"model.layers.{l}.mlp.gate."
        E, k = c["n_routed_experts"], c["num_experts_per_tok"]
        logits = x @ W[p + "weight"].T
        if c.get("scoring_func", "sigmoid" if self.v3 else "softmax") == "sigmoid":
            s = logits.sigmoid()
        else:
            s = logits.softmax(dim=-1, dtype=torch.float32)
        bias = W.get(p + "e_score_correction_bias")
        b = s + bias if bias is not None else s
        G, g = c.get("n_group", 1) or 1, c.get("topk_group", 1) or 1
        method = c.get("topk_method", "noaux_tc" if self.v3 else "greedy")
        if method == "greedy":
            G = 1
        if G > 1:
            def groups_of(bb, with_bias):
                v = bb.view(-1, G, E // G)
                gs = v.topk(2, dim=-1)[0].sum(-1) if with_bias else v.amax(-1)
                return gs.topk(g, dim=-1)[1]
            gi = groups_of(b, bias is not None)
            if bias is not None:
                gi0 = groups_of(s, True)
                self.group_flips += int((gi.sort(-1)[0] != gi0.sort(-1)[0]).any(-1).sum())
            mask = torch.zeros(b.shape[0], G, dtype=torch.bool)
            mask.scatter_(1, gi, True)
            mask = mask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
            b = b.masked_fill(~mask, float("-inf"))
        idx = b.topk(k, dim=-1)[1]
        w = s.gather(1, idx)
        norm = c.get("norm_topk_prob", False) and k > 1
        if norm:
            w = w / w.sum(-1, keepdim=True)
        if self.v3 or not norm:
            w = w * c.get("routed_scaling_factor", 1.0)
        return idx, w

    def ffn(self, l, x):
        W, c = self.W, self.c
        p = f"model.layers.{l}.mlp."
        E = c.get("n_routed_experts")
        if not E or l < c.get("first_k_dense_replace", 0) or l % c.get("moe_layer_freq", 1):
            self.trace.append(None)
            return mlp(x, W[p + "gate_proj.weight"], W[p + "up_proj.weight"], W[p + "down_proj.weight"])
        idx, w = self.gate(l, x)
        self.trace.append(idx)
        y = torch.zeros_like(x)
        for e in range(E):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if len(tok):
                q = f"{p}experts.{e}."
                out = mlp(x[tok], W[q + "gate_proj.weight"], W[q + "up_proj.weight"], W[q + "down_proj.weight"])
                y.index_add_(0, tok, out * w[tok, slot, None])
        if c.get("n_shared_experts"):
            q = p + "shared_experts."
            y = y + mlp(x, W[q + "gate_proj.weight"], W[q + "up_proj.weight"], W[q + "down_proj.weight"])
        return y

    def forward(self, ids):
        W = self.W
        self.trace = []
        cos, sin = rope_cos_sin(self.c, self.dr, len(ids))
        h = W["model.embed_tokens.weight"][torch.tensor(ids)]
        for l in range(self.c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            h = h + self.attn(l, rms_norm(h, W[p + "input_layernorm.weight"], self.eps), cos, sin)
            h = h + self.ffn(l, rms_norm(h, W[p + "post_attention_layernorm.weight"], self.eps))
        return rms_norm(h, W["model.norm.weight"], self.eps) @ W["lm_head.weight"].T


# ---- Mixtral ---------------------------------------------------------------------

class Mixtral:
    def __init__(self, cfg, W):
        self.c, self.W = cfg, W
        self.eps = cfg["rms_norm_eps"]
        self.H, self.kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // self.H
        self.trace = []
        self.group_flips = 0

    def forward(self, ids):
        W, c = self.W, self.c
        S, H, kvh, hd = len(ids), self.H, self.kvh, self.hd
        cos, sin = rope_cos_sin(c, hd, S)
        self.trace = []
        h = W["model.embed_tokens.weight"][torch.tensor(ids)]
        for l in range(c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            x = rms_norm(h, W[p + "input_layernorm.weight"], self.eps)
            q = (x @ W[p + "self_attn.q_proj.weight"].T).view(S, H, hd).transpose(0, 1)
            k = (x @ W[p + "self_attn.k_proj.weight"].T).view(S, kvh, hd).transpose(0, 1)
            v = (x @ W[p + "self_attn.v_proj.weight"].T).view(S, kvh, hd).transpose(0, 1)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(H // kvh, dim=0)
            v = v.repeat_interleave(H // kvh, dim=0)
            h = h + causal_attention(q, k, v, hd ** -0.5) @ W[p + "self_attn.o_proj.weight"].T
            x = rms_norm(h, W[p + "post_attention_layernorm.weight"], self.eps)
            logits = x @ W[p + "block_sparse_moe.gate.weight"].T
            rw = torch.softmax(logits, dim=1, dtype=torch.float)
            rw, sel = torch.topk(rw, c["num_experts_per_tok"], dim=-1)
            rw = rw / rw.sum(-1, keepdim=True)
            self.trace.append(sel)
            y = torch.zeros_like(x)
            for e in range(c["num_local_experts"]):
                tok, slot = (sel == e).nonzero(as_tuple=True)
                if len(tok):
                    q_ = f"{p}block_sparse_moe.experts.{e}."
                    out = mlp(x[tok], W[q_ + "w1.weight"], W[q_ + "w3.weight"], W[q_ + "w2.weight"])
                    y.index_add_(0, tok, out * rw[tok, slot, None])
            h = h + y
        return rms_norm(h, W["model.norm.weight"], self.eps) @ W["lm_head.weight"].T


# ---- goldens ----------------------------------------------------------------------

PREFILL, DECODE, GEN = 64, 32, 64


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    d, out = sys.argv[1], sys.argv[2]
    opts = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    seed = int(opts.get("--seed", 1))
    global PREFILL, GEN
    PREFILL = int(opts.get("--prefill", PREFILL))
    if PREFILL > 512:
        GEN = 16
    torch.set_num_threads(os.cpu_count() or 1)
    cfg, W = load_folder(d)
    model = (Mixtral if cfg["architectures"][0] == "MixtralForCausalLM" else DeepSeek)(cfg, W)
    V = cfg["vocab_size"]
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.integers(2, V, PREFILL + DECODE)]
    logits = model.forward(ids)
    sel = logits[PREFILL - 1:].contiguous().numpy().astype("<f4")
    experts = []
    for t in model.trace:
        if t is None:
            experts.append(None)
        else:
            experts.append(t.sort(-1)[0].tolist())
    flips = model.group_flips
    # greedy generation from the 64-token prompt, recomputing the full prefix each step
    seq = ids[:PREFILL]
    gen = []
    for _ in range(GEN):
        nxt = int(model.forward(seq)[-1].argmax())
        gen.append(nxt)
        seq.append(nxt)
    # how clear-cut each greedy choice was (top-1 minus top-2 logit), for the test's diagnostics
    gaps = []
    full = model.forward(seq[:-1])
    for i in range(GEN):
        v = full[PREFILL - 1 + i].topk(2)[0]
        gaps.append(float(v[0] - v[1]))
    meta = {
        "model": os.path.basename(os.path.normpath(d)),
        "arch": cfg["architectures"][0],
        "vocab_size": V,
        "prefill": PREFILL,
        "decode": DECODE,
        "ids": ids,
        "experts": experts,
        "greedy": gen,
        "greedy_min_gap": min(gaps),
        "bias_group_flips": flips,
        "logit_scale": float(sel.__abs__().max()),
    }
    sel.tofile(out + ".logits.f32")
    with open(out + ".json", "w") as f:
        json.dump(meta, f, separators=(",", ":"))
    print(f"{out}: {meta['arch']} V={V} max|logit|={meta['logit_scale']:.3f} "
          f"bias group flips={flips} greedy min gap={meta['greedy_min_gap']:.2e}")


if __name__ == "__main__":
    main()
