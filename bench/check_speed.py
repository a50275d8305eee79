"""Wall time of `pdsim check configs/`: each check, all of them serially, and with --jobs 2.

    .venv/bin/python bench/check_speed.py [PATH ...]
"""

import sys
import time
from pathlib import Path

from planner.check import find_checks, run_checks


def main(paths: list[str]) -> None:
    checks = find_checks(paths or [str(Path(__file__).resolve().parents[1] / "configs")])
    t0 = time.perf_counter()
    serial = run_checks(checks)
    serial_s = time.perf_counter() - t0
    for r in serial:
        n = r.summary.get("requests", 0)
        print(f"{r.status.upper():5} {r.name}: {n} requests simulated in {r.wall_s:.2f} s wall")
    t0 = time.perf_counter()
    parallel = run_checks(checks, jobs=2)
    parallel_s = time.perf_counter() - t0
    same = [r.summary for r in serial] == [r.summary for r in parallel]
    print(f"{len(checks)} checks: serial {serial_s:.2f} s, --jobs 2 {parallel_s:.2f} s (process start included); "
          f"identical summaries: {same}")


if __name__ == "__main__":
    main(sys.argv[1:])
