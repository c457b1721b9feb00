"""Run x-transformers' own test file against x_transformers_cpp's drop-in classes.

The claim that our classes are drop-in replacements is best checked by the upstream tests themselves: this script
takes x-transformers' tests/test_x_transformers.py at a pinned commit (the PyPI sdists ship no tests, so the file
comes from GitHub's raw URL, or from --test-file, and must match a pinned sha256), rewrites its
`from x_transformers... import` statements so that every name we export (Encoder, Decoder, TransformerWrapper, ...)
is imported from x_transformers_cpp instead, the way a user swaps an import, and runs it with pytest. All other names
(AutoregressiveWrapper, Attention, XLAutoregressiveWrapper, ...) stay x-transformers'; so do the classes that
x-transformers' own wrappers import internally. The tests are otherwise unchanged.

pytest runs in one process at the lowest CPU priority with OMP_NUM_THREADS=1, so that it can share a small machine
with a build. The script prints how many tests passed, failed and were skipped, and the failures grouped by the
first line of their error message, and writes the same summary as JSON (--json); pytest's own output goes to a log
file beside it.

    .venv/bin/python scripts/run_x_transformers_suite.py [--test-file PATH] [--no-swap] [--json PATH]
"""
import argparse
import ast
import collections
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

# tests/test_x_transformers.py at x-transformers 2.26.4 (commit 9252ed7). The installed x-transformers may be newer:
# --no-swap shows which of these tests fail against it with its own classes. Update the commit and sha256 together.
UPSTREAM_VERSION = "2.26.4"
UPSTREAM_COMMIT = "9252ed7838021ee61e6c5be0930b3a9a88efdf06"
UPSTREAM_SHA256 = "9bf2c2ee5aa0b83805750eb6c0d0d9ec621544e868aaa5302d6d11b97de564e1"
UPSTREAM_URL = (f"https://raw.githubusercontent.com/lucidrains/x-transformers/{UPSTREAM_COMMIT}"
                "/tests/test_x_transformers.py")

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-file", type=Path, help="a local copy of the pinned upstream test file "
                        "(e.g. from `git show COMMIT:tests/test_x_transformers.py`) instead of downloading it")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "build" / "x_transformers_suite.json",
                        help="where to write the summary (default: build/x_transformers_suite.json)")
    parser.add_argument("--no-swap", action="store_true", help="run the file unchanged, against x-transformers' "
                        "own classes (a baseline for the installed x-transformers)")
    parser.add_argument("--test-timeout", type=int, default=900, help="seconds per test (pytest-timeout, if "
                        "installed; otherwise pytest only dumps the stacks of a test running this long)")
    parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds for the whole pytest run")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --), e.g. -k attn")
    return parser.parse_args()


def read_upstream_tests(local_copy):
    """The pinned upstream test file's text, from local_copy or the pinned URL; its sha256 must match the pin."""
    if local_copy is not None:
        data = local_copy.read_bytes()
    else:
        try:
            with urllib.request.urlopen(UPSTREAM_URL, timeout=60) as response:
                data = response.read()
        except urllib.error.URLError as error:
            sys.exit(f"cannot download {UPSTREAM_URL} ({error.reason}); pass a local copy with --test-file")
    digest = hashlib.sha256(data).hexdigest()
    if digest != UPSTREAM_SHA256:
        sys.exit(f"test file sha256 {digest} differs from the pinned {UPSTREAM_SHA256} (commit {UPSTREAM_COMMIT})")
    return data.decode()


def swap_imports(source, names):
    """source with each `from x_transformers[.sub] import ...` that imports any of `names` split in two: the other
    names from the same module, and those names from x_transformers_cpp. Returns (new source, statements rewritten)."""
    lines = source.splitlines(keepends=True)
    imports = [node for node in ast.walk(ast.parse(source))
               if isinstance(node, ast.ImportFrom) and node.level == 0
               and (node.module == "x_transformers" or node.module.startswith("x_transformers."))
               and any(alias.name in names for alias in node.names)]
    for node in sorted(imports, key=lambda n: n.lineno, reverse=True):
        indent = " " * node.col_offset
        if lines[node.lineno - 1][: node.col_offset].strip():
            raise ValueError(f"line {node.lineno}: an import not at the start of its line")
        spelled = {alias.name: alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names}
        kept = [spelled[a.name] for a in node.names if a.name not in names]
        swapped = [spelled[a.name] for a in node.names if a.name in names]
        statements = [f"from {node.module} import {', '.join(kept)}"] if kept else []
        statements.append(f"from x_transformers_cpp import {', '.join(swapped)}")
        # One line, padded to the statement's height: tracebacks keep the upstream line numbers.
        span = node.end_lineno - node.lineno + 1
        lines[node.lineno - 1: node.end_lineno] = [indent + "; ".join(statements) + "\n"] + ["\n"] * (span - 1)
    return "".join(lines), len(imports)


def run_pytest(test_path, junit_path, log_path, args):
    """Runs pytest on test_path in one low-priority process, its output to log_path; returns (exit code, seconds)."""
    work_dir = test_path.parent
    (work_dir / "pytest.ini").write_text("[pytest]\n")  # keeps any configuration of ours out of the run
    command = ["nice", "-n", "19", sys.executable, "-m", "pytest", str(test_path), "-p", "no:cacheprovider",
               "-c", str(work_dir / "pytest.ini"), "--rootdir", str(work_dir), "--junitxml", str(junit_path),
               "--tb=short", "-o", f"faulthandler_timeout={args.test_timeout}"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        command.append(f"--timeout={args.test_timeout}")
    command += args.pytest_args
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(command, cwd=work_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, time.monotonic() - start


def read_outcomes(junit_path):
    """[(test name, outcome, message)] from pytest's JUnit XML; outcome is passed, failed, error or skipped."""
    outcomes = []
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = element.get("message") or (element.text or "").strip()
                break
        outcomes.append((case.get("name"), outcome, message))
    return outcomes


def summarize(outcomes):
    """Totals by outcome, and the failures and errors grouped by their message's first line, largest group first."""
    totals = collections.Counter(outcome for _, outcome, _ in outcomes)
    groups = collections.defaultdict(list)
    for name, outcome, message in outcomes:
        if outcome in ("failed", "error"):
            first_line = next((line.strip() for line in message.splitlines() if line.strip()), "(no message)")
            groups[first_line[:300]].append(name)
    grouped = [{"reason": reason, "count": len(tests), "tests": tests}
               for reason, tests in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))]
    return {"total": len(outcomes), **{k: totals.get(k, 0) for k in ("passed", "failed", "error", "skipped")},
            "failure_groups": grouped}


def print_summary(summary):
    print(f"{summary['total']} tests: {summary['passed']} passed, {summary['failed']} failed, "
          f"{summary['error']} errors, {summary['skipped']} skipped")
    for group in summary["failure_groups"]:
        print(f"{group['count']:4d}  {group['reason']}\n      e.g. {group['tests'][0]}")


def main():
    args = parse_args()
    import x_transformers_cpp  # fails early, before a long run, if our package does not load

    swapped_names = set(x_transformers_cpp.__all__)
    source = read_upstream_tests(args.test_file)
    rewritten = 0
    if not args.no_swap:
        source, rewritten = swap_imports(source, swapped_names)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.json.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix="x_transformers_suite_") as work_dir:
        test_path = Path(work_dir) / "test_x_transformers.py"
        test_path.write_text(source)
        junit_path = Path(work_dir) / "junit.xml"
        code, seconds = run_pytest(test_path, junit_path, log_path, args)
        if not junit_path.exists():
            sys.exit(f"pytest wrote no results (exit code {code}, None = timed out); see {log_path}")
        summary = summarize(read_outcomes(junit_path))
    summary = {
        "upstream_tests": {"version": UPSTREAM_VERSION, "commit": UPSTREAM_COMMIT, "sha256": UPSTREAM_SHA256},
        "x_transformers_installed": importlib.metadata.version("x-transformers"),
        "x_transformers_cpp": x_transformers_cpp.__version__,
        "swapped_names": [] if args.no_swap else sorted(swapped_names), "rewritten_imports": rewritten,
        "pytest_exit_code": code, "seconds": round(seconds, 1), **summary}
    mode = "unswapped" if args.no_swap else f"{rewritten} imports swapped to x_transformers_cpp"
    print(f"x-transformers tests {UPSTREAM_VERSION} ({UPSTREAM_COMMIT[:7]}) against installed x-transformers "
          f"{summary['x_transformers_installed']}, {mode}; {seconds:.0f} s")
    print_summary(summary)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {args.json}\npytest output: {log_path}")


if __name__ == "__main__":
    main()
