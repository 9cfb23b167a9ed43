#!/usr/bin/env python3
"""SmolLM2 tokenizer: kvscope vs an independent Hugging Face `tokenizers` build.

The reference is built from the GGUF's own tokens and merges (read with the `gguf`
package) with the pre-tokenizer SmolLM2 ships in its tokenizer.json:
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)].
A few hundred varied strings (Unicode, accents, CJK, emoji, digits, whitespace runs,
tabs/newlines, code, contractions) go through

    $KVSCOPE_BIN tokenize --model <gguf> --input-json <file.json>

which prints a JSON array of id arrays (no BOS); every id sequence must match.

Environment: KVSCOPE_BIN (the kvscope binary), KVSCOPE_SOURCE_DIR (repository root).
Exit code 77 (skipped, with the reason printed) when an input is missing.
"""
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile

SKIP = 77


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(SKIP)


ROOT = pathlib.Path(os.environ.get("KVSCOPE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
GGUF = ROOT / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BIN = os.environ.get("KVSCOPE_BIN", str(ROOT / "build" / "cli" / "kvscope"))


def reference_tokenizer(path):
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    reader = GGUFReader(str(path))

    def strings(key):
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("duplicate tokens in the GGUF vocabulary")
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


FIXED = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n \n", "\t\t \t",
    "Hello world", " Hello world", "Hello  world", "Hello\tworld\n",
    "I'm sure you're right, we've seen it; they'll know, he'd say, it's fine.",
    "I'M SURE YOU'RE RIGHT", "'s 't 're 've 'm 'll 'd", "rock 'n' roll", "y'all'd've",
    "The year 2024 has 366 days.", "3.14159265358979", "1,000,000 and 10^9", "v2.0.1-rc3",
    "0x7fff_ffff == 2147483647", "phone: +1 (555) 123-4567", "12345678901234567890",
    "café naïve résumé Führer Straße", "Ελληνικά: αβγ Ωμέγα", "нещо на Български език",
    "مرحبا بالعالم ١٢٣٤", "नमस्ते दुनिया", "日本語のテキストです。", "中文文本，标点！", "안녕하세요 세계",
    "ภาษาไทย", "កាន់តែពិសេសអាចខលចេញ", "e\u0301 vs \u00e9", "zero\u200bwidth", "nb\u00a0sp ideographic\u3000space",
    "line\u2028sep", "½ ¼ ¾ ² ³ Ⅻ ①", "１２３ full-width", "🦙 llama", "👨‍👩‍👧 family", "🇫🇷🇯🇵 flags",
    "👍🏽 thumbs", "✅ done ❌ not", "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated)",
    "def f(x):\n    return x**2 + 1\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "#include <stdio.h>\nint main() { printf(\"%d\\n\", 42); }",
    "SELECT * FROM t WHERE id IN (1, 2, 3);", "<div class=\"a\">x &amp; y</div>",
    "{\"key\": [1, 2.5, null, true]}", "    indented\n        more\n\tand tab",
    "!!!!!!", "??? ... --- ===", "''''''```````\"\"\"\"......!!!!!!??????",
    "------======= нещо", "a\x04b control", "tab\tinside\tline", "trailing spaces   ",
    "   leading spaces", "mixed \t\n \t\n whitespace", "https://example.com/path?q=1&r=2#frag",
    "user@example.com", "C++20 std::vector<int> v{1, 2, 3};", "$HOME/.config && echo $?",
]

POOL = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Hello", "WORLD", "tokenizer",
    "don't", "it's", "we'll", "they're", "I've", "'", "\"", "(", ")", "[", "]", "{", "}", ",", ".",
    "!", "?", ":", ";", "-", "_", "+", "=", "*", "/", "\\", "#", "@", "%", "&", "|", "~", "`", "^",
    "0", "7", "42", "2024", "3.5", "1e-9", "100000", "٣", "७", "½", "²",
    "café", "naïve", "Ωμέγα", "Привет", "日本", "語", "中文", "한국어", "ไทย", "עברית", "العربية",
    "🦙", "🚀", "😁", "👍🏽", "🇩🇪", "❤️", "…", "—", "–", "«", "»", "“", "”", "€", "£", "¥",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000",
    "x = 1", "if (a && b)", "return;", "<tag>", "</tag>", "=>", "->", "::", "!=", "==",
]


def random_strings(n, seed=1234):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 14)
        parts = []
        for _ in range(k):
            p = rng.choice(POOL)
            parts.append(p)
            if rng.random() < 0.6:
                parts.append(rng.choice([" ", " ", " ", "", "\n", "  ", "\t"]))
        out.append("".join(parts))
    return out


def main():
    if not GGUF.exists():
        skip(f"SmolLM2 GGUF not found at {GGUF} (scripts/setup.sh fetches it)")
    if not os.path.exists(BIN):
        skip(f"kvscope binary not found at {BIN} (set KVSCOPE_BIN)")
    try:
        import gguf  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as e:
        skip(f"python package missing: {e.name} (scripts/setup.sh installs it into .venv)")
    probe = subprocess.run([BIN, "tokenize", "--help"], capture_output=True, text=True)
    if probe.returncode != 0 or "--input-json" not in probe.stdout + probe.stderr:
        skip(f"{BIN} has no 'tokenize --input-json' subcommand")

    ref = reference_tokenizer(GGUF)
    texts = FIXED + random_strings(300)
    expected = [ref.encode(t, add_special_tokens=False).ids for t in texts]

    with tempfile.TemporaryDirectory() as d:
        inp = pathlib.Path(d) / "inputs.json"
        inp.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        run = subprocess.run([BIN, "tokenize", "--model", str(GGUF), "--input-json", str(inp)],
                             capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        print(f"FAIL: kvscope tokenize exited {run.returncode}\n{run.stderr}")
        return 1
    got = json.loads(run.stdout)
    if len(got) != len(texts):
        print(f"FAIL: {len(got)} id arrays for {len(texts)} inputs")
        return 1

    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    for i in bad[:10]:
        print(f"MISMATCH {i}: {texts[i]!r}\n  kvscope {got[i]}\n  hf      {expected[i]}")
    # The reference decodes its own ids back (sanity check of the reference itself).
    lossy = [t for t, e in zip(texts, expected) if ref.decode(e) != t and "\x04" not in t]
    if lossy:
        print(f"note: the reference does not round-trip {len(lossy)} inputs, e.g. {lossy[0]!r}")
    print(f"{len(texts) - len(bad)}/{len(texts)} strings match the HF tokenizers reference")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
