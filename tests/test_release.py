"""The release-flow rules (engine/release/rules.py): pure functions, table-driven, time passed in as numbers."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.model import DeploymentStatus
from engine.release.promotion import Tenure, check_promotion, tenure
from engine.release.rules import (
    Admission,
    Approval,
    ApprovalPolicy,
    ApprovalState,
    Lock,
    LockPolicy,
    RequestSource,
    admission,
    approval_refusal,
    approval_state,
    blocking_lock,
    durations_of,
    expired,
    is_automatic_rollback,
    lock_conflict,
    lock_message,
    median_duration,
    minutes,
    queue_eta,
    rejection_refusal,
)

NOW = 1_000_000.0
A, B = "a" * 64, "b" * 64
STAGING = Lock("app", "staging", "alice", "db migration", NOW - 60)
EXPIRED = Lock("app", "staging", "alice", "old", NOW - 600, expires_at=NOW - 1)
FREEZE = Lock("*", "*", "root", "release day", NOW - 30, expires_at=NOW + 3600)
OTHER_APP = Lock("shop", "staging", "bob", "", NOW - 60)


# ---------------------------------------------------------------------------------------------------- locks


@pytest.mark.parametrize(
    ("locks", "expected"),
    [
        ([], None),
        ([STAGING], STAGING),
        ([EXPIRED], None),
        ([OTHER_APP], None),
        ([Lock("app", "production", "alice", "", NOW)], None),
        ([STAGING, FREEZE], FREEZE),  # the freeze outranks a single lock
        ([STAGING, Lock("*", "*", "root", "", NOW - 9, expires_at=NOW)], STAGING),  # expiry is exclusive
        (
            [Lock("app", "staging", "alice", "", NOW, expires_at=NOW + 0.001)],
            Lock("app", "staging", "alice", "", NOW, NOW + 0.001),
        ),
    ],
    ids=["none", "locked", "expired", "other-app", "other-env", "freeze-first", "freeze-just-expired", "live"],
)
def test_blocking_lock(locks: list[Lock], expected: Lock | None) -> None:
    assert blocking_lock(locks, "app", "staging", NOW) == expected


def test_expired_picks_only_past_expiries() -> None:
    assert expired([STAGING, EXPIRED, FREEZE], NOW) == (EXPIRED,)


@pytest.mark.parametrize(
    ("lock", "message"),
    [
        (STAGING, "app/staging is locked by alice: db migration"),
        (Lock("app", "staging", "alice", "", NOW, NOW + 90), "app/staging is locked by alice (expires in 2 min)"),
        (FREEZE, "deployments are frozen everywhere by root: release day (expires in 1 h)"),
    ],
)
def test_lock_message_names_who_and_why(lock: Lock, message: str) -> None:
    assert lock_message(lock, "app", "staging", NOW) == message


@pytest.mark.parametrize(
    ("existing", "actor", "admin", "conflict"),
    [
        (None, "bob", False, None),
        (STAGING, "alice", False, None),  # the owner changes their own lock
        (STAGING, "bob", False, "app/staging is already locked by alice; unlock it first"),
        (STAGING, "root", True, None),
        (EXPIRED, "bob", False, None),
        (FREEZE, "carol", False, "the freeze is already locked by root; unlock it first"),
    ],
)
def test_lock_conflict(existing: Lock | None, actor: str, admin: bool, conflict: str | None) -> None:
    assert lock_conflict(existing, actor=actor, is_admin=admin, now=NOW) == conflict


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (-5, "0 s"), (59, "59 s"), (60, "1 min"), (61 * 60, "1 h 1 min"), (2 * 3600, "2 h")],
)
def test_minutes(seconds: float, text: str) -> None:
    assert minutes(seconds) == text


# ---------------------------------------------------------------------------------------------------- approvals

POLICY = ApprovalPolicy(required=2, approvers=("ann", "bob", "cat"), admins=("root",), ttl_seconds=600)


def approval(who: str, revision: str = A, *, at: float = NOW - 10, ttl: float = 600, decision: str = "approved"):
    return Approval(who, revision, decision, at, at + ttl)


@pytest.mark.parametrize(
    ("approvals", "approved_by"),
    [
        ([], ()),
        ([approval("bob")], ("bob",)),
        ([approval("bob"), approval("cat")], ("bob", "cat")),
        ([approval("bob"), approval("bob", at=NOW - 5)], ("bob",)),  # one approver counts once
        ([approval("ann")], ()),  # the requester's own
        ([approval("dave")], ()),  # not an approver
        ([approval("root")], ("root",)),  # admins may approve anywhere
        ([approval("bob", B)], ()),  # another revision
        ([approval("bob", at=NOW - 700)], ()),  # expired
        ([approval("bob", at=NOW - 600)], ()),  # expires exactly now
        ([approval("bob", decision="rejected")], ()),
    ],
    ids=["none", "one", "two", "twice", "self", "stranger", "admin", "other-revision", "expired", "edge", "reject"],
)
def test_approval_state_counts_distinct_allowed_fresh_approvals_of_the_revision(
    approvals: list[Approval], approved_by: tuple[str, ...]
) -> None:
    state = approval_state(approvals, revision=A, requester="ann", policy=POLICY, now=NOW)
    assert state.approved_by == approved_by
    assert state.missing == 2 - len(approved_by)
    assert state.satisfied is (len(approved_by) == 2)


def test_approval_state_reports_when_the_first_counted_approval_lapses() -> None:
    state = approval_state(
        [approval("bob", at=NOW - 100), approval("cat", at=NOW - 300)],
        revision=A,
        requester="ann",
        policy=POLICY,
        now=NOW,
    )
    assert state.expires_at == NOW - 300 + 600
    assert state.as_dict(POLICY)["approvers"] == ["ann", "bob", "cat"]


def test_without_listed_approvers_anyone_but_the_requester_approves() -> None:
    policy = ApprovalPolicy(required=1)
    assert approval_state([approval("zed")], revision=A, requester="ann", policy=policy, now=NOW).satisfied
    assert not approval_state([approval("ann")], revision=A, requester="ann", policy=policy, now=NOW).satisfied


WAITING = str(DeploymentStatus.WAITING_APPROVAL)


@pytest.mark.parametrize(
    ("actor", "status", "refusal"),
    [
        ("bob", WAITING, None),
        ("root", WAITING, None),
        ("ann", WAITING, "ann requested d-1 and cannot approve it; ask one of the approvers"),
        ("dave", WAITING, "dave may not approve deployments here (approvers: ann, bob, cat)"),
        ("bob", "Queued", "d-1 is not waiting for approval (it is Queued)"),
    ],
)
def test_approval_refusal(actor: str, status: str, refusal: str | None) -> None:
    assert approval_refusal(POLICY, actor=actor, requester="ann", status=status, deployment_id="d-1") == refusal


@pytest.mark.parametrize(("actor", "allowed"), [("bob", True), ("ann", True), ("root", True), ("dave", False)], ids=str)
def test_rejection_by_approvers_admins_or_the_requester(actor: str, allowed: bool) -> None:
    refusal = rejection_refusal(POLICY, actor=actor, requester="ann", status=WAITING, deployment_id="d-1")
    assert (refusal is None) is allowed


# ---------------------------------------------------------------------------------------------------- admission

PENDING = ApprovalState(2, ("bob",), None)
DONE = ApprovalState(2, ("bob", "cat"), None)


@pytest.mark.parametrize(
    ("automatic", "source", "lock", "policy", "approvals", "status", "refused"),
    [
        (False, RequestSource.MANUAL, None, LockPolicy.REFUSE, None, "Queued", False),
        (False, RequestSource.MERGE, STAGING, LockPolicy.REFUSE, None, "Queued", True),
        (False, RequestSource.PROMOTION, FREEZE, LockPolicy.REFUSE, None, "Queued", True),
        (False, RequestSource.MERGE, STAGING, LockPolicy.QUEUE, None, "Queued", False),
        (False, RequestSource.MANUAL, STAGING, LockPolicy.QUEUE, PENDING, "WaitingApproval", False),
        (False, RequestSource.MANUAL, None, LockPolicy.REFUSE, PENDING, "WaitingApproval", False),
        (False, RequestSource.MANUAL, None, LockPolicy.REFUSE, DONE, "Queued", False),
        (False, RequestSource.ROLLBACK, None, LockPolicy.REFUSE, PENDING, "Queued", False),  # manual rollback
        (False, RequestSource.ROLLBACK, STAGING, LockPolicy.REFUSE, None, "Queued", True),
        (True, RequestSource.ROLLBACK, FREEZE, LockPolicy.REFUSE, PENDING, "Queued", False),  # automatic
    ],
)
def test_admission(
    automatic: bool,
    source: RequestSource,
    lock: Lock | None,
    policy: LockPolicy,
    approvals: ApprovalState | None,
    status: str,
    refused: bool,
) -> None:
    result = admission(
        application="app",
        environment="staging",
        automatic_rollback=automatic,
        source=source,
        lock=lock,
        policy=policy,
        approvals=approvals,
        now=NOW,
    )
    assert result.refused is refused
    if refused:
        assert lock is not None
        assert result.reason == lock_message(lock, "app", "staging", NOW)
        assert result.details["gate"] == "lock" and result.details["lock"]["owner"] == lock.owner
    else:
        assert result == Admission(DeploymentStatus(status))


@pytest.mark.parametrize(
    ("row", "automatic"),
    [
        ({"created_by": "codeDeployRollback", "request": {"actor": "codeDeployRollback"}}, True),
        ({"created_by": "codeDeployRollback", "request": None}, True),
        ({"created_by": "codeDeployRollback", "request": {"actor": "dave"}}, False),  # manual rollback
        ({"created_by": "alice", "request": {"actor": "alice"}}, False),
    ],
)
def test_is_automatic_rollback(row: dict[str, Any], automatic: bool) -> None:
    assert is_automatic_rollback(row) is automatic


# ---------------------------------------------------------------------------------------------------- tenure


def row(ident: str, status: str, revision: str, ended: float | None, *, started: bool = True, by: str = "alice"):
    return {
        "id": ident,
        "status": status,
        "revision_sha256": revision,
        "started_at": (ended or NOW) - 10 if started else None,
        "ended_at": ended,
        "created_at": (ended or NOW) - 20,
        "created_by": by,
        "request": {"actor": by},
    }


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], None),
        ([row("d-1", "Failed", A, 100)], None),
        ([row("d-1", "Succeeded", A, 100)], Tenure(A, 100, "d-1", "alice")),
        # the same revision redeployed: it has run since the first of the run
        ([row("d-2", "Succeeded", A, 200, by="bob"), row("d-1", "Succeeded", A, 100)], Tenure(A, 100, "d-1", "alice")),
        # another revision in between ended the run
        (
            [row("d-3", "Succeeded", A, 300), row("d-2", "Failed", B, 200), row("d-1", "Succeeded", A, 100)],
            Tenure(A, 300, "d-3", "alice"),
        ),
        # a newer failure does not change what last succeeded; a request cancelled while queued never ran
        (
            [row("d-3", "Failed", B, 300), row("d-2", "Stopped", B, 250, started=False), row("d-1", "Succeeded", A, 1)],
            Tenure(A, 1, "d-1", "alice"),
        ),
        ([row("d-2", "InProgress", B, None), row("d-1", "Succeeded", A, 5)], Tenure(A, 5, "d-1", "alice")),
    ],
    ids=["empty", "only-failed", "one", "redeployed", "interrupted", "newer-failure", "in-flight"],
)
def test_tenure(rows: list[dict[str, Any]], expected: Tenure | None) -> None:
    assert tenure(rows) == expected


# ---------------------------------------------------------------------------------------------------- promotion

ENVS = ("dev", "staging", "production")
FRESH = Tenure(A, NOW - 5 * 60, "d-1", "alice")


@pytest.mark.parametrize(
    ("kwargs", "checks", "message"),
    [
        ({}, [], ""),
        ({"source": "staging", "target": "production"}, [], ""),
        ({"target": "production"}, ["order"], "production is not next in order (next after dev is staging)"),
        ({"source": "production", "target": "dev"}, ["order"], "dev is not next in order (production is the last"),
        ({"target": "dev"}, ["order"], "app: cannot promote dev to itself"),
        ({"current": None}, ["succeeded"], "nothing has succeeded in app/dev yet"),
        ({"requested_revision": B, "revision_succeeded": False}, ["succeeded"], f"revision {B[:12]} has not succeeded"),
        ({"min_soak_seconds": 600}, ["soak"], "has run in dev for 5 min; promotion needs 10 min (min_soak_minutes)"),
        ({"min_soak_seconds": 300}, [], ""),
        ({"min_soak_seconds": 600, "requested_revision": B}, ["soak"], "no longer runs in dev"),
        ({"min_soak_seconds": 600, "override": True}, ["override", "soak"], "only an admin"),
        ({"target": "production", "current": None, "override": True, "is_admin": True}, ["succeeded"], "nothing"),
    ],
)
def test_check_promotion_refusals(kwargs: dict[str, Any], checks: list[str], message: str) -> None:
    arguments: dict[str, Any] = {
        "application": "app",
        "environments": ENVS,
        "source": "dev",
        "target": "staging",
        "current": FRESH,
        "now": NOW,
        **kwargs,
    }
    decision = check_promotion(**arguments)
    assert [r.check for r in decision.refusals] == checks
    assert decision.allowed is (not checks)
    assert message in decision.reason


def test_an_admin_override_waives_order_and_soak_and_says_so() -> None:
    decision = check_promotion(
        application="app",
        environments=ENVS,
        source="dev",
        target="production",
        current=FRESH,
        min_soak_seconds=3600,
        now=NOW,
        override=True,
        is_admin=True,
    )
    assert decision.allowed and decision.revision == A
    assert [r.check for r in decision.overridden] == ["order", "soak"]


def test_promotion_carries_the_current_revision_unless_one_is_named() -> None:
    common: dict[str, Any] = {"application": "app", "environments": ENVS, "source": "dev", "target": "staging"}
    assert check_promotion(**common, current=FRESH, now=NOW).revision == A
    assert check_promotion(**common, current=FRESH, requested_revision=B, now=NOW).revision == B


# ---------------------------------------------------------------------------------------------------- queue


@pytest.mark.parametrize(
    ("durations", "ahead", "elapsed", "eta"),
    [
        ([], 0, None, 0.0),  # nothing ahead: starts now
        ([], 0, 3.0, None),  # something runs, no history to go by
        ([10.0], 0, 4.0, 6.0),
        ([10.0, 20.0, 30.0], 2, 5.0, 2 * 20 + 15),  # median 20: two queued ahead plus the rest of the running one
        ([10.0, 20.0, 30.0], 1, 50.0, 20.0),  # the running one overran: it counts for nothing more
        ([1.0, 2.0, 3.0, 4.0, 5.0, 100.0, 100.0], 1, None, 3.0),  # only the last five count
        ([4.0, 2.0], 0, 1.0, 2.0),  # even-sized sample: the mean of the middle two
    ],
)
def test_queue_eta(durations: list[float], ahead: int, elapsed: float | None, eta: float | None) -> None:
    assert queue_eta(durations, queued_ahead=ahead, running_elapsed=elapsed) == eta


def test_durations_skip_rows_without_both_ends() -> None:
    rows = [{"started_at": 10.0, "ended_at": 25.0}, {"started_at": None, "ended_at": 5.0}, {"started_at": 1.0}]
    assert durations_of(rows) == [15.0]
    assert median_duration([]) is None
