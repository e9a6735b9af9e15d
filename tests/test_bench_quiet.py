"""The bench's "other processes' load" (bench/phases.py): what tells a quiet round from a busy one. Everything the
bench started is its own load, wherever it runs in the process tree; kernel threads are no one's; a process that
is not under the bench is someone else's, whoever started it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import phases


def _sample(at: float, steal: float = 0.0, **others: float) -> phases.MachineSample:
    """A sample whose keyword names are ``p<pid>_<start>``."""
    parsed = {(int(name[1:].split("_")[0]), int(name.split("_")[1])): cpu for name, cpu in others.items()}
    return phases.MachineSample(at, parsed, steal)


def test_others_share_is_what_their_processes_used_over_all_cores_while_the_round_ran() -> None:
    cores = os.cpu_count() or 1
    start = _sample(10.0, steal=1.0, p100_5=3.0, p200_7=0.5, p300_9=2.0)
    end = _sample(
        12.0,
        steal=1.2,  # another VM took 0.2 s of the machine
        p100_5=3.5,  # 0.5 s more
        p200_7=0.5,  # idle
        p400_11=0.3,  # started in between: all of it
        # p300_9 ended in between: what it used since the start is its parent's to report, once reaped
    )
    assert phases.foreign_share(start, end) == pytest.approx((0.5 + 0.3 + 0.2) / (2.0 * cores))


def test_a_reused_pid_is_a_new_process_not_the_old_ones_later_self() -> None:
    start = _sample(0.0, p100_5=9.0)
    end = _sample(1.0, p100_50=0.25)  # pid 100 again, started later: 0.25 s, not 0.25 - 9.0
    assert phases.foreign_share(start, end) == pytest.approx(0.25 / (os.cpu_count() or 1))


def test_descendants_are_the_root_and_every_process_under_it_however_deep() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 13: 11, 20: 1, 21: 20, 14: 13}
    assert phases.descendants(10, parents) == {10, 11, 12, 13, 14}
    assert phases.descendants(99, parents) == {99}


def test_a_real_sample_leaves_out_the_bench_and_its_children_and_counts_an_orphan_as_someone_elses() -> None:
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # Started by a shell that exits at once: the sleeper is reparented away from this process, as a process of
    # another user's would be.
    spawned = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
    )
    orphan = int(spawned.stdout)
    try:
        sample = phases.machine_sample()
        seen = {pid for pid, _ in sample.others}
        assert orphan in seen
        assert ours.pid not in seen
        assert os.getpid() not in seen
        stats = phases.process_stats()
        assert not any(pid in seen for pid, stat in stats.items() if stat.kernel_thread)
    finally:
        ours.kill()
        ours.wait()
        os.kill(orphan, 9)
