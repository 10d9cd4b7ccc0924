"""hf_check.py ENGINE WORKDIR DEVICE... — the engine against Hugging Face transformers' own code.

For each case, transformers builds a tiny random DeepseekV3ForCausalLM or MixtralForCausalLM
(its own modeling code, seeded), saves it with save_pretrained, and computes in float32 on the
CPU: the last-position logits of a few prompts, and 12 greedy tokens after each prompt.  The
engine (`ENGINE logits --model DIR --device D`, for each DEVICE) must give
  - logits within 1e-3 of the reference's largest |logit| (worst over every line), and
  - the same greedy token at every step (teacher-forced: the engine sees the reference's
    prefix, its argmax must be the reference's next token), except where the reference's
    top two are closer than 1e-4 of its scale (a tie, counted and shown).
bf16 cases are saved in bf16 and the reference is computed from the saved (rounded) weights.

Newer transformers keep MoE experts fused (experts.gate_up_proj [E, 2I, D], down_proj [E, D, I])
and may save them so; the engine reads checkpoints as published (one tensor per expert), so such
a folder is rewritten into that layout first (said on stdout).  Prints one line per case and
device; exit 1 if any fails.  Results also go to WORKDIR/hf_check.json.
"""
import json
import os
import re
import subprocess
import sys

import torch


def log(*a):
    print(*a, flush=True)


def cases():
    import transformers

    # a transformers without one of them fails that case (said), not the whole check
    DeepseekV3Config = getattr(transformers, "DeepseekV3Config", None)
    MixtralConfig = getattr(transformers, "MixtralConfig", None)

    v3 = dict(vocab_size=320, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
              num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
              n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
              routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
              q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
              max_position_embeddings=512, rms_norm_eps=1e-6, initializer_range=0.1,
              tie_word_embeddings=False, attention_bias=False)
    yarn = dict(v3)
    yarn.update(rope_scaling={"type": "yarn", "rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 128, "beta_fast": 32, "beta_slow": 1,
                              "mscale": 1.0, "mscale_all_dim": 1.0})
    mix = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
               max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=0.1, rope_theta=10000.0,
               tie_word_embeddings=False, sliding_window=None)
    return [
        ("deepseek_v3-f32", "DeepseekV3ForCausalLM", DeepseekV3Config, v3, torch.float32),
        ("deepseek_v3-bf16", "DeepseekV3ForCausalLM", DeepseekV3Config, v3, torch.bfloat16),
        ("deepseek_v3-yarn", "DeepseekV3ForCausalLM", DeepseekV3Config, yarn, torch.float32),
        ("mixtral-f32", "MixtralForCausalLM", MixtralConfig, mix, torch.float32),
        ("mixtral-bf16", "MixtralForCausalLM", MixtralConfig, mix, torch.bfloat16),
    ]


def build(name, arch, cfg_cls, kw, dtype, out):
    import transformers

    torch.manual_seed(1234)
    if cfg_cls is None or not hasattr(transformers, arch):
        raise RuntimeError("transformers %s has no %s" % (transformers.__version__, arch))
    try:
        cfg = cfg_cls(**kw)
    except TypeError:
        kw = {k: v for k, v in kw.items() if k != "sliding_window"}
        cfg = cfg_cls(**kw)
    cfg.architectures = [arch]
    model = getattr(transformers, arch)(cfg).eval()
    with torch.no_grad():  # routing that means something: a non-zero correction bias
        for mod in model.modules():
            if hasattr(mod, "e_score_correction_bias"):
                mod.e_score_correction_bias.copy_(torch.randn_like(mod.e_score_correction_bias) * 0.01)
    model = model.to(dtype)
    try:
        model.save_pretrained(out, safe_serialization=True)
    except TypeError:  # transformers without the option: safetensors is its only format
        model.save_pretrained(out)
    normalise(out, arch)
    cls = getattr(transformers, arch)
    try:
        ref = cls.from_pretrained(out, dtype=torch.float32)
    except TypeError:
        ref = cls.from_pretrained(out, torch_dtype=torch.float32)
    ref = ref.float().eval()
    return ref


def normalise(out, arch):
    """Rewrite fused-expert / renamed tensors into the published per-expert layout."""
    from safetensors.torch import load_file, save_file

    files = [f for f in os.listdir(out) if f.endswith(".safetensors")]
    t = {}
    for f in files:
        t.update(load_file(os.path.join(out, f)))
    changed = False
    new = {}
    fused = re.compile(r"(^|\.)experts\.(gate_up_proj|down_proj)(\.weight)?$")  # not shared_experts.*
    for k, v in t.items():
        if fused.search(k) and v.dim() == 3 and k.endswith(".weight"):
            k = k[: -len(".weight")]
        if not (fused.search(k) and v.dim() == 3):
            new[k] = v
        elif k.endswith("experts.gate_up_proj"):
            base = k[: -len("gate_up_proj")]
            I = v.shape[1] // 2
            for e in range(v.shape[0]):
                g, u = v[e, :I].contiguous(), v[e, I:].contiguous()
                if arch == "MixtralForCausalLM":
                    new[base + "%d.w1.weight" % e], new[base + "%d.w3.weight" % e] = g, u
                else:
                    new[base + "%d.gate_proj.weight" % e], new[base + "%d.up_proj.weight" % e] = g, u
            changed = True
        else:  # experts.down_proj
            base = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                nm = "%d.w2.weight" % e if arch == "MixtralForCausalLM" else "%d.down_proj.weight" % e
                new[base + nm] = v[e].contiguous()
            changed = True
    if arch == "MixtralForCausalLM":  # transformers 5 names the MoE block mlp
        ren = {}
        for k, v in new.items():
            k2 = k.replace(".mlp.experts.", ".block_sparse_moe.experts.").replace(".mlp.gate.", ".block_sparse_moe.gate.")
            changed |= k2 != k
            ren[k2] = v
        new = ren
    if changed:
        log("  (rewrote %s's fused/renamed expert tensors into one tensor per expert)" % os.path.basename(out))
        for f in files:
            os.remove(os.path.join(out, f))
        idx = os.path.join(out, "model.safetensors.index.json")
        if os.path.exists(idx):
            os.remove(idx)
        save_file(new, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def reference(model, prompts, steps):
    lines, want = [], []  # engine input lines; per line: (ref logits, next token or None)
    with torch.no_grad():
        for p in prompts:
            ids = list(p)
            for s in range(steps + 1):
                logits = model(torch.tensor([ids])).logits[0, -1].float()
                nxt = int(torch.argmax(logits))
                top2 = torch.topk(logits, 2).values
                tie = float(top2[0] - top2[1]) < 1e-4 * float(logits.abs().max())
                lines.append(list(ids))
                want.append((logits.tolist(), nxt, tie))
                ids.append(nxt)
    return lines, want


def run_engine(engine, d, lines, device):
    inp = "".join(json.dumps(l) + "\n" for l in lines)
    r = subprocess.run([engine, "logits", "--model", d, "--device", device], input=inp, capture_output=True,
                       text=True, timeout=600)
    if r.returncode:
        return None, r.stderr.strip()
    return [json.loads(l)["logits"] for l in r.stdout.splitlines()], ""


def main():
    engine, work, devices = sys.argv[1], sys.argv[2], sys.argv[3:] or ["cpu"]
    import transformers

    log("transformers %s, torch %s" % (transformers.__version__, torch.__version__))
    os.makedirs(work, exist_ok=True)
    g = torch.Generator().manual_seed(99)
    results, ok_all = [], True
    for name, arch, cls, kw, dtype in cases():
        d = os.path.join(work, name)
        try:
            ref = build(name, arch, cls, kw, dtype, d)
        except Exception as e:  # a transformers without this architecture or option: a failure, said
            log("%-18s FAIL: transformers could not build it: %r" % (name, e))
            ok_all = False
            results.append({"case": name, "error": repr(e)})
            continue
        prompts = [torch.randint(0, kw["vocab_size"], (n,), generator=g).tolist() for n in (1, 5, 23, 150)]
        lines, want = reference(ref, prompts, 12)
        for dev in devices:
            got, err = run_engine(engine, d, lines, dev)
            if got is None:
                log("%-18s %-8s FAIL: the engine failed: %s" % (name, dev, err))
                ok_all = False
                results.append({"case": name, "device": dev, "error": err})
                continue
            worst, bad, ties = 0.0, 0, 0
            for (rl, nxt, tie), gl in zip(want, got):
                scale = max(abs(v) for v in rl) or 1.0
                worst = max(worst, max(abs(a - b) for a, b in zip(rl, gl)) / scale)
                top = max(range(len(gl)), key=lambda i: (gl[i], -i))
                if top != nxt:
                    if tie:
                        ties += 1
                    else:
                        bad += 1
            ok = worst <= 1e-3 and bad == 0 and len(got) == len(want)
            ok_all &= ok
            log("%-18s %-8s worst logit error %.2e of scale (tolerance 1e-03); greedy tokens: %d of %d agree, "
                "%d differ (%d near-ties excused): %s" % (name, dev, worst, len(want) - bad - ties, len(want), bad,
                                                           ties, "ok" if ok else "FAIL"))
            results.append({"case": name, "device": dev, "worst": worst, "greedy_steps": len(want),
                            "greedy_differ": bad, "ties": ties, "ok": ok})
    with open(os.path.join(work, "hf_check.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "results": results}, f, indent=1)
    sys.exit(0 if ok_all else 1)


main()
