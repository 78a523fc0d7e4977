"""Runs every benchmark in turn (`make bench`): `python -m bench.run_all [--size ...]`.

Each benchmark prints its table and writes bench/results/<name>.json; the exit status is
non-zero when any of them reports a failure (an unanswered message, a wrong LLM call
count). How long: tiny about a minute, small about a quarter of an hour, full about an hour
on 2 cores.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Sequence

from bench import core_throughput, llm_calls, scale, telegram_latency
from bench.common import parse_args

BENCHMARKS: dict[str, Callable[[Sequence[str]], int]] = {
    "llm_calls": llm_calls.main,
    "core_throughput": core_throughput.main,
    "telegram_latency": telegram_latency.main,
    "scale": scale.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("run_all", argv, __doc__ or "run_all")
    failed = []
    for name, run in BENCHMARKS.items():
        print(f"\n=== {name} (--size {args.size}) ===", flush=True)
        started = time.perf_counter()
        try:
            status = run(["--size", args.size, "--out", str(args.out)])
        except Exception:
            # One broken benchmark must not hide the others' figures.
            traceback.print_exc()
            status = 2
        print(f"=== {name}: exit {status} after {time.perf_counter() - started:.0f} s ===")
        if status != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
