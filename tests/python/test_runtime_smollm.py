"""SmolLM2-135M-Instruct Q4_1 GGUF: kvscope vs an independent reader + numpy forward pass.

The reference reads the GGUF with the `gguf` package (GGUFReader, gguf.quants.dequantize:
Q4_1 matrices, Q8_0 token embedding, F32 norms) and runs refmodel.forward in float64 with
interleaved RoPE (llama.cpp's converter permuted the Q/K rows), theta 100000, GQA 9/3.

  1. teacher-forced logits of a ~30-token prompt, `kvscope logits` prefill and chunked:
     rel = max over positions of max_j|a-b| / max_j|b| <= 1e-4;
  2. greedy continuations: the ids of `kvscope generate --max-new-tokens 64 --json` equal
     the numpy KV-cached greedy decoder's, which starts from kvscope's own prompt_ids (so
     tokenizer conformance is not tested here) and stops like kvscope (EOS or BOS).
     "The capital of France is" ends with EOS after 29 ids (checks the stop), "The history
     of the Roman Empire begins" runs the full 64.

Skips (77) when models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf is absent.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refmodel as R  # noqa: E402

TOL = 1e-4
N_GEN = 64
GEN_PROMPTS = ["The capital of France is", "The history of the Roman Empire begins"]
LOGITS_PROMPT = ("Once upon a time, in a small village by the sea, there lived an old fisherman "
                 "who told stories about the stars to")
failures: list = []


def check(ok: bool, msg: str):
    if not ok:
        failures.append(msg)
        print("FAIL:", msg)


def main() -> int:
    t0 = time.time()
    path = R.source_dir() / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        print(f"SKIP: {path} not found (scripts/setup.sh downloads it)")
        return R.SKIP
    R.kvscope_bin()

    # ---- kvscope -----------------------------------------------------------------------
    t = time.time()
    gens = []
    for prompt in GEN_PROMPTS:
        j = json.loads(R.run_kvscope(["generate", "--model", path, "--prompt", prompt, "--max-new-tokens", N_GEN,
                                      "--json"]).stdout)
        gens.append((prompt, [int(x) for x in j["prompt_ids"]], [int(x) for x in j["generated_ids"]], j.get("text", "")))
    t_gen = time.time() - t
    toks = json.loads(R.run_kvscope(["tokenize", "--model", path, "--text", LOGITS_PROMPT]).stdout)
    toks = [int(x) for x in (toks["ids"] if isinstance(toks, dict) else toks)]
    print(f"logits prompt: {len(toks)} tokens")
    check(20 <= len(toks) <= 40, f"expected a ~30-token logits prompt, got {len(toks)}")
    out = R.scratch_dir("kvscope_smollm_")
    t = time.time()
    kv = {"prefill": R.kvscope_logits(path, toks, "prefill", out_dir=out),
          "chunked": R.kvscope_logits(path, toks, "chunked", chunk=7, out_dir=out)}
    t_logits = time.time() - t

    # ---- reference ---------------------------------------------------------------------
    t = time.time()
    m = R.read_gguf(path)
    t_read = time.time() - t
    c = m.config
    print(f"reference model: dim {c.dim}, layers {c.n_layers}, heads {c.n_heads}/{c.n_kv_heads}, head_dim {c.head_dim}, "
          f"hidden {c.hidden_dim}, vocab {c.vocab_size}, theta {c.rope_theta:g}, eps {c.norm_eps:.3g}, tied {m.tied}, "
          f"types {m.meta['types']} (read + dequantize {t_read:.1f}s)")
    check((c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, m.tied) ==
          (576, 30, 9, 3, 64, 49152, True), "unexpected SmolLM2 configuration")
    t = time.time()
    ref = R.forward(m, toks)
    for mode, a in kv.items():
        e = R.rel_err(a, ref)
        print(f"logits {mode:8s}: max rel {e:.2e}, max abs {R.abs_err(a, ref):.2e}, "
              f"argmax agreement {np.mean(np.argmax(a, 1) == np.argmax(ref, 1)):.3f}")
        check(e <= TOL, f"kvscope logits {mode} vs reference rel {e:.2e} > {TOL}")
    stops = tuple(x for x in (m.meta.get("bos_token_id"), m.meta.get("eos_token_id")) if x is not None)
    n_full = 0
    for prompt, prompt_ids, kv_gen, text in gens:
        ref_gen, gaps, scales = R.greedy_decode(m, prompt_ids, N_GEN, stop_ids=stops)
        diff = next((i for i, (a, b) in enumerate(zip(kv_gen, ref_gen)) if a != b), None)
        if diff is None and len(kv_gen) != len(ref_gen):
            diff = min(len(kv_gen), len(ref_gen))
        print(f"greedy {prompt!r}: prompt_ids {prompt_ids}")
        if diff is None:
            n_full += len(kv_gen) == N_GEN
            stop = "stopped at EOS/BOS" if len(kv_gen) < N_GEN else "no stop"
            print(f"  {len(kv_gen)} ids identical ({stop}); smallest top-1/top-2 gap on the path {min(gaps):.4f} "
                  f"(step {int(np.argmin(gaps))}), relative {min(g / s for g, s in zip(gaps, scales)):.2e}")
        else:
            g = gaps[diff] if diff < len(gaps) else float("nan")
            s = scales[diff] if diff < len(scales) else float("nan")
            print(f"  first difference at step {diff}; reference top-2 gap there {g:.2e} (relative {g / s:.2e})")
            print(f"  kvscope  : {kv_gen}")
            print(f"  reference: {ref_gen}")
            check(False, f"{prompt!r}: greedy ids differ from the reference at step {diff} (reference gap {g:.2e}, "
                         f"{'a near-tie within the logit tolerance' if g / s <= TOL else 'not a near-tie'})")
        print(f"  text: {prompt}{text!r:.160}")
    check(n_full >= 1, f"no prompt produced the full {N_GEN} ids")
    t_ref = time.time() - t

    print(f"generate {t_gen:.1f}s, logits {t_logits:.1f}s, reference read {t_read:.1f}s, "
          f"reference forward+greedy {t_ref:.1f}s, total {time.time() - t0:.1f}s")
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
