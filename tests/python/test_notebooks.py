"""The notebooks in notebooks/ run top to bottom (jupyter nbconvert --execute) on the default
trace, with the python3 kernel (Debian's ipykernel), and show what they are for:

  01_tracing          3 figures; its per-layer sink mass / entropy agree with trace-info
  02_policy_search    1 figure; its Pareto front equals `kvscope explore --front`
  03_hardware_whatif  2 figures; 18 grid points printed (prefetch depth x copy overhead)

Also checks that the committed notebooks carry no outputs. Needs the binary and the default
trace, nbconvert and a python3 kernel; exits 77 (skip) without them, saying which.
"""
import glob, json, os, shutil, subprocess, sys, tempfile, time

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
trace = os.path.join(root, "traces", "stories260K-short-prompt.kvt")
nb_dir = os.path.join(root, "notebooks")


def skip(why):
    print("SKIP:", why)
    sys.exit(77)


if not os.path.exists(kv) or not os.path.exists(trace):
    skip(f"no kvscope binary at {kv} or no default trace")
try:
    import nbconvert  # noqa: F401  (only: is it there)
    converter = [sys.executable, "-m", "nbconvert"]
except ImportError:
    exe = shutil.which("jupyter-nbconvert")
    if not exe:
        skip("nbconvert is not installed (scripts/setup.sh installs jupyter-nbconvert and python3-ipykernel)")
    converter = [exe]
try:
    from jupyter_client.kernelspec import KernelSpecManager
    specs = KernelSpecManager().find_kernel_specs()
except ImportError:
    specs = {}
if "python3" not in specs:
    skip("no python3 Jupyter kernel (scripts/setup.sh installs python3-ipykernel)")

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what)


EXPECT = {  # notebook: (at least this many figures, text its outputs must contain)
    "01_tracing.ipynb": (3, ["notebook 1 done", "largest difference to kvscope trace-info"]),
    "02_policy_search.ipynb": (1, ["notebook 2 done", "same front as kvscope explore --front: True"]),
    "03_hardware_whatif.ipynb": (2, ["notebook 3 done", "depth 2  overhead  32.00 us"]),
}
found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(nb_dir, "*.ipynb")))
check(found == sorted(EXPECT), f"notebooks {found}")

# Committed clean: no outputs, no execution counts, small.
for name in found:
    path = os.path.join(nb_dir, name)
    nb = json.load(open(path, encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    check(code and all(not c.get("outputs") and c.get("execution_count") is None for c in code),
          f"{name}: committed with outputs")
    check(nb.get("metadata", {}).get("kernelspec", {}).get("name") == "python3", f"{name}: kernel is not python3")
    check(os.path.getsize(path) < 40000, f"{name}: {os.path.getsize(path)} bytes")

tmp = tempfile.mkdtemp(prefix="kvscope-nb-")
env = dict(os.environ, KVSCOPE_BIN=os.path.abspath(kv), KVSCOPE_SOURCE_DIR=root, MPLBACKEND="module://matplotlib_inline.backend_inline",
           PYDEVD_DISABLE_FILE_VALIDATION="1")
t_all = time.time()
for name in found:
    t0 = time.time()
    p = subprocess.run([*converter, "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=100",
                        "--ExecutePreprocessor.kernel_name=python3", "--output-dir", tmp, name],
                       cwd=nb_dir, env=env, capture_output=True, text=True, timeout=300)
    dt = time.time() - t0
    print(f"{name}: {dt:.1f} s")
    out = os.path.join(tmp, name)
    if p.returncode != 0 or not os.path.exists(out):
        check(False, f"{name}: nbconvert failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
        continue
    nb = json.load(open(out, encoding="utf-8"))
    errors, texts, images = [], [], 0
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            if o["output_type"] == "error":
                errors.append(f'{o.get("ename")}: {o.get("evalue")}')
            elif o["output_type"] == "stream":
                texts.append(o["text"] if isinstance(o["text"], str) else "".join(o["text"]))
                if o.get("name") == "stderr":
                    errors.append("stderr: " + texts[-1][:300])
            if "image/png" in o.get("data", {}):
                images += 1
    text = "".join(texts)
    n_img, needles = EXPECT.get(name, (0, []))
    check(not errors, f"{name}: errors in the outputs: {errors}")
    check(images >= n_img, f"{name}: {images} figures, expected {n_img}")
    for s in needles:
        check(s in text, f"{name}: output lacks {s!r}")
    check(all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"), f"{name}: a cell did not run")

print(f"all notebooks: {time.time() - t_all:.1f} s")
if failures:
    raise SystemExit(f"{len(failures)} failures (executed notebooks kept in {tmp})")
shutil.rmtree(tmp, ignore_errors=True)
print("ok")
