"""What ``web.body_limits.BodyLimits`` costs per request: the bare signed webhook handler
(``benchmarks.bare_webhook``) with and without the middleware, in the same run.

Run by hand, never from the tests::

    .venv/bin/python -m benchmarks.body_limits [--seconds 6] [--rounds 3]

The middleware reads every body in a task of its own and hands it to the app through a
channel, so each request costs a task, a channel and a shielded send more than before.
Rounds alternate between the two apps, as a machine's speed drifts within a run; the table
gives each app's median round and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import trio
from quart_trio import QuartTrio

from benchmarks import bare_webhook
from web.body_limits import BodyLimits

#: The same handler, behind the middleware as ``web.factory.create_app`` installs it.
guarded_app = QuartTrio("bare_webhook_with_body_limits")
guarded_app.post(bare_webhook.PATH)(bare_webhook.webhook)
guarded_app.asgi_app = BodyLimits(guarded_app.asgi_app)  # type: ignore[method-assign, arg-type, assignment]

APPS = {
    "bare handler (baseline)": "benchmarks.bare_webhook:app",
    "with BodyLimits": "benchmarks.body_limits:guarded_app",
}


async def run(seconds: float, rounds: int) -> dict[str, list[bare_webhook.Baseline]]:
    results: dict[str, list[bare_webhook.Baseline]] = {name: [] for name in APPS}
    for _ in range(rounds):
        for name, spec in APPS.items():
            results[name].append(await bare_webhook.measure(seconds, app_spec=spec))
    return results


def table(results: dict[str, list[bare_webhook.Baseline]]) -> str:
    rows = [f"{'app':<26} {'req/s':>8} {'CPU ms/req':>11} {'refused':>8}"]
    medians: dict[str, tuple[float, float]] = {}
    for name, rounds in results.items():
        rate = statistics.median(r.requests_per_second for r in rounds)
        cpu = statistics.median(r.server_cpu_ms_per_request for r in rounds)
        medians[name] = (rate, cpu)
        refused = sum(r.refused for r in rounds)
        rows.append(f"{name:<26} {rate:>8,.0f} {cpu:>11.3f} {refused:>8}")
    (base_rate, base_cpu), (rate, cpu) = medians.values()
    rows.append(
        f"with / without: {rate / base_rate:.2f}x the requests per second, "
        f"{cpu / base_cpu:.2f}x the CPU per request"
    )
    rows.append(
        "rounds (req/s): "
        + ", ".join(
            f"{name.split()[0]} {r.requests_per_second:,.0f}"
            for pair in zip(*results.values(), strict=True)
            for name, r in zip(results, pair, strict=True)
        )
    )
    return "\n".join(rows)


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(table(trio.run(run, args.seconds, args.rounds)))


if __name__ == "__main__":
    main()
