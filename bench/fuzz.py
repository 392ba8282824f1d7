"""A longer property-based fuzz run of vidcc's exact passes (the CI test runs a small budget).

    python bench/fuzz.py --examples 500

Writes bench/results/fuzz-<date>.json with the machine, commit, command, budget and outcome."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_result  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="examples per pass")
    args = parser.parse_args()
    os.environ["VIDCC_FUZZ_EXAMPLES"] = str(args.examples)
    import pytest

    start = time.time()
    code = pytest.main(["-q", "-p", "no:cacheprovider", str(Path(__file__).resolve().parents[1] / "tests/robustness/test_fuzz_passes.py")])
    write_result("fuzz", {"examples_per_pass": args.examples, "passed": code == 0, "seconds": round(time.time() - start, 1)})
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
