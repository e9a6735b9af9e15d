"""The pure deployment state machine: every transition, the reference's outcomes, and the illegal inputs."""

from __future__ import annotations

import copy
import json

import pytest

from engine.core.configs import BUILTIN_CONFIGS, MinimumHealthyHosts, MinimumHealthyHostsType, TrafficStep
from engine.core.errors import InvalidTransition
from engine.core.events import (
    AlarmFired,
    CancelTargets,
    ContinueRequested,
    EventFailed,
    EventSucceeded,
    Finish,
    InternalError,
    PauseRequested,
    PromoteRequested,
    ResumeRequested,
    RunEvent,
    ShiftTraffic,
    StartBlocked,
    Started,
    StartRollback,
    StartTimer,
    StopRequested,
    TargetLost,
    TimerElapsed,
    TrafficShifted,
    TrafficShiftFailed,
)
from engine.core.machine import DeploymentMachine, MachineOptions
from engine.core.model import AutoRollback, AutoRollbackEvent, DeploymentStatus, DeploymentType, ErrorCode, Platform
from engine.core.model import LifecycleEvent as E
from engine.core.simulate import simulate
from engine.core.snapshot import EncodedJson, stages_from_json, stages_to_json, state_from_json, state_to_json
from engine.core.stages import (
    StageOptions,
    TargetStage,
    TrafficStage,
    WaitKind,
    WaitStage,
    blue_green_rollback_stages,
    deployment_stages,
)
from engine.core.step_record import StepRecord

ONE = BUILTIN_CONFIGS["CodeDeployDefault.OneAtATime"].minimum_healthy_hosts
HALF = BUILTIN_CONFIGS["CodeDeployDefault.HalfAtATime"].minimum_healthy_hosts
ALL = BUILTIN_CONFIGS["CodeDeployDefault.AllAtOnce"].minimum_healthy_hosts
ROLLBACK_ON_FAILURE = AutoRollback(True, frozenset({AutoRollbackEvent.DEPLOYMENT_FAILURE}))
ROLLBACK_ALL = AutoRollback(True, frozenset(AutoRollbackEvent))


def hosts(n: int) -> tuple[str, ...]:
    return tuple(f"web-{i}" for i in range(1, n + 1))


def in_place(n: int, health: MinimumHealthyHosts | None, *, lb: bool = False) -> tuple:
    assert health is not None
    return deployment_stages(
        StageOptions(Platform.SERVER, DeploymentType.IN_PLACE, health, with_load_balancer=lb), hosts(n)
    )


def fail_validate(*positions: int) -> dict[str, E]:
    return {f"web-{p}": E.VALIDATE_SERVICE for p in positions}


# -- the reference's outcomes (§6.1, §6.2, §10.14) ------------------------------------------------------------

OUTCOMES = [
    # (name, hosts, health, failing positions, status, error, attempted, wave sizes)
    ("one-at-a-time all good", 4, ONE, (), "Succeeded", None, 4, [1, 1, 1, 1]),
    ("one-at-a-time first fails", 4, ONE, (1,), "Failed", ErrorCode.HEALTH_CONSTRAINTS, 1, [1]),
    ("one-at-a-time 2nd of 4 fails", 4, ONE, (2,), "Failed", ErrorCode.HEALTH_CONSTRAINTS, 2, [1, 1]),
    ("one-at-a-time last host exception", 4, ONE, (4,), "Succeeded", None, 4, [1, 1, 1, 1]),
    ("one-at-a-time 9 hosts, 9th fails", 9, ONE, (9,), "Succeeded", None, 9, [1] * 9),
    ("one-at-a-time single host fails", 1, ONE, (1,), "Failed", ErrorCode.HEALTH_CONSTRAINTS, 1, [1]),
    ("half-at-a-time 4 hosts all good", 4, HALF, (), "Succeeded", None, 4, [2, 2]),
    ("half-at-a-time 1 of 4 fails", 4, HALF, (3,), "Succeeded", None, 4, [2, 2]),
    ("half-at-a-time 2 of 4 fail in wave 1", 4, HALF, (1, 2), "Failed", ErrorCode.HEALTH_CONSTRAINTS, 2, [2]),
    ("half-at-a-time 9: 4 fail in wave 1", 9, HALF, (1, 2, 3, 4), "Failed", ErrorCode.HEALTH_CONSTRAINTS, 4, [4]),
    ("half-at-a-time 9: 3 fail in wave 1", 9, HALF, (1, 2, 3), "Succeeded", None, 9, [4, 1, 1, 1, 1, 1]),
    ("all-at-once 3 of 4 fail", 4, ALL, (1, 2, 3), "Succeeded", None, 4, [4]),
    ("all-at-once all fail", 4, ALL, (1, 2, 3, 4), "Failed", ErrorCode.HEALTH_CONSTRAINTS, 4, [4]),
    ("all-at-once 1 of 4 fails", 4, ALL, (2,), "Succeeded", None, 4, [4]),
    (
        "host count 6 of 9: up to three at once",
        9,
        MinimumHealthyHosts(MinimumHealthyHostsType.HOST_COUNT, 6),
        (),
        "Succeeded",
        None,
        9,
        [3, 3, 3],
    ),
    (
        "fleet percent 40 of 9: min 4, up to five",
        9,
        MinimumHealthyHosts(MinimumHealthyHostsType.FLEET_PERCENT, 40),
        (),
        "Succeeded",
        None,
        9,
        [5, 4],
    ),
    (
        "95 percent of 10 cannot start",
        10,
        MinimumHealthyHosts(MinimumHealthyHostsType.FLEET_PERCENT, 95),
        (),
        "Failed",
        ErrorCode.HEALTH_CONSTRAINTS_INVALID,
        0,
        [],
    ),
    ("no hosts", 0, ALL, (), "Failed", ErrorCode.NO_INSTANCES, 0, []),
]


@pytest.mark.parametrize(
    ("n", "health", "failing", "status", "error", "attempted", "waves"),
    [case[1:] for case in OUTCOMES],
    ids=[case[0] for case in OUTCOMES],
)
def test_reference_outcomes(n, health, failing, status, error, attempted, waves) -> None:
    result = simulate(in_place(n, health), fail_validate(*failing))
    assert result.status == status
    assert result.error_code == error
    assert len(result.attempted) == attempted
    assert [len(w) for w in result.waves] == waves


def test_failed_host_runs_no_more_events_and_message_names_it() -> None:
    machine = DeploymentMachine(in_place(2, ONE))
    commands = machine.send(Started())
    assert commands == [RunEvent("web-1", E.APPLICATION_STOP)]
    for event in (E.APPLICATION_STOP, E.DOWNLOAD_BUNDLE, E.BEFORE_INSTALL, E.INSTALL, E.AFTER_INSTALL):
        machine.send(EventSucceeded("web-1", event))
    machine.send(EventSucceeded("web-1", E.APPLICATION_START))
    commands = machine.send(EventFailed("web-1", E.VALIDATE_SERVICE, 4, "exit code 1"))
    finish = commands[-1]
    assert isinstance(finish, Finish) and finish.status is DeploymentStatus.FAILED
    assert "ValidateService failed on web-1: exit code 1" in finish.message
    assert CancelTargets(("web-2",)) in commands
    assert machine.state.targets["web-2"].statuses[E.APPLICATION_STOP] == "Skipped"
    assert machine.state.targets["web-2"].status == "Skipped"


def test_event_order_with_load_balancer() -> None:
    machine = DeploymentMachine(in_place(1, ALL, lb=True))
    seen = []
    command = machine.send(Started())[0]
    while isinstance(command, RunEvent):
        seen.append(command.event)
        command = machine.send(EventSucceeded(command.target, command.event))[0]
    assert seen[:3] == [E.BEFORE_BLOCK_TRAFFIC, E.BLOCK_TRAFFIC, E.AFTER_BLOCK_TRAFFIC]
    assert seen[-3:] == [E.BEFORE_ALLOW_TRAFFIC, E.ALLOW_TRAFFIC, E.AFTER_ALLOW_TRAFFIC]
    assert isinstance(command, Finish) and command.status is DeploymentStatus.SUCCEEDED


# -- rollback decisions ---------------------------------------------------------------------------------------


def test_failure_triggers_rollback_when_enabled() -> None:
    result = simulate(in_place(4, ONE), fail_validate(2), MachineOptions(auto_rollback=ROLLBACK_ON_FAILURE))
    assert result.rollback == StartRollback(AutoRollbackEvent.DEPLOYMENT_FAILURE, rerouted=False)


def test_rollback_deployment_never_rolls_back() -> None:
    options = MachineOptions(auto_rollback=ROLLBACK_ON_FAILURE, is_rollback=True)
    assert simulate(in_place(4, ONE), fail_validate(1), options).rollback is None


def test_failure_without_rollback_setting() -> None:
    assert simulate(in_place(4, ONE), fail_validate(1)).rollback is None


@pytest.mark.parametrize(
    ("auto", "explicit", "expect_rollback"),
    [
        (AutoRollback(), None, False),
        (AutoRollback(), True, True),
        (ROLLBACK_ALL, None, True),
        (ROLLBACK_ALL, False, False),
        (ROLLBACK_ON_FAILURE, None, False),  # a manual stop is not a failure
    ],
)
def test_stop_requested(auto: AutoRollback, explicit: bool | None, expect_rollback: bool) -> None:
    machine = DeploymentMachine(in_place(3, ONE), MachineOptions(auto_rollback=auto))
    machine.send(Started())
    commands = machine.send(StopRequested(rollback=explicit, actor="alice"))
    assert CancelTargets(("web-1", "web-2", "web-3")) in commands
    assert any(isinstance(c, StartRollback) for c in commands) is expect_rollback
    finish = commands[-1]
    assert finish == Finish(DeploymentStatus.STOPPED, ErrorCode.MANUAL_STOP, "stopped by alice")


def test_stop_before_start() -> None:
    machine = DeploymentMachine(in_place(2, ONE))
    commands = machine.send(StopRequested())
    assert commands[-1].status is DeploymentStatus.STOPPED


def test_alarm_stops_and_rolls_back() -> None:
    auto = AutoRollback(True, frozenset({AutoRollbackEvent.DEPLOYMENT_STOP_ON_ALARM}))
    machine = DeploymentMachine(in_place(2, ONE), MachineOptions(auto_rollback=auto))
    machine.send(Started())
    commands = machine.send(AlarmFired(("api-5xx",)))
    assert StartRollback(AutoRollbackEvent.DEPLOYMENT_STOP_ON_ALARM) in commands
    assert commands[-1] == Finish(DeploymentStatus.STOPPED, ErrorCode.ALARM_ACTIVE, "alarm api-5xx fired")


def test_ignore_application_stop_failures() -> None:
    machine = DeploymentMachine(in_place(1, ONE), MachineOptions(ignore_application_stop_failures=True))
    machine.send(Started())
    assert machine.send(EventFailed("web-1", E.APPLICATION_STOP, 4)) == [RunEvent("web-1", E.DOWNLOAD_BUNDLE)]


def test_target_lost_fails_its_current_event() -> None:
    machine = DeploymentMachine(in_place(1, ONE))
    machine.send(Started())
    commands = machine.send(TargetLost("web-1", "no heartbeat for 60 s"))
    assert commands[-1].status is DeploymentStatus.FAILED
    assert "ApplicationStop failed on web-1: no heartbeat for 60 s" in commands[-1].message
    assert machine.state.targets["web-1"].statuses[E.APPLICATION_STOP] == "Failed"


def test_target_lost_for_idle_host_is_ignored() -> None:
    machine = DeploymentMachine(in_place(2, ONE))
    machine.send(Started())
    assert machine.send(TargetLost("web-2")) == []


# -- traffic and waits ----------------------------------------------------------------------------------------

CANARY = (TrafficStep(10, 300), TrafficStep(100, 0))
LINEAR = (TrafficStep(30, 60), TrafficStep(60, 60), TrafficStep(90, 60), TrafficStep(100, 0))


def blue_green(steps=CANARY, *, ready: float | None = None, termination: float = 0.0, watch: float = 0.0):
    options = StageOptions(
        Platform.SERVER,
        DeploymentType.BLUE_GREEN,
        ALL,
        traffic_steps=steps,
        ready_wait_seconds=ready,
        termination_wait_seconds=termination,
        watch_seconds=watch,
    )
    return deployment_stages(options, ("green-1", "green-2"), ("blue-1", "blue-2"))


def test_blue_green_stage_list() -> None:
    stages = blue_green(ready=600, termination=300)
    assert [s.name for s in stages] == ["install", "ready", "traffic", "after-allow", "block-original", "termination"]
    install = stages[0]
    assert isinstance(install, TargetStage) and install.events[-1] is E.BEFORE_ALLOW_TRAFFIC
    block = stages[4]
    assert isinstance(block, TargetStage) and block.events == (
        E.BEFORE_BLOCK_TRAFFIC,
        E.BLOCK_TRAFFIC,
        E.AFTER_BLOCK_TRAFFIC,
    )


def test_canary_steps_with_waits() -> None:
    result = simulate(blue_green())
    assert result.status is DeploymentStatus.SUCCEEDED
    assert result.traffic == [10, 100]
    assert result.waited == 300


def test_linear_steps() -> None:
    assert simulate(blue_green(LINEAR)).traffic == [30, 60, 90, 100]


def _to_traffic_stage(machine: DeploymentMachine) -> list:
    commands = machine.send(Started())
    while True:
        runs = [c for c in commands if isinstance(c, RunEvent)]
        if not runs:
            return commands
        commands = []
        for run in runs:
            commands += machine.send(EventSucceeded(run.target, run.event))


def test_traffic_shift_then_timer_then_next() -> None:
    machine = DeploymentMachine(blue_green())
    assert _to_traffic_stage(machine) == [ShiftTraffic(10)]
    assert machine.send(TrafficShifted(10)) == [StartTimer("1:traffic:0", 300)]
    assert machine.send(TimerElapsed("0:stale")) == []  # stale timers are ignored
    assert machine.send(TimerElapsed("1:traffic:0")) == [ShiftTraffic(100)]


def test_wrong_weight_report_is_illegal() -> None:
    machine = DeploymentMachine(blue_green())
    _to_traffic_stage(machine)
    with pytest.raises(InvalidTransition):
        machine.send(TrafficShifted(50))


def test_failure_after_traffic_moved_is_a_reroute() -> None:
    machine = DeploymentMachine(blue_green(), MachineOptions(auto_rollback=ROLLBACK_ALL))
    _to_traffic_stage(machine)
    machine.send(TrafficShifted(10))
    commands = machine.send(AlarmFired(("green-5xx",)))
    assert ShiftTraffic(0, rollback=True) in commands
    assert StartRollback(AutoRollbackEvent.DEPLOYMENT_STOP_ON_ALARM, rerouted=True) in commands
    assert commands.index(ShiftTraffic(0, rollback=True)) < len(commands) - 1


def test_traffic_shift_failure_fails() -> None:
    machine = DeploymentMachine(blue_green())
    _to_traffic_stage(machine)
    commands = machine.send(TrafficShiftFailed("haproxy socket missing"))
    assert commands[-1].status is DeploymentStatus.FAILED
    assert "haproxy socket missing" in commands[-1].message


def test_pause_resume_and_promote() -> None:
    machine = DeploymentMachine(blue_green(LINEAR))
    _to_traffic_stage(machine)
    machine.send(TrafficShifted(30))
    machine.send(PauseRequested())
    assert machine.send(TimerElapsed("1:traffic:0")) == []  # paused: the step waits
    assert machine.send(ResumeRequested()) == [ShiftTraffic(60)]
    machine.send(TrafficShifted(60))
    assert machine.send(PromoteRequested()) == [ShiftTraffic(100)]
    commands = machine.send(TrafficShifted(100))
    assert all(isinstance(c, RunEvent) and c.event is E.AFTER_ALLOW_TRAFFIC for c in commands)


def test_pause_holds_the_next_wave() -> None:
    machine = DeploymentMachine(in_place(2, ONE))
    machine.send(Started())
    machine.send(PauseRequested())
    for event in in_place(2, ONE)[0].events[:-1]:
        machine.send(EventSucceeded("web-1", event))
    assert machine.send(EventSucceeded("web-1", E.VALIDATE_SERVICE)) == []
    assert machine.send(ResumeRequested()) == [RunEvent("web-2", E.APPLICATION_STOP)]


def test_ready_wait_needs_continue_or_stops() -> None:
    machine = DeploymentMachine(blue_green(ready=600))
    commands = _to_traffic_stage(machine)
    assert commands == [StartTimer("1:ready", 600)]
    assert machine.state.status is DeploymentStatus.READY
    assert machine.send(ContinueRequested()) == [ShiftTraffic(10)]

    stopped = DeploymentMachine(blue_green(ready=600))
    _to_traffic_stage(stopped)
    assert stopped.send(TimerElapsed("1:ready"))[-1].status is DeploymentStatus.STOPPED


def test_termination_wait_is_baking_and_reroutable() -> None:
    stages = blue_green(termination=300)
    machine = DeploymentMachine(stages, MachineOptions(auto_rollback=ROLLBACK_ALL))
    commands = _to_traffic_stage(machine)
    commands = machine.send(TrafficShifted(10))
    commands = machine.send(TimerElapsed("1:traffic:0"))
    commands = machine.send(TrafficShifted(100))
    while any(isinstance(c, RunEvent) for c in commands):
        nxt = []
        for c in commands:
            if isinstance(c, RunEvent):
                nxt += machine.send(EventSucceeded(c.target, c.event))
        commands = nxt
    assert isinstance(machine.stage, WaitStage) and machine.stage.kind is WaitKind.TERMINATION
    assert machine.state.status is DeploymentStatus.BAKING
    commands = machine.send(StopRequested(rollback=True))
    assert ShiftTraffic(0, rollback=True) in commands


def test_watch_window_ends_in_success() -> None:
    result = simulate((*in_place(1, ONE), WaitStage("watch", WaitKind.WATCH, 120)))
    assert result.status is DeploymentStatus.SUCCEEDED and result.waited == 120


def test_lambda_stages() -> None:
    options = StageOptions(Platform.LAMBDA, DeploymentType.BLUE_GREEN, ALL, traffic_steps=CANARY)
    stages = deployment_stages(options, ("my-function",))
    assert isinstance(stages[1], TrafficStage)
    result = simulate(stages)
    assert result.status is DeploymentStatus.SUCCEEDED and result.traffic == [10, 100]


# -- rollback: reroute or redeploy ---------------------------------------------------------------------------

ONE_STEP_TO_ZERO = (TrafficStep(0, 0),)  # a traffic stage that leaves no traffic on the replacement
PREPARE = TargetStage("prepare", ("fn",), (E.BEFORE_ALLOW_TRAFFIC,))
AFTER_ALLOW = TargetStage("after-allow", ("fn",), (E.AFTER_ALLOW_TRAFFIC,))
RELEASE = TargetStage("release", ("fn",), (E.APPLICATION_STOP,), ends_reroute=True)

REROUTES = [
    # (name, stages, failing, rerouted): a failure with auto-rollback on; is the rollback a reroute?
    ("in-place: redeploy", in_place(2, ONE), fail_validate(1), False),
    (
        "lambda canary, after-allow fails: traffic moved",
        deployment_stages(StageOptions(Platform.LAMBDA, DeploymentType.BLUE_GREEN, ALL, CANARY), ("fn",)),
        {"fn": E.AFTER_ALLOW_TRAFFIC},
        True,
    ),
    # No traffic on the replacement, but a traffic stage has passed: the ends_reroute check walks past it
    # (a TrafficStage has no ends_reroute; this raised AttributeError).
    (
        "three stages, no traffic moved, original kept",
        (PREPARE, TrafficStage("traffic", ONE_STEP_TO_ZERO), AFTER_ALLOW),
        {"fn": E.AFTER_ALLOW_TRAFFIC},
        True,
    ),
    (
        "no traffic moved, original released",
        (PREPARE, TrafficStage("traffic", ONE_STEP_TO_ZERO), RELEASE, AFTER_ALLOW),
        {"fn": E.AFTER_ALLOW_TRAFFIC},
        False,
    ),
]


@pytest.mark.parametrize(("stages", "failing", "rerouted"), [c[1:] for c in REROUTES], ids=[c[0] for c in REROUTES])
def test_rollback_reroutes_only_while_the_original_can_take_traffic_back(stages, failing, rerouted) -> None:
    result = simulate(stages, failing, MachineOptions(auto_rollback=ROLLBACK_ON_FAILURE))
    assert result.status is DeploymentStatus.FAILED
    assert result.rollback == StartRollback(AutoRollbackEvent.DEPLOYMENT_FAILURE, rerouted=rerouted)


# -- illegal transitions --------------------------------------------------------------------------------------

ILLEGAL = [
    ("started twice", [Started()], Started()),
    ("result before start", [], EventSucceeded("web-1", E.APPLICATION_STOP)),
    ("result for the wrong event", [Started()], EventSucceeded("web-1", E.INSTALL)),
    ("result for an idle host", [Started()], EventSucceeded("web-2", E.APPLICATION_STOP)),
    ("continue outside a wait", [Started()], ContinueRequested()),
    ("promote outside traffic", [Started()], PromoteRequested()),
    ("traffic report without a shift", [Started()], TrafficShifted(10)),
    ("anything after the end", [Started(), StopRequested()], Started()),
    ("stop after the end", [Started(), StopRequested()], StopRequested()),
]


@pytest.mark.parametrize(("before", "event"), [c[1:] for c in ILLEGAL], ids=[c[0] for c in ILLEGAL])
def test_illegal_transitions_leave_state_unchanged(before, event) -> None:
    machine = DeploymentMachine(in_place(2, ONE))
    for e in before:
        machine.send(e)
    snapshot = copy.deepcopy(state_to_json(machine.state))
    with pytest.raises(InvalidTransition):
        machine.send(event)
    assert state_to_json(machine.state) == snapshot


# -- snapshots ------------------------------------------------------------------------------------------------


def test_the_step_records_encoded_snapshot_is_the_whole_document_encoded_after_every_step() -> None:
    """The runner persists text joined from parts encoded once (engine/core/step_record.py): after each step it
    must read back as the stages, state, timers and spec encoded whole, including targets that did not change."""
    stages = in_place(5, ONE)
    machine = DeploymentMachine(stages)
    record = StepRecord()
    spec = {"application_name": "web", "appspec": {"hooks": {"BeforeInstall": ['a "quoted" script']}}}
    snapshots = []

    def check(timers: dict[str, object]) -> None:
        text = record.snapshot(machine.stages, machine.state, timers, spec)
        assert isinstance(text, EncodedJson)
        whole = {"stages": stages_to_json(stages), "machine": state_to_json(machine.state), "timers": timers}
        assert json.loads(text) == {**whole, "spec": spec}
        snapshots.append(text)

    commands = machine.send(Started())
    check({})
    while runs := [c for c in commands if isinstance(c, RunEvent)]:
        commands = []
        for run in runs:
            commands += machine.send(EventSucceeded(run.target, run.event))
            check({"1:wait": 12.5})
    assert machine.state.status == DeploymentStatus.SUCCEEDED
    assert len(set(snapshots)) > 30  # every step's text differs: each changed target was encoded again


def test_snapshot_round_trip_resumes_identically() -> None:
    stages = blue_green(LINEAR, termination=60)
    machine = DeploymentMachine(stages)
    _to_traffic_stage(machine)
    machine.send(TrafficShifted(30))
    restored = DeploymentMachine(
        stages_from_json(stages_to_json(stages)), state=state_from_json(state_to_json(machine.state))
    )
    assert restored.stages == stages
    assert restored.send(TimerElapsed("1:traffic:0")) == machine.send(TimerElapsed("1:traffic:0"))
    assert state_to_json(restored.state) == state_to_json(machine.state)


def test_start_blocked_stops_without_rollback() -> None:
    machine = DeploymentMachine(in_place(2, ONE), MachineOptions(auto_rollback=ROLLBACK_ALL))
    commands = machine.send(StartBlocked(ErrorCode.ALARM_ACTIVE, "alarm api-5xx was already firing"))
    assert commands == [Finish(DeploymentStatus.STOPPED, ErrorCode.ALARM_ACTIVE, "alarm api-5xx was already firing")]
    with pytest.raises(InvalidTransition):
        machine.send(Started())


def test_an_internal_error_fails_the_deployment_as_any_failure_does() -> None:
    """deploybot failing mid-deployment: the unfinished hosts are cancelled, traffic goes back (rule 5) and the
    automatic rollback for failures starts; before the start nothing was changed, so nothing is rolled back."""
    machine = DeploymentMachine(in_place(2, ONE), MachineOptions(auto_rollback=ROLLBACK_ALL))
    assert isinstance(machine.send(Started())[0], RunEvent)  # web-1 started, web-2 waits its turn
    commands = machine.send(InternalError("deploybot hit an internal error (RuntimeError at x.py:1)"))
    assert commands == [
        CancelTargets(("web-1", "web-2")),
        StartRollback(AutoRollbackEvent.DEPLOYMENT_FAILURE, rerouted=False),
        Finish(
            DeploymentStatus.FAILED,
            ErrorCode.INTERNAL_ERROR,
            "deploybot hit an internal error (RuntimeError at x.py:1)",
        ),
    ]
    with pytest.raises(InvalidTransition):  # it has ended
        machine.send(InternalError("again"))

    shifted = DeploymentMachine(blue_green(), MachineOptions(auto_rollback=ROLLBACK_ALL))
    _to_traffic_stage(shifted)
    shifted.send(TrafficShifted(10))
    commands = shifted.send(InternalError("bug"))
    assert commands[0] == ShiftTraffic(0, rollback=True)
    assert StartRollback(AutoRollbackEvent.DEPLOYMENT_FAILURE, rerouted=True) in commands

    unstarted = DeploymentMachine(in_place(2, ONE), MachineOptions(auto_rollback=ROLLBACK_ALL))
    assert unstarted.send(InternalError("bug")) == [Finish(DeploymentStatus.FAILED, ErrorCode.INTERNAL_ERROR, "bug")]


def test_blue_green_rollback_stages() -> None:
    stages = blue_green_rollback_stages(("blue-1",), ("green-1",))
    assert [(s.name, s.targets, s.events) for s in stages] == [
        ("allow-original", ("blue-1",), (E.BEFORE_ALLOW_TRAFFIC, E.ALLOW_TRAFFIC, E.AFTER_ALLOW_TRAFFIC)),
        ("block-replacement", ("green-1",), (E.BEFORE_BLOCK_TRAFFIC, E.BLOCK_TRAFFIC, E.AFTER_BLOCK_TRAFFIC)),
    ]
    assert simulate(stages).status is DeploymentStatus.SUCCEEDED


def test_terminate_stops_the_original_fleet_and_ends_the_reroute() -> None:
    options = StageOptions(
        Platform.SERVER,
        DeploymentType.BLUE_GREEN,
        ALL,
        traffic_steps=CANARY,
        termination_wait_seconds=60,
        stop_original=True,
    )
    stages = deployment_stages(options, ("green-1",), ("blue-1",))
    assert [s.name for s in stages][-2:] == ["termination", "stop-original"]
    assert stages[-1].events == (E.APPLICATION_STOP,) and stages[-1].targets == ("blue-1",)
    auto = MachineOptions(auto_rollback=ROLLBACK_ON_FAILURE)
    failing_stop = simulate(stages, {"blue-1": E.APPLICATION_STOP}, auto)
    assert failing_stop.status is DeploymentStatus.FAILED
    assert failing_stop.rollback == StartRollback(AutoRollbackEvent.DEPLOYMENT_FAILURE, rerouted=True)
    assert simulate(stages).status is DeploymentStatus.SUCCEEDED
    restored = stages_from_json(stages_to_json(stages))
    assert restored == stages
