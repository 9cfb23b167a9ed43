"""Scaffolding shared by the Python end-to-end tests (ctest py.*).

`root` is the source tree (KVSCOPE_SOURCE_DIR, set by ctest), `kv` the kvscope binary
(KVSCOPE_BIN), `default_trace` the committed default trace. A test records failed
checks with check() and ends with finish(): exit 1 listing them, or print OK.
Exit 77 means skipped (ctest SKIP_RETURN_CODE).
"""
import os
import subprocess
import sys

root = os.environ.get("KVSCOPE_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
kv = os.environ.get("KVSCOPE_BIN", os.path.join(root, "build", "cli", "kvscope"))
default_trace = os.path.join(root, "traces", "stories260K-short-prompt.kvt")
failures = []


def skip(why):
    print("SKIP:", why)
    sys.exit(77)


def need(*paths):
    """Skips the test unless the binary and every given path exist."""
    for p in (kv, *paths):
        if not os.path.exists(p):
            skip(f"{p} not found")


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL", what)


def run(*args, ok=True):
    """Runs kvscope; with ok, a non-zero exit ends the test with its output."""
    p = subprocess.run([kv, *args], capture_output=True, text=True)
    if ok and p.returncode != 0:
        print(p.stdout, p.stderr)
        raise SystemExit(f"kvscope {' '.join(args)} failed")
    return p


def finish():
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("OK")
