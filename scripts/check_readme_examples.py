"""The drop-in check a user would run: x-transformers' own README examples, with our classes swapped in.

Downloads the pinned x-transformers sdist from the registry (nothing of it is kept in this repository), extracts
the README's python blocks, and runs each twice on the CPU: as written (x-transformers itself), then with
x_transformers_cpp's classes in place of x-transformers' wherever we have one (the layer stacks, the wrappers,
XTransformer), x-transformers' own classes elsewhere (AutoregressiveWrapper, ViTransformerWrapper, ...). `.cuda()`
is dropped. Prints each example's two results and the counts: how many run with x-transformers, and how many of
those run with ours; with --json, writes them.

    .venv/bin/python scripts/check_readme_examples.py [--timeout 120] [--json out.json] [--only 3,7]
"""
import argparse
import json
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import traceback
import types

VERSION = "2.31.10"


def readme_blocks(workdir):
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"x-transformers=={VERSION}", "-d", workdir], check=True)
    archive = next(p for p in __import__("os").listdir(workdir) if p.endswith(".tar.gz"))
    with tarfile.open(f"{workdir}/{archive}") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/README.md") and m.name.count("/") == 1)
        text = tar.extractfile(member).read().decode()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def dropin_module(ours):
    """A module whose names resolve to ours where we have them (when `ours`), else to x-transformers'."""
    import x_transformers
    import x_transformers_cpp
    module = types.ModuleType("_readme_dropin")

    def lookup(name):
        if ours and name in x_transformers_cpp.__all__:
            return getattr(x_transformers_cpp, name)
        for source in (x_transformers, x_transformers.x_transformers):
            if hasattr(source, name):
                return getattr(source, name)
        raise AttributeError(name)
    module.__getattr__ = lookup
    return module


def prepared(code):
    code = re.sub(r"from x_transformers(\.[\w.]+)? import", "from _readme_dropin import", code)
    code = re.sub(r"\.cuda\(\)", "", code)
    return code.replace("device = 'cuda'", "device = 'cpu'").replace('device="cuda"', 'device="cpu"')


class Timeout(Exception):
    pass


def run(code, ours, timeout):
    import torch
    sys.modules["_readme_dropin"] = dropin_module(ours)

    def expire(*_):
        raise Timeout(f"timed out after {timeout} s")
    signal.signal(signal.SIGALRM, expire)
    signal.alarm(timeout)
    try:
        torch.manual_seed(0)
        exec(compile(prepared(code), "<readme example>", "exec"), {"__name__": "__readme__"})
        return "ok"
    except Timeout as e:
        return str(e)
    except BaseException as e:  # noqa: BLE001  (an example may raise anything, SystemExit included)
        frames = traceback.extract_tb(e.__traceback__)
        where = next((f"line {f.lineno}" for f in reversed(frames) if f.filename == "<readme example>"), "")
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''} ({where})"
    finally:
        signal.alarm(0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=int, default=120)
    parser.add_argument("--json")
    parser.add_argument("--only", help="comma-separated example numbers")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as workdir:
        blocks = readme_blocks(workdir)
    only = {int(i) for i in args.only.split(",")} if args.only else None
    results = []
    for i, code in enumerate(blocks):
        if only is not None and i not in only:
            continue
        if "x_transformers" not in code:
            results.append({"example": i, "theirs": "no x-transformers import", "ours": "-"})
        else:
            theirs = run(code, ours=False, timeout=args.timeout)
            ours = run(code, ours=True, timeout=args.timeout) if theirs == "ok" else "-"
            results.append({"example": i, "theirs": theirs, "ours": ours})
        r = results[-1]
        print(f"{i:3} x-transformers: {r['theirs'][:60]:60} ours: {r['ours']}", flush=True)
    runnable = [r for r in results if r["theirs"] == "ok"]
    ours_ok = [r for r in runnable if r["ours"] == "ok"]
    print(f"\n{len(blocks)} python blocks; {len(runnable)} run with x-transformers {VERSION} on this machine; "
          f"{len(ours_ok)} of those run with x_transformers_cpp swapped in")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"version": VERSION, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
