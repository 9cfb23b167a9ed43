"""The default traces committed in traces/ regenerate byte for byte with their script.

Runs scripts/make_default_traces.sh into a temporary folder with the kvscope binary under
test and compares the files. Skips (77) when ../shared/models/stories260K is absent.
"""
import filecmp, os, subprocess, sys, tempfile

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
models = os.environ.get("KVSCOPE_MODELS", os.path.join(root, "..", "shared", "models"))
if not os.path.exists(os.path.join(models, "stories260K", "stories260K.bin")):
    print(f"SKIP: stories260K not found under {models}")
    sys.exit(77)

names = ["stories260K-short-prompt.kvt", "stories260K-long-prompt.kvt"]
with tempfile.TemporaryDirectory() as d:
    env = dict(os.environ, KVSCOPE_BIN=kv, KVSCOPE_MODELS=models)
    subprocess.run(["bash", os.path.join(root, "scripts", "make_default_traces.sh"), d], check=True, env=env)
    bad = []
    for n in names:
        a, b = os.path.join(root, "traces", n), os.path.join(d, n)
        same = filecmp.cmp(a, b, shallow=False)
        print(f"{n}: committed {os.path.getsize(a)} bytes, regenerated {os.path.getsize(b)} bytes, identical={same}")
        if not same:
            bad.append(n)
    total = sum(os.path.getsize(os.path.join(root, "traces", n)) for n in names)
    print(f"default traces together: {total} bytes ({total / 2**20:.2f} MiB; limit 8 MiB)")
    assert total <= 8 * 2**20, "default traces exceed 8 MiB"
    assert not bad, f"not byte-identical after regeneration: {bad}"
print("1 passed, 0 failed")
