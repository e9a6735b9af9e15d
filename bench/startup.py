"""Start-up figures: a CLI command's first output against a bare interpreter, and an agent's memory (issue 19).

Every ``deploybot`` command is a fresh interpreter, so what it imports is paid on each start; tests/test_cli_startup.py
checks *what* each command imports, this measures how long it takes. In ``rounds`` interleaved rounds (the order
rotates each round, so drift hits every command alike), each of ``python -c pass`` (until it exits),
``deploybot --help`` and ``deploybot status`` (against a running server) is started and timed until the first byte
it writes. A ratio is the median of the rounds' own ratios to the bare interpreter run in the same round.

An agent is measured as a host runs it: ``deploybot agent`` started by hand with its token file (not one of the
server's local agents, which are forked from one warm interpreter and share its pages), its RSS read from
``/proc/PID/status`` once it is online and idle, and again after it ran a deployment (which loads the AppSpec
parser, the installer and the extractor it keeps).
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.figures import Figure, median, spread
from bench.phases import memory_mib
from bench.revisions import write_revision
from bench.server import BenchServer, fleet_config, host_names
from bench.settings import Settings

CLI_RATIO_TARGET = 5.0  # issue 19: a CLI command's first output within 5x a bare `python -c pass`
AGENT_RSS_TARGET_MIB = 30.0  # issue 19: an idle agent <= 30 MiB RSS


def deploybot_argv() -> list[str]:
    """The console script beside this interpreter, as a user runs it; ``python -m bot`` when there is none."""
    script = Path(sys.executable).with_name("deploybot")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


def first_output(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from starting ``argv`` until its first byte on stdout (or stderr), or until it exits silent."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    process.stdout.read(1)
    elapsed = time.perf_counter() - started
    process.stdout.read()
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}")
    return elapsed


def _compile_sources() -> None:
    """Bytecode for deploybot's own modules, as an installed package has: with PYTHONDONTWRITEBYTECODE set (some
    images set it) an editable install would otherwise compile every module it imports, on every start."""
    root = Path(__file__).resolve().parent.parent
    for package in ("bot", "engine"):
        compileall.compile_dir(root / package, quiet=1)


def startup(settings: Settings) -> list[Figure]:
    console = settings.console
    _compile_sources()
    rounds = settings.overhead_runs
    names = host_names(1)
    with (
        settings.scenario_dir("startup") as workdir,
        BenchServer(workdir / "server", fleet_config(names, local=False), hosts=names) as server,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYBOT_")}
        cli_env = {**env, "DEPLOYBOT_URL": server.url}
        cli_env["DEPLOYBOT_TOKEN"] = (server.data_dir / "api-token").read_text().strip()
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "deploybot --help": [*deploybot_argv(), "--help"],
            "deploybot status": [*deploybot_argv(), "status"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for run in range(rounds):
            order = list(commands)[run % len(commands) :] + list(commands)[: run % len(commands)]
            for name in order:
                times[name].append(first_output(commands[name], cli_env) * 1000)
        idle, deployed = _agent_rss(server, workdir, names[0], env)
    bare = times["python -c pass"]
    for name, values in times.items():
        console.print(f"  {name:<18} (ms): {' '.join(f'{value:.0f}' for value in values)}")
    console.print(f"  deploybot agent RSS: {idle:.1f} MiB idle, {deployed:.1f} MiB after a deployment")
    note = f"median of {rounds} interleaved rounds"
    figures = [Figure("python -c pass", median(bare), "ms", None, f"{note}, {spread(bare, 'ms')}")]
    for name in ("deploybot --help", "deploybot status"):
        ratios = [ours / theirs for ours, theirs in zip(times[name], bare, strict=True)]
        figures += [
            Figure(f"{name}: first output", median(times[name]), "ms", None, f"{note}, {spread(times[name], 'ms')}"),
            Figure(
                f"{name}: first output / python -c pass",
                median(ratios),
                "x",
                CLI_RATIO_TARGET,
                f"per round; {spread(ratios, 'x')}",
            ),
        ]
    figures += [
        Figure(
            "deploybot agent: RSS, idle",
            idle,
            "MiB",
            AGENT_RSS_TARGET_MIB,
            "started by hand, online, before any deployment",
        ),
        Figure("deploybot agent: RSS after a deployment", deployed, "MiB", AGENT_RSS_TARGET_MIB, "idle again"),
    ]
    return figures


def _agent_rss(server: BenchServer, workdir: Path, host: str, env: dict[str, str]) -> tuple[float, float]:
    """(RSS online and idle, RSS idle after one deployment) of a ``deploybot agent`` for ``host``."""
    tokens = json.loads((server.data_dir / "agent-tokens.json").read_text())
    token_file = workdir / "agent-token"
    token_file.write_text(tokens[host])
    token_file.chmod(0o600)
    root = workdir / "agent"
    argv = [*deploybot_argv(), "agent", "--server", server.url, "--name", host, "--token-file", str(token_file)]
    argv += ["--root", str(root), "--prefix", str(root / "fs")]
    with (workdir / "agent.log").open("w") as log:
        agent = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        server.wait_agents_online(1)
        time.sleep(0.5)  # its first heartbeat is answered: idle in its long poll
        idle = memory_mib(agent.pid)[0]
        revision = write_revision(workdir / "revision", hooks=True)
        server.wait_final(server.deploy(revision)[1])
        time.sleep(0.5)
        return idle, memory_mib(agent.pid)[0]
    finally:
        agent.terminate()
        agent.wait(30)
