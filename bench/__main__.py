"""``python -m bench [--only NAME]... [--hosts-large N] [--swarm-hosts N,N]``: run the scenarios, print one table,
write results.json. ``BENCH_SWARM_HOSTS=50,200,1000,2000`` (or ``--swarm-hosts``) adds the 2,000-host swarm.

Exit status: 0 when every scenario ran (targets missed or not: a missed target is a finding, not a crash),
1 when a scenario could not be measured (the server did not start, a deployment failed or timed out).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rich.console import Console

from bench.figures import Figure, render, write_json
from bench.scenarios import SCENARIOS
from bench.settings import OVERHEAD_ROUNDS, SCALE_TARGET_HOSTS, SWARM_HOSTS, SWARM_ROUNDS, Settings
from bench.swarm import swarm_hosts_from_env

RESULTS = Path(__file__).resolve().parent / "results.json"


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected sizes like 200,1000, not {text!r}")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Measure the DESIGN §5 performance targets on a real server."
    )
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario (repeat)")
    parser.add_argument("--hosts-large", type=int, default=SCALE_TARGET_HOSTS, metavar="N", help="hosts for 'scale'")
    parser.add_argument(
        "--swarm-hosts",
        type=_sizes,
        default=swarm_hosts_from_env(SWARM_HOSTS),
        metavar="N,N",
        help="simulated hosts for 'swarm' (default: BENCH_SWARM_HOSTS or %(default)s)",
    )
    parser.add_argument(
        "--overhead-rounds", type=int, default=OVERHEAD_ROUNDS, metavar="N", help="interleaved rounds of 'overhead'"
    )
    parser.add_argument(
        "--swarm-rounds", type=int, default=SWARM_ROUNDS, metavar="N", help="timed deployments per size of 'swarm'"
    )
    parser.add_argument("--pickup-runs", type=int, default=20, metavar="N", help="deployments timed by 'pickup'")
    parser.add_argument("--keep", action="store_true", help="keep each scenario's temporary directory")
    parser.add_argument("--profile", action="store_true", help="py-spy the server in 'overhead' and 'scale'")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.hosts_large, args.pickup_runs, args.overhead_rounds, args.swarm_rounds) < 1:
        _parser().error("--hosts-large, --pickup-runs, --overhead-rounds and --swarm-rounds must be at least 1")
    console = Console(width=None if sys.stdout.isatty() else 150)
    settings = Settings(
        console,
        hosts_large=args.hosts_large,
        pickup_runs=args.pickup_runs,
        overhead_runs=args.overhead_rounds,
        swarm_hosts=args.swarm_hosts,
        swarm_rounds=args.swarm_rounds,
        keep=args.keep,
        profile_dir=args.output.parent if args.profile else None,
    )
    figures: list[Figure] = []
    failed: list[str] = []
    for name in args.only or list(SCENARIOS):
        console.rule(f"[bold]{name}[/bold] (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        started = time.monotonic()
        try:
            figures += SCENARIOS[name](settings)
        except Exception as exc:  # one broken scenario must not hide the others' figures
            console.print(f"[red]{name} could not be measured: {type(exc).__name__}: {exc}")
            failed.append(name)
        console.print(f"  [dim]{name} took {time.monotonic() - started:.1f} s[/dim]")
    console.rule()
    render(figures, console)
    write_json(figures, args.output)
    console.print(f"results written to {args.output}")
    if failed:
        console.print(f"[red]not measured: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
