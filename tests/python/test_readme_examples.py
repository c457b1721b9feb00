"""x-transformers' own README examples with our classes swapped in (scripts/check_readme_examples.py): every
example that runs with the pinned x-transformers on this machine runs with x_transformers_cpp too. The sdist is
downloaded from the registry at test time (skipped when it cannot be)."""
import os
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import check_readme_examples as examples  # noqa: E402


@pytest.fixture(scope="module")
def blocks():
    with tempfile.TemporaryDirectory() as workdir:
        try:
            return examples.readme_blocks(workdir)
        except (subprocess.CalledProcessError, OSError, StopIteration) as e:
            pytest.skip(f"the x-transformers {examples.VERSION} sdist could not be downloaded: {e}")


def test_every_runnable_readme_example_runs_with_ours(blocks):
    failures, runnable = [], 0
    for i, code in enumerate(blocks):
        if "x_transformers" not in code or examples.run(code, ours=False, timeout=120) != "ok":
            continue
        runnable += 1
        result = examples.run(code, ours=True, timeout=120)
        if result != "ok":
            failures.append(f"example {i}: {result}")
    print(f"{runnable} README examples run with x-transformers; {runnable - len(failures)} with ours")
    assert runnable >= 50, f"only {runnable} examples ran with x-transformers itself"
    assert not failures, "\n".join(failures)
