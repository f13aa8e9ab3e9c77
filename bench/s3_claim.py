"""Scenario 3: claim under contention.

Per repetition, 1,000 SCHEDULED workitems on a worklist label of their own; then 32 concurrent
performers (one client process, 32 connections) each loop: search SCHEDULED on that label
(limit 50, the typical performer query of scenario 2), try the page's workitems in random order
with PUT …/state (IN PROGRESS, own Transaction UID) until one claim succeeds, search again, until
the search is empty. (With pages of 10, as measured before, the 32 performers fight over the same
10 workitems: 6 lost races per claim.)

Correctness, checked loudly: every workitem has exactly one winner (one 200), all were claimed, the
gateway accepts each winner's Transaction UID for an update and refuses a loser's.
Target: claims/s ≥ 0.3 × scenario 1's creates/s (measured in this run; when scenario 1 is not
selected, a short create burst on this gateway stands in for it).
"""

from __future__ import annotations

from collections import Counter

from bench.client import ClientProcess
from bench.context import Context, CpuMeter, Profiler
from bench.procs import Gateway
from bench.report import ScenarioResult
from bench.stats import median

PERFORMERS = 32
PAGE = 50  # scenario 2's typical performer query asks for 50


class DoubleClaim(AssertionError):
    pass


def run(ctx: Context) -> ScenarioResult:
    r = ScenarioResult(3, "Claim under contention, 32 performers")
    n = ctx.sizes.claim_items
    reps = []
    with Gateway(ctx.workdir, name="s3-gateway") as gw, ClientProcess("s3-client") as client:
        client.call("prepare", count=n)
        for rep in range(ctx.repeat + (1 if ctx.profile_dir else 0)):
            profiling = rep == ctx.repeat
            label = f"CLAIM{rep}"
            uids = client.call("create_fixed", url=f"{gw.base}/workitems", count=n,
                               concurrency=16, label=label)
            if profiling:
                with Profiler(ctx, gw.pid, "s3-gateway-claim", 10):
                    client.call("claim", base=gw.base, label=label, performers=PERFORMERS,
                                page=PAGE, timeout=10)
                continue
            with CpuMeter(gw.pid, gw.redis_pid()) as cpu:
                res = client.call("claim", base=gw.base, label=label, performers=PERFORMERS,
                                  page=PAGE, timeout=120)
            gw.check_alive()
            winners = Counter(uid for uid, _, _ in res["wins"])
            doubles = sorted(uid for uid, k in winners.items() if k > 1)
            if doubles:
                raise DoubleClaim(f"DOUBLE CLAIM: {len(doubles)} workitems had more than one "
                                  f"winner, e.g. {doubles[:5]}")
            unclaimed = set(uids) - set(winners)
            verify = client.call("verify_claims", base=gw.base, wins=res["wins"],
                                 refused=res["refused"])
            if verify["bad_count"]:
                raise DoubleClaim(f"claim verification failed for {verify['bad_count']} "
                                  f"workitems: {verify['bad'][:5]}")
            rate = len(winners) / res["elapsed"]
            conflicts = sum(1 for _, _, status in res["refused"] if status == 409)
            reps.append({"claims": len(winners), "elapsed": res["elapsed"], "rate": rate,
                         "conflicts": conflicts, "searches": res["searches"],
                         "errors": res["errors"], "unclaimed": len(unclaimed),
                         "timed_out": res["timed_out"], "claim_latency": res["claim_latency"],
                         "server_cpu_ms_per_claim": cpu.seconds * 1000 / max(1, len(winners)),
                         "verified": verify})
            ctx.log(f"s3 rep {rep + 1}: {len(winners)} claims in {res['elapsed']:.1f}s = "
                    f"{rate:.0f}/s, {conflicts} lost races, {res['searches']} searches, "
                    f"errors {res['errors']}, unclaimed {len(unclaimed)}")
            if unclaimed:
                raise AssertionError(f"{len(unclaimed)} workitems were never claimed "
                                     f"(timed out: {res['timed_out']}, errors {res['errors']})")
        creates = ctx.shared.get("s1_creates_per_s")
        source = "scenario 1"
        if creates is None:
            burst = client.call("create_burst", url=f"{gw.base}/workitems",
                                seconds=ctx.sizes.create_seconds, warmup=ctx.sizes.create_warmup,
                                concurrency=16)
            creates, source = burst["rate"], "a create burst on this gateway (scenario 1 not run)"

    rate = median(x["rate"] for x in reps)
    r.metric("claims/s", rate, "/s", creates, f"creates/s ({source})", [x["rate"] for x in reps])
    r.metric("claim PUT latency p50 (winning requests)",
             median(x["claim_latency"].get("p50_ms") for x in reps), "ms")
    r.metric("claim PUT latency p99 (winning requests)",
             median(x["claim_latency"].get("p99_ms") for x in reps), "ms")
    r.metric("lost races (409) per claim", median(x["conflicts"] / x["claims"] for x in reps), "")
    r.metric("searches per claim", median(x["searches"] / x["claims"] for x in reps), "")
    r.metric("server CPU per claim (incl. searches)",
             median(x["server_cpu_ms_per_claim"] for x in reps), "ms")
    ratio = rate / creates if creates else None
    r.target("exactly one winner per workitem", "no double claim, all claimed, tx verified",
             float(sum(x["claims"] for x in reps)), True)
    r.target("claims/s vs creates/s", "≥ 0.3 × scenario 1", ratio,
             None if ratio is None else ratio >= 0.3)
    r.details = {"reps": reps, "performers": PERFORMERS, "page": PAGE, "items": n}
    return r
