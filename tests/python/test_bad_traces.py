"""Damaged .kvt traces: `kvscope trace-info` must refuse each one cleanly.

Runs `kvscope trace-info FILE` on every trace of tests/data/bad-traces/ (MANIFEST.json;
written by scripts/make_bad_traces.py, described in its README.md). Contract for every bad
trace:

  * exit status 1 (not a signal, not an abort);
  * stderr exactly one line, starting with "kvscope: error:", naming the file (its path)
    and a byte offset ("offset N"), and containing the manifest's expected text;
  * no sanitizer report (when kvscope is built with -DKVSCOPE_SANITIZE=ON: such a report
    would add stderr lines).

valid.kvt is the control: exit status 0, nothing on stderr. Exit status 77 (skip) when the
kvscope binary is absent.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

SKIP = 77


def source_dir() -> Path:
    s = os.environ.get("KVSCOPE_SOURCE_DIR")
    return Path(s) if s else Path(__file__).resolve().parents[2]


def kvscope_bin() -> str:
    b = os.environ.get("KVSCOPE_BIN") or str(source_dir() / "build" / "cli" / "kvscope")
    if not os.path.exists(b):
        print(f"SKIP: kvscope binary not found at {b} (set KVSCOPE_BIN)")
        sys.exit(SKIP)
    return b


def trace_info(binary: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "trace-info", str(path)], capture_output=True, text=True, timeout=120)


def check_bad(binary: str, path: Path, expect: list[str]) -> tuple[list[str], str]:
    p = trace_info(binary, path)
    lines = p.stderr.splitlines()
    first = lines[0] if lines else ""
    problems = []
    if p.returncode != 1:
        problems.append(f"exit status {p.returncode}, expected 1" + (" (killed by a signal)" if p.returncode < 0 else ""))
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected exactly 1")
    if not first.startswith("kvscope: error:"):
        problems.append("stderr does not start with 'kvscope: error:'")
    if str(path) not in first:
        problems.append("the error does not name the file")
    if not re.search(r"\boffset \d+", first):
        problems.append("the error names no byte offset")
    for e in expect:
        if e not in first:
            problems.append(f"missing {e!r}")
    return problems, first


def main() -> int:
    binary = kvscope_bin()
    corpus = source_dir() / "tests" / "data" / "bad-traces"
    manifest = json.loads((corpus / "MANIFEST.json").read_text())
    failures = []

    valid = corpus / manifest["valid"]
    p = trace_info(binary, valid)
    if p.returncode != 0 or p.stderr.strip():
        failures.append(f"control {valid.name}: exit {p.returncode}, stderr {p.stderr.strip()[:300]!r}")
    else:
        print(f"ok   {valid.name:30s} (control: reads cleanly)")

    listed = set()
    for case in manifest["cases"]:
        path = corpus / case["file"]
        listed.add(case["file"])
        if not path.exists():
            failures.append(f"{case['file']}: listed in MANIFEST.json but missing")
            continue
        problems, first = check_bad(binary, path, case["expect"])
        print(f"{'ok  ' if not problems else 'FAIL'} {case['file']:30s} {first[:170]}")
        if problems:
            bug = f"\n      KNOWN BUG: {case['known_bug']}" if case.get("known_bug") else ""
            failures.append(f"{case['file']} ({case['what']}): {'; '.join(problems)}\n      stderr: {first[:300]}{bug}")
    unlisted = sorted(p.name for p in corpus.glob("*.kvt") if p.name not in listed and p.name != manifest["valid"])
    if unlisted:
        failures.append(f"traces not in MANIFEST.json: {', '.join(unlisted)}")

    print(f"\n{len(manifest['cases'])} bad traces, 1 valid control")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for f in failures:
            print("  -", f)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
