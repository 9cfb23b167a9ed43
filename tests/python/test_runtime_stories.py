"""stories260K (Karpathy's llama2.c GQA model): kvscope vs the numpy reference and the golden
greedy continuation (golden_greedy.json, see PROVENANCE.md beside the model).

  1. reference (refmodel.read_llama2c + forward) reproduces the golden ids itself: KV-cached
     greedy decoding from BOS + prompt_ids, and the argmax of a teacher-forced pass;
  2. `kvscope logits` (prefill, decode, chunked) over BOS + prompt + generated[:-1] (256
     positions, the model's whole golden run) vs the reference: rel <= 1e-4 per position;
  3. `kvscope generate --prompt "Once upon a time" --max-new-tokens 252 --json`: prompt_ids ==
     [BOS] + golden prompt_ids (llama2.c encode prepends BOS 1; the golden file lists the
     prompt without it) and generated_ids == golden generated_ids, token for token; the
     decoded text equals the golden text after the prompt.

Skips (77) when the model folder is absent (env KVSCOPE_MODELS, else
$KVSCOPE_SOURCE_DIR/../shared/models).
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
failures: list = []


def check(ok: bool, msg: str):
    if not ok:
        failures.append(msg)
        print("FAIL:", msg)


def main() -> int:
    t0 = time.time()
    folder = R.models_dir() / "stories260K"
    model_path = folder / "stories260K.bin"
    golden_path = folder / "golden_greedy.json"
    if not model_path.exists() or not golden_path.exists():
        print(f"SKIP: stories260K not found at {folder} (set KVSCOPE_MODELS to the models folder)")
        return R.SKIP
    golden = json.loads(golden_path.read_text())
    bos, eos = golden.get("bos_id", 1), golden.get("eos_id", 2)
    prompt = [int(x) for x in golden["prompt_ids"]]
    gen = [int(x) for x in golden["generated_ids"]]

    # ---- reference -------------------------------------------------------------------
    m = R.read_llama2c(model_path)
    c = m.config
    print(f"stories260K: dim {c.dim}, layers {c.n_layers}, heads {c.n_heads}/{c.n_kv_heads}, head_dim {c.head_dim}, "
          f"vocab {c.vocab_size}, seq {c.max_seq_len}, tied {m.tied}")
    check((c.dim, c.n_heads, c.n_kv_heads, c.vocab_size, m.tied) == (64, 8, 4, 512, True), "unexpected header")
    ref_gen, gaps, scales = R.greedy_decode(m, [bos] + prompt, len(gen), stop_ids=(bos, eos))
    check(ref_gen == gen, f"reference greedy decode differs from golden at "
                          f"{next((i for i, (a, b) in enumerate(zip(ref_gen, gen)) if a != b), min(len(ref_gen), len(gen)))}")
    seq = [bos] + prompt + gen[:-1]  # 256 positions; logits at t predict seq[t+1] / the next golden id
    ref = R.forward(m, seq)
    tf_argmax = np.argmax(ref[len(prompt):], axis=1).tolist()
    check(tf_argmax == gen, "reference teacher-forced argmax differs from golden")
    print(f"reference: greedy reproduces golden ({len(ref_gen)} ids), smallest top-2 gap {min(gaps):.4f}")

    # ---- kvscope logits ----------------------------------------------------------------
    R.kvscope_bin()
    out = R.scratch_dir("kvscope_stories_")
    errs = {}
    for mode, chunk in (("prefill", None), ("decode", None), ("chunked", 17)):
        t = time.time()
        a = R.kvscope_logits(model_path, seq, mode, chunk=chunk, out_dir=out)
        e = R.rel_err(a, ref)
        errs[mode] = (e, R.abs_err(a, ref), time.time() - t)
        check(e <= TOL, f"kvscope logits {mode} vs reference rel {e:.2e} > {TOL}")
        am = np.argmax(a[len(prompt):], axis=1).tolist()
        check(am == gen, f"kvscope {mode} teacher-forced argmax differs from golden at "
                         f"{[i for i, (x, y) in enumerate(zip(am, gen)) if x != y][:5]}")
    for mode, (e, ea, dt) in errs.items():
        print(f"kvscope logits {mode:8s}: max rel {e:.2e}, max abs {ea:.2e} ({len(seq)} positions, {dt:.2f}s)")

    # ---- kvscope generate ----------------------------------------------------------------
    t = time.time()
    p = R.run_kvscope(["generate", "--model", model_path, "--prompt", golden.get("prompt", "Once upon a time"),
                       "--max-new-tokens", len(gen), "--json"])
    j = json.loads(p.stdout)
    got_prompt = [int(x) for x in j["prompt_ids"]]
    got_gen = [int(x) for x in j["generated_ids"]]
    check(got_prompt == [bos] + prompt, f"generate prompt_ids {got_prompt} != [BOS] + golden {[bos] + prompt}")
    first_diff = next((i for i, (a, b) in enumerate(zip(got_gen, gen)) if a != b), None)
    if first_diff is None and len(got_gen) != len(gen):
        first_diff = min(len(got_gen), len(gen))
    check(first_diff is None, f"generate: generated_ids differ from golden at index {first_diff} "
                              f"({len(got_gen)} generated, golden {len(gen)})")
    want_text = golden.get("text")
    if want_text is not None and want_text.startswith(golden.get("prompt", "")):
        want_tail = want_text[len(golden.get("prompt", "")):]
        check(j.get("text") == want_tail, f"generate: decoded text differs from golden: {j.get('text')!r:.120}")
    print(f"kvscope generate: {len(got_gen)} ids, "
          f"{'identical to golden' if first_diff is None else f'first difference at {first_diff}'} "
          f"({time.time() - t:.2f}s, {j.get('decode_tokens_per_s', 0):.0f} tok/s decode)")

    print(f"total {time.time() - t0:.1f}s")
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
