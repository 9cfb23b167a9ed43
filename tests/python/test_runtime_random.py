"""kvscope CPU runtime vs the numpy reference on small random-weight models, every format.

For each variant written by writers.write_all (llama2.c, HF F32/F16/BF16 single/sharded,
GGUF F32/F16/BF16/Q8_0/Q4_0/Q4_1, tied and untied, head_dim != dim/n_heads):

  1. the reference reads the file back (refmodel.read_model, no kvscope code) and its weights
     are checked against the base weights they were written from (storage rounding only;
     Q/K rows permuted for the interleaved formats);
  2. `kvscope logits` in modes prefill, decode, chunked (--chunk 5 and the default 7) must
     match the reference: rel = max over positions of max_j|a-b| / max_j|b| <= 1e-4;
  3. prefill, decode and chunked kvscope logits must agree with each other (<= 1e-5);
  4. variants of the same base weights (llama2.c / HF rotate-half / GGUF permuted rows)
     must give the same logits, in the reference and in kvscope;
  5. `kvscope model-info` reports the configuration that was written.

Exit 0 pass, 1 fail, 77 skip (no kvscope binary).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refmodel as R  # noqa: E402
import writers as W  # noqa: E402

TOL_REF = 1e-4  # kvscope (float32) vs float64 reference
TOL_MODES = 1e-5  # kvscope prefill vs decode vs chunked
TOL_SAME_FN = 1e-4  # kvscope: two formats of the same weights
TOL_REF_SAME_FN = 1e-10  # reference: two formats of the same float32 weights

failures: list = []


def check(ok: bool, msg: str):
    if not ok:
        failures.append(msg)
        print("FAIL:", msg)


def frob_rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# How far a stored weight may be from the float32 original (relative Frobenius norm).
STORAGE_TOL = {"F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 1e-2, "Q4_0": 0.2, "Q4_1": 0.2}


def check_weights(v: W.Variant, m: R.Model, base: dict, cfg: R.Config):
    """The file holds the base weights (rounded to its storage type, Q/K permuted if interleaved)."""
    interleaved = m.config.rope == "interleaved"
    emb_t = v.extra.get("embd_qtype") or v.dtype
    out_t = v.extra.get("output_qtype") or v.dtype
    norm_t = "F32" if v.fmt == "gguf" else v.dtype  # llama.cpp keeps norms in F32
    pairs = [(m.tok_embedding, base["model.embed_tokens.weight"], emb_t), (m.final_norm, base["model.norm.weight"], norm_t)]
    if not v.tied:
        pairs.append((m.output, base["lm_head.weight"], out_t))
    for l, lw in enumerate(m.layers):
        p = f"model.layers.{l}."
        q, k = base[p + "self_attn.q_proj.weight"], base[p + "self_attn.k_proj.weight"]
        if interleaved:
            q, k = R.permute_for_interleaved(q, cfg.n_heads), R.permute_for_interleaved(k, cfg.n_kv_heads)
        pairs += [(lw.wq, q, v.dtype), (lw.wk, k, v.dtype), (lw.wv, base[p + "self_attn.v_proj.weight"], v.dtype),
                  (lw.wo, base[p + "self_attn.o_proj.weight"], v.dtype),
                  (lw.w_gate, base[p + "mlp.gate_proj.weight"], v.dtype),
                  (lw.w_up, base[p + "mlp.up_proj.weight"], v.dtype),
                  (lw.w_down, base[p + "mlp.down_proj.weight"], v.dtype),
                  (lw.attn_norm, base[p + "input_layernorm.weight"], norm_t),
                  (lw.ffn_norm, base[p + "post_attention_layernorm.weight"], norm_t)]
    for got, want, t in pairs:
        e = frob_rel(got, want.astype(np.float64))
        check(e <= STORAGE_TOL[t], f"{v.name}: stored weights differ from the base by {e:.2e} (> {STORAGE_TOL[t]} for {t})")


def main() -> int:
    t_start = time.time()
    tmp = R.scratch_dir("kvscope_random_")
    variants = W.write_all(tmp)
    bases = {k: W.base_weights(k) for k in W.CFGS}
    rng = np.random.default_rng(42)
    T = 40  # crosses the 16-token KV pages twice
    tokens = [W.BOS] + [int(t) for t in rng.integers(3, W.VOCAB, size=T - 1)]

    # ---- reference side (no kvscope) ------------------------------------------------
    models, ref = {}, {}
    for v in variants:
        m = R.read_model(v.path)
        models[v.name] = m
        key = v.base.split("_")[0]
        check_weights(v, m, bases[key], W.CFGS[key])
        check(m.config.rope == ("halves" if v.fmt == "hf" else "interleaved"), f"{v.name}: reference RoPE layout")
        ref[v.name] = R.forward(m, tokens)
        # Incremental (KV-cached, one token at a time) reference equals the full pass.
        cache = R.KVCache(m.config, T)
        inc = np.concatenate([R.forward(m, [t], cache) for t in tokens])
        e = R.rel_err(inc, ref[v.name])
        check(e <= 1e-12, f"{v.name}: reference incremental vs full forward rel {e:.2e}")

    groups: dict = {}
    for v in variants:
        if v.dtype == "F32":
            groups.setdefault(v.base, []).append(v.name)
    for base, names in groups.items():
        for n in names[1:]:
            e = R.rel_err(ref[n], ref[names[0]])
            print(f"reference same-function check {n} vs {names[0]}: rel {e:.2e}")
            check(e <= TOL_REF_SAME_FN, f"reference: {n} vs {names[0]} (same weights) rel {e:.2e}")
    check(any(len(n) >= 3 for n in groups.values()), "expected a llama2.c/HF/GGUF triple of the same weights")

    # Negative controls: the metric must see a RoPE layout mix-up and a wrong GQA mapping.
    m = models["hf_f32_tied"]
    wrong = R.Model(R.Config(**{**m.config.__dict__, "rope": "interleaved"}), m.tok_embedding, m.layers,
                    m.final_norm, m.output)
    e_layout = R.rel_err(R.forward(wrong, tokens), ref["hf_f32_tied"])
    check(e_layout > 100 * TOL_REF, f"negative control: wrong RoPE layout only moves logits by {e_layout:.2e}")
    swapped = [R.Layer(**{**lw.__dict__, "wk": lw.wk.reshape(2, -1, lw.wk.shape[1])[::-1].reshape(lw.wk.shape)})
               for lw in m.layers]
    e_gqa = R.rel_err(R.forward(R.Model(m.config, m.tok_embedding, swapped, m.final_norm, m.output), tokens),
                      ref["hf_f32_tied"])
    check(e_gqa > 100 * TOL_REF, f"negative control: swapped KV heads only move logits by {e_gqa:.2e}")
    print(f"negative controls: wrong RoPE layout rel {e_layout:.2e}, swapped KV heads rel {e_gqa:.2e}")
    t_ref = time.time() - t_start

    # ---- kvscope side --------------------------------------------------------------
    if failures:
        print(f"\n{len(failures)} failure(s) on the reference side")
        return 1
    R.kvscope_bin()  # exits 77 if the binary is missing
    rows = []
    kv_logits = {}
    for v in variants:
        info = json.loads(R.run_kvscope(["model-info", "--model", v.path]).stdout)
        c = models[v.name].config
        want = {"format": v.fmt, "dim": c.dim, "hidden_dim": c.hidden_dim, "n_layers": c.n_layers, "n_heads": c.n_heads,
                "n_kv_heads": c.n_kv_heads, "head_dim": c.head_dim, "vocab_size": c.vocab_size,
                "max_seq_len": c.max_seq_len, "tied_embeddings": v.tied,
                "rope_layout": "halves" if v.fmt == "hf" else "interleaved"}
        for k, x in want.items():
            check(info.get(k) == x, f"{v.name}: model-info {k} = {info.get(k)!r}, expected {x!r}")
        check(abs(info.get("rope_theta", 0) / c.rope_theta - 1) < 1e-6, f"{v.name}: model-info rope_theta {info.get('rope_theta')}")
        check(abs(info.get("norm_eps", 0) / c.norm_eps - 1) < 1e-6, f"{v.name}: model-info norm_eps {info.get('norm_eps')}")

        out_dir = tmp / "out" / v.name
        (out_dir / "t1").mkdir(parents=True)
        runs = {"prefill": R.kvscope_logits(v.path, tokens, "prefill", out_dir=out_dir),
                "decode": R.kvscope_logits(v.path, tokens, "decode", out_dir=out_dir),
                "chunked5": R.kvscope_logits(v.path, tokens, "chunked", chunk=5, out_dir=out_dir),
                "chunked": R.kvscope_logits(v.path, tokens, "chunked", out_dir=out_dir),
                "prefill_t1": R.kvscope_logits(v.path, tokens, "prefill", out_dir=out_dir / "t1",
                                               extra=["--threads", "1"])}
        kv_logits[v.name] = runs["prefill"]
        r = ref[v.name]
        errs = {k: R.rel_err(a, r) for k, a in runs.items()}
        for k, e in errs.items():
            check(e <= TOL_REF, f"{v.name}: kvscope {k} vs reference rel {e:.2e} > {TOL_REF}")
        e_modes = max(R.rel_err(runs[k], runs["prefill"]) for k in runs if k != "prefill")
        check(e_modes <= TOL_MODES, f"{v.name}: kvscope modes disagree, rel {e_modes:.2e} > {TOL_MODES}")
        argmax_ok = np.mean(np.argmax(runs["prefill"], 1) == np.argmax(r, 1))
        rows.append((v.name, v.dtype, "tied" if v.tied else "untied", v.note, max(errs.values()),
                     R.abs_err(runs["prefill"], r), e_modes, argmax_ok, float(np.max(np.abs(r)))))

    # Greedy generation up to the context limit (64 positions): kvscope's prompt_ids (its own
    # tokenizer) fed to the reference decoder with kvscope's stopping rule.
    gen_rows = []
    for name in ("l2c_tied", "hf_bf16_tied_2shards", "gguf_q4_1_tied", "gguf_f32_wide_heads"):
        v = next(x for x in variants if x.name == name)
        proc = R.run_kvscope(["generate", "--model", v.path, "--prompt", "the hat and the sting went on",
                              "--max-new-tokens", 100, "--json"], check=False)
        if proc.returncode != 0 and "invalid UTF-8" in proc.stderr:
            # Byte-level BPE output may end in (or contain) a partial UTF-8 sequence.
            check(False, f"{name}: KNOWN C++ BUG: `generate --json` fails when the generated text is not valid "
                         f"UTF-8 (cli/cmd_model.cpp: j.dump(1) throws json type_error 316; dump with "
                         f"error_handler_t::replace): {proc.stderr.strip()}")
            continue
        check(proc.returncode == 0, f"{name}: generate failed: {proc.stderr.strip()}")
        if proc.returncode != 0:
            continue
        j = json.loads(proc.stdout)
        p_ids, kv_gen = [int(x) for x in j["prompt_ids"]], [int(x) for x in j["generated_ids"]]
        ref_gen, gaps, scales = R.greedy_decode(models[name], p_ids, 100, stop_ids=(W.BOS, W.EOS),
                                                context=models[name].config.max_seq_len)
        diff = next((i for i, (a, b) in enumerate(zip(kv_gen, ref_gen)) if a != b), None)
        if diff is None and len(kv_gen) != len(ref_gen):
            diff = min(len(kv_gen), len(ref_gen))
        check(diff is None, f"{name}: generate differs from the reference greedy decoder at step {diff} "
                            f"(kvscope {len(kv_gen)} ids, reference {len(ref_gen)}; reference gap there "
                            f"{gaps[diff] if diff is not None and diff < len(gaps) else float('nan'):.2e})")
        gen_rows.append((name, len(p_ids), len(kv_gen), len(ref_gen), min(gaps) if gaps else float("nan")))

    for base, names in groups.items():
        for n in names[1:]:
            e = R.rel_err(kv_logits[n], kv_logits[names[0]])
            print(f"kvscope same-function check {n} vs {names[0]}: rel {e:.2e}")
            check(e <= TOL_SAME_FN, f"kvscope: {n} vs {names[0]} (same weights) rel {e:.2e}")

    print(f"\n{len(tokens)} tokens; rel = max over positions of max|kvscope - ref| / max|ref| (per row)")
    print(f"{'variant':24s} {'dtype':5s} {'cls':6s} {'max rel vs ref':>14s} {'max abs':>9s} "
          f"{'modes rel':>9s} {'argmax':>6s} {'|logit|max':>10s}  note")
    for name, dt, tied, note, e, ea, em, am, sc in rows:
        print(f"{name:24s} {dt:5s} {tied:6s} {e:14.2e} {ea:9.2e} {em:9.2e} {am:6.2f} {sc:10.2f}  {note}")
    print("\ngreedy generate (context 64): variant, prompt ids, kvscope ids, reference ids, smallest top-2 gap")
    for name, np_, nk, nr, g in gen_rows:
        print(f"  {name:24s} {np_:3d} {nk:4d} {nr:4d} {g:8.4f}")
    print(f"\nreference side {t_ref:.1f}s, total {time.time() - t_start:.1f}s")
    if failures:
        print(f"\n{len(failures)} failure(s)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
