"""``python -m bench``: run the benchmark scenarios, print the table, write the JSON result.

    python -m bench                      # everything (≈10 min on 2 cores)
    python -m bench --quick              # a short smoke run with small sizes (≈2 min)
    python -m bench --scenarios 1,3 --repeat 5 --out bench/results/mine.json
    python -m bench --profile bench/results/profiles   # + py-spy profiles of the gateway
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.context import FULL, QUICK, Context, wait_for_quiet
from bench.procs import ROOT, workdir
from bench.report import ScenarioResult, markdown, table

SCENARIOS = {
    1: ("bench.s1_create", "REST create throughput"),
    2: ("bench.s2_search", "Search at scale (+ footprint, scenario 6)"),
    3: ("bench.s3_claim", "Claim under contention"),
    4: ("bench.s4_dimse", "DIMSE throughput"),
    5: ("bench.s5_events", "Event latency"),
    6: ("bench.s2_search", "Footprint (runs with scenario 2's data)"),
    7: ("bench.s7_mwl", "MWL C-FIND vs UPS C-FIND of the same query"),
}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _meta(args, seconds: float, commit: str, dirty: bool) -> dict:
    import aiohttp
    import pydicom
    import pynetdicom
    import redis

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit, "dirty": dirty,  # of the code under test, when the run started
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
        "versions": {"aiohttp": aiohttp.__version__, "redis-py": redis.__version__,
                     "pynetdicom": pynetdicom.__version__, "pydicom": pydicom.__version__},
        "quick": args.quick, "repeat": args.repeat, "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short smoke run, small sizes")
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7",
                        help="comma-separated scenario numbers (default: all)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions per measurement (default 3, --quick 1)")
    parser.add_argument("--out", default=None,
                        help="JSON result file (default bench/results/YYYYMMDD-HHMMSS.json)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="also record py-spy profiles of the gateway into DIR "
                             "(an extra, unmeasured run per scenario)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                        help="before each scenario, wait up to this long for other processes "
                             "on the machine to go quiet (default 30, --quick 5; 0: don't wait)")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.wait_quiet is None:
        args.wait_quiet = 5.0 if args.quick else 30.0
    wanted = sorted({int(x) for x in args.scenarios.split(",") if x.strip()})
    unknown = [n for n in wanted if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from 1-7")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"{stamp}.json"
    ctx = Context(QUICK if args.quick else FULL, args.repeat, workdir(), args.quick,
                  Path(args.profile).resolve() if args.profile else None)
    ctx.log(f"work directory {ctx.workdir}; scenarios {wanted}; repeat {args.repeat}"
            f"{'; quick' if args.quick else ''}")
    results: list[ScenarioResult] = []
    # BENCH_COMMIT names the code under test when the suite runs from an exported snapshot.
    commit = _git("rev-parse", "--short", "HEAD") or os.environ.get("BENCH_COMMIT", "")
    dirty = bool(_git("status", "--porcelain", "--", "gateway"))
    start = time.monotonic()
    done_modules: set[str] = set()
    try:
        for number in wanted:
            module_name, title = SCENARIOS[number]
            if module_name in done_modules:
                continue  # scenario 6 is measured by scenario 2's module
            done_modules.add(module_name)
            busy = wait_for_quiet(ctx, max_wait=args.wait_quiet)
            ctx.log(f"scenario {number}: {title}")
            t0 = time.monotonic()
            module = importlib.import_module(module_name)
            try:
                produced = (module.run(ctx, wanted) if module_name == "bench.s2_search"
                            else module.run(ctx))
            except Exception:
                produced = ScenarioResult(number, title, error=traceback.format_exc())
                ctx.log(f"scenario {number} failed:\n{produced.error}")
            for res in produced if isinstance(produced, list) else [produced]:
                res.seconds = res.seconds or time.monotonic() - t0
                res.details["foreign_cpu_pct_before"] = round(busy)
                if busy > 25:
                    res.notes.append(f"other processes used {busy:.0f}% of a core when this "
                                     "scenario started: figures are noisy")
                results.append(res)
    finally:
        if not args.keep:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    seconds = time.monotonic() - start
    data = {"meta": _meta(args, seconds, commit, dirty),
            "scenarios": [r.to_json() for r in results]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str))
    print(table(results))
    print()
    print(markdown(results))
    print(f"\nresult written to {out} ({seconds:.0f}s)")
    return 1 if any(r.status in ("FAIL", "ERROR") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
