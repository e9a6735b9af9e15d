"""The store's schema, as an ordered set of sqlite-utils ``Migrations``.

Each migration runs once per database file, inside a transaction together with the record of it having been
applied (``_sqlite_migrations``), so reopening a database is a no-op and a half-applied schema cannot exist.
Never edit a migration that has shipped: add a new one below it. DDL is written out by hand (not inferred from
rows) so the constraints that protect the data (NOT NULL, CHECK, AUTOINCREMENT, the append-only triggers)
are visible in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlite_utils import Database, Migrations

MIGRATIONS = Migrations("deploybot")

# The TEXT columns that hold JSON documents (the store encodes and decodes them); keep in step with the DDL.
JSON_COLUMNS: Mapping[str, frozenset[str]] = {
    "revisions": frozenset({"appspec", "location"}),
    "deployments": frozenset({"request", "state", "wind_up"}),
    "event_log": frozenset({"data"}),
    "host_commands": frozenset({"payload", "result"}),
    "agents": frozenset({"tags"}),
    "registered_revisions": frozenset({"location"}),
    "onprem_instances": frozenset({"tags"}),
    "api_deployment_configs": frozenset({"definition", "tags"}),
    "api_applications": frozenset({"tags"}),
    "api_deployment_groups": frozenset({"definition", "tags"}),
    "intents": frozenset({"payload", "outcome"}),
}

_INITIAL_SCHEMA = (
    """
    CREATE TABLE revisions (
        sha256 TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        "commit" TEXT,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        appspec TEXT,
        platform TEXT NOT NULL DEFAULT 'server'
    )
    """,
    "CREATE INDEX revisions_by_created_at ON revisions (created_at)",
    """
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        application TEXT NOT NULL,
        environment TEXT NOT NULL,
        group_name TEXT NOT NULL,
        status TEXT NOT NULL,
        revision_sha256 TEXT,
        config_name TEXT,
        deployment_type TEXT,
        created_by TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        error_code TEXT,
        error_message TEXT,
        rollback_of TEXT,
        rolled_back_by TEXT,
        request TEXT,
        state TEXT,
        description TEXT
    )
    """,
    "CREATE INDEX deployments_by_group ON deployments (group_name, status, created_at)",
    "CREATE INDEX deployments_by_application ON deployments (application, environment, created_at)",
    "CREATE INDEX deployments_by_status ON deployments (status)",
    """
    CREATE TABLE target_events (
        deployment_id TEXT NOT NULL,
        target TEXT NOT NULL,
        event TEXT NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'Pending',
        started_at REAL,
        ended_at REAL,
        error_code INTEGER,
        message TEXT,
        log_tail TEXT,
        PRIMARY KEY (deployment_id, target, event)
    )
    """,
    """
    CREATE TABLE event_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id TEXT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT
    )
    """,
    "CREATE INDEX event_log_by_deployment ON event_log (deployment_id, id)",
    # The audit trail must survive bugs and hand edits: the database itself refuses to rewrite history.
    """
    CREATE TRIGGER event_log_no_update BEFORE UPDATE ON event_log
    BEGIN SELECT RAISE(ABORT, 'event_log is append-only'); END
    """,
    """
    CREATE TRIGGER event_log_no_delete BEFORE DELETE ON event_log
    BEGIN SELECT RAISE(ABORT, 'event_log is append-only'); END
    """,
    """
    CREATE TABLE host_commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        deployment_id TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT,
        status TEXT NOT NULL DEFAULT 'Pending'
            CHECK (status IN ('Pending', 'InProgress', 'Succeeded', 'Failed', 'Cancelled')),
        created_at REAL NOT NULL,
        claimed_at REAL,
        finished_at REAL,
        result TEXT
    )
    """,
    "CREATE INDEX host_commands_queue ON host_commands (host, status, id)",
    "CREATE INDEX host_commands_by_deployment ON host_commands (deployment_id, status)",
    """
    CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        tags TEXT,
        version TEXT,
        last_seen REAL NOT NULL,
        state TEXT
    )
    """,
    """
    CREATE TABLE locks (
        application TEXT NOT NULL,
        environment TEXT NOT NULL,
        owner TEXT NOT NULL,
        reason TEXT,
        created_at REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (application, environment)
    )
    """,
    """
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        received_at REAL NOT NULL
    )
    """,
)


@MIGRATIONS(name="0001_initial_schema")
def _initial_schema(db: Database) -> None:
    for statement in _INITIAL_SCHEMA:
        db.execute(statement)


_APPROVALS = (
    # One row per approve/reject decision, bound to the exact revision of one group; never rewritten, so the
    # approvals a deployment started on stay provable. Expiry is data (``expires_at``), compared by the caller.
    """
    CREATE TABLE approvals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id TEXT NOT NULL,
        application TEXT NOT NULL,
        environment TEXT NOT NULL,
        revision_sha256 TEXT NOT NULL,
        actor TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
        reason TEXT,
        created_at REAL NOT NULL,
        expires_at REAL
    )
    """,
    "CREATE INDEX approvals_by_revision ON approvals (application, environment, revision_sha256, created_at)",
    "CREATE INDEX approvals_by_deployment ON approvals (deployment_id)",
    """
    CREATE TRIGGER approvals_no_update BEFORE UPDATE ON approvals
    BEGIN SELECT RAISE(ABORT, 'approvals are append-only'); END
    """,
    """
    CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
    BEGIN SELECT RAISE(ABORT, 'approvals are append-only'); END
    """,
)


@MIGRATIONS(name="0002_approvals")
def _approvals(db: Database) -> None:
    for statement in _APPROVALS:
        db.execute(statement)


_API_REGISTRY = (
    # Where a revision came from when it was not a local file: {"s3": {bucket, key, version, etag}} or
    # {"github": {repository, commit}}; hooks see it as BUNDLE_* variables, the CodeDeploy API as revisionLocation.
    "ALTER TABLE revisions ADD COLUMN location TEXT",
    # CodeDeploy's RegisterApplicationRevision: a revision location registered with an application, with when it
    # was first and last deployed. ``revision_key`` is the location's canonical JSON (the natural key).
    """
    CREATE TABLE registered_revisions (
        application TEXT NOT NULL,
        revision_key TEXT NOT NULL,
        location TEXT NOT NULL,
        revision_sha256 TEXT,
        description TEXT,
        registered_at REAL NOT NULL,
        first_used_at REAL,
        last_used_at REAL,
        PRIMARY KEY (application, revision_key)
    )
    """,
    # RegisterOnPremisesInstance: hosts that joined through the API rather than the config file.
    """
    CREATE TABLE onprem_instances (
        name TEXT PRIMARY KEY,
        iam_arn TEXT,
        tags TEXT NOT NULL DEFAULT '{}',
        registered_at REAL NOT NULL,
        deregistered_at REAL
    )
    """,
    # CreateDeploymentConfig: configurations made through the API (the config file's stay read-only).
    """
    CREATE TABLE api_deployment_configs (
        name TEXT PRIMARY KEY,
        compute_platform TEXT NOT NULL,
        definition TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
)


@MIGRATIONS(name="0003_api_registry")
def _api_registry(db: Database) -> None:
    for statement in _API_REGISTRY:
        db.execute(statement)


_API_TOKENS = (
    # Per-user API tokens: only the sha256 of a token is kept, so the database never holds a usable credential.
    # A row outlives its revocation (``revoked_at``): that is what keeps a revoked bootstrap token refused even
    # while var/api-token still holds it. Expiry is data (``expires_at``), compared by the caller.
    """
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        name TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        last_used_at REAL
    )
    """,
    "CREATE INDEX api_tokens_by_user ON api_tokens (user, created_at)",
    # Who a token is, and its revocation, are history: only last use (and a first revocation) may change.
    """
    CREATE TRIGGER api_tokens_keep_identity BEFORE UPDATE ON api_tokens
    WHEN NEW.id IS NOT OLD.id OR NEW.user IS NOT OLD.user OR NEW.token_sha256 IS NOT OLD.token_sha256
        OR NEW.created_at IS NOT OLD.created_at OR NEW.expires_at IS NOT OLD.expires_at
        OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS NOT OLD.revoked_at)
    BEGIN SELECT RAISE(ABORT, 'an API token keeps its identity, expiry and revocation'); END
    """,
    """
    CREATE TRIGGER api_tokens_no_delete BEFORE DELETE ON api_tokens
    BEGIN SELECT RAISE(ABORT, 'API tokens are revoked, never deleted'); END
    """,
)


@MIGRATIONS(name="0004_api_tokens")
def _api_tokens(db: Database) -> None:
    for statement in _API_TOKENS:
        db.execute(statement)


_INTENTS = (
    # What the doors were asked (engine/core/intents.py): stored before the request is acknowledged, keyed so a
    # retry, replay or redelivery finds the same row. ``seq`` is arrival order (merges of one scope follow it);
    # ``not_before`` is when a waiting intent is looked at again.
    """
    CREATE TABLE intents (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        scope TEXT,
        actor TEXT,
        state TEXT NOT NULL
            CHECK (state IN ('pending', 'waiting', 'running', 'done', 'failed', 'superseded')),
        payload TEXT NOT NULL,
        outcome TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        not_before REAL
    )
    """,
    "CREATE INDEX intents_by_state ON intents (source, state, seq)",
    "CREATE INDEX intents_by_scope ON intents (scope, seq)",
    # Who asked and what is history: only the state, the outcome and when to look again may change.
    """
    CREATE TRIGGER intents_keep_request BEFORE UPDATE ON intents
    WHEN NEW.seq IS NOT OLD.seq OR NEW.key IS NOT OLD.key OR NEW.source IS NOT OLD.source
        OR NEW.kind IS NOT OLD.kind OR NEW.scope IS NOT OLD.scope OR NEW.actor IS NOT OLD.actor
        OR NEW.created_at IS NOT OLD.created_at
    BEGIN SELECT RAISE(ABORT, 'an intent keeps what was asked, by whom and when'); END
    """,
)


@MIGRATIONS(name="0005_intents")
def _intents(db: Database) -> None:
    for statement in _INTENTS:
        db.execute(statement)


_HOOK_EXECUTIONS = (
    # Lambda/ECS lifecycle hook executions (engine/adapters/aws/hook_executions.py): stored before the function is
    # invoked, one per (deployment, target, event, function), so a restarted server waits for the same execution id
    # instead of invoking again. ``state``: invoking (stored; the invoke call had not answered yet), waiting
    # (invoked), reported (``status`` is what the function reported), not_invoked (``detail`` says why),
    # timed_out, stopped.
    """
    CREATE TABLE hook_executions (
        execution_id TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL,
        target TEXT NOT NULL,
        event TEXT NOT NULL,
        function TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('invoking', 'waiting', 'reported', 'not_invoked', 'timed_out', 'stopped')),
        status TEXT CHECK (status IN ('Succeeded', 'Failed')),
        detail TEXT,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (deployment_id, target, event, function),
        CHECK ((state = 'reported') = (status IS NOT NULL))
    )
    """,
    "CREATE INDEX hook_executions_by_state ON hook_executions (state, deployment_id)",
    # Which execution it is never changes, and an ended execution stays as it ended: a status is reported once.
    """
    CREATE TRIGGER hook_executions_keep_identity BEFORE UPDATE ON hook_executions
    WHEN NEW.execution_id IS NOT OLD.execution_id OR NEW.deployment_id IS NOT OLD.deployment_id
        OR NEW.target IS NOT OLD.target OR NEW.event IS NOT OLD.event OR NEW.function IS NOT OLD.function
        OR NEW.started_at IS NOT OLD.started_at
        OR (OLD.state NOT IN ('invoking', 'waiting')
            AND (NEW.state IS NOT OLD.state OR NEW.status IS NOT OLD.status OR NEW.detail IS NOT OLD.detail))
    BEGIN SELECT RAISE(ABORT, 'a hook execution keeps its identity, and its outcome once it has one'); END
    """,
    """
    CREATE TRIGGER hook_executions_no_delete BEFORE DELETE ON hook_executions
    BEGIN SELECT RAISE(ABORT, 'hook executions are history, never deleted'); END
    """,
)


@MIGRATIONS(name="0006_hook_executions")
def _hook_executions(db: Database) -> None:
    for statement in _HOOK_EXECUTIONS:
        db.execute(statement)


_API_APPLICATIONS = (
    # CreateApplication / CreateDeploymentGroup: applications and groups made through the CodeDeploy API (the config
    # file's stay read-only). ``id`` is CreateApplication's applicationId, so a rename is one UPDATE; a group's
    # ``definition`` is its CreateDeploymentGroup members (engine/core/api_groups.py). Group names are unique across
    # deploybot, as deployments are kept by group name. ``tags`` (TagResource) live with their resource.
    """
    CREATE TABLE api_applications (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        compute_platform TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE api_deployment_groups (
        name TEXT PRIMARY KEY,
        application_id TEXT NOT NULL,
        definition TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX api_deployment_groups_by_application ON api_deployment_groups (application_id, created_at)",
    "ALTER TABLE api_deployment_configs ADD COLUMN tags TEXT NOT NULL DEFAULT '{}'",
)


@MIGRATIONS(name="0007_api_applications")
def _api_applications(db: Database) -> None:
    for statement in _API_APPLICATIONS:
        db.execute(statement)


_REPLICA_SHARED_STATE = (
    # What replicas on one database share besides the deployments (engine/store/bundle_records.py,
    # agent_token_records.py, replica_records.py). Revision bundles: ``revision_bundles`` is written last, in the
    # transaction that wrote every chunk, so a row there means the whole bundle is in the database. On SQLite (one
    # server) bundles stay in the data directory only and agent tokens in its 0600 file; the tables exist on both so
    # that the schema (and the Store port) is one.
    """
    CREATE TABLE revision_bundles (
        sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
        size INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE revision_bundle_chunks (
        sha256 TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (sha256, seq)
    )
    """,
    # An agent's token, as the server must be able to print it again (`deploybot agent-token NAME`); found by its
    # sha256 on each request.
    """
    CREATE TABLE agent_tokens (
        host TEXT PRIMARY KEY,
        token TEXT NOT NULL,
        token_sha256 TEXT NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
        created_at REAL NOT NULL
    )
    """,
    # Each running `deploybot serve` on this database: written at start, ``last_seen`` refreshed every few seconds.
    """
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        started_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        version TEXT NOT NULL
    )
    """,
)


@MIGRATIONS(name="0008_replica_shared_state")
def _replica_shared_state(db: Database) -> None:
    for statement in _REPLICA_SHARED_STATE:
        db.execute(statement)


_GROUP_LEASES = (
    # One row per deployment group that has ever had an owner (engine/core/leases.py): who drives its deployments,
    # the tenure's fencing token (``generation``: only grows, bumped by every take) and when the lease runs out.
    """
    CREATE TABLE group_leases (
        group_name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        generation INTEGER NOT NULL CHECK (generation > 0),
        expires_at REAL NOT NULL
    )
    """,
)


@MIGRATIONS(name="0009_group_leases")
def _group_leases(db: Database) -> None:
    for statement in _GROUP_LEASES:
        db.execute(statement)


# The heartbeat monitor reads the open commands (Pending, InProgress) every second. Without an index led by status
# that was a scan of every command ever queued, which grows with the history (4-6 ms at 14,000 commands, found by
# the swarm bench); with it, the rounds cost what the open commands cost.
_COMMANDS_BY_STATUS = "CREATE INDEX host_commands_by_status ON host_commands (status, id)"


@MIGRATIONS(name="0010_commands_by_status")
def _commands_by_status(db: Database) -> None:
    db.execute(_COMMANDS_BY_STATUS)


# A host's commands of one deployment (its run, what is queued already, the rest to cancel) were found through the
# queue index, by host alone: every command the host had ever been given was read, so queueing a stage grew with
# the fleet's history (a 1,000-host stage: 200-270 ms on a new database, 450-530 ms twelve deployments later; with
# this index and one read per host, 100-200 ms throughout). Led by the deployment, then the host, the index finds
# exactly those; what the old one served (a deployment's commands by status) it serves from its first column.
_COMMANDS_BY_DEPLOYMENT_HOST = (
    "DROP INDEX host_commands_by_deployment",
    "CREATE INDEX host_commands_by_deployment ON host_commands (deployment_id, host, status)",
)


@MIGRATIONS(name="0011_commands_by_deployment_host")
def _commands_by_deployment_host(db: Database) -> None:
    for statement in _COMMANDS_BY_DEPLOYMENT_HOST:
        db.execute(statement)


# A deployment's wind-up (its end logged, the AWS platforms' clean-up, an automatic rollback started, traffic put
# back) runs after its final status is stored. A server that stopped in between restarted with the deployment final,
# so nothing resumed it and the wind-up never ran: ``wind_up`` holds what is owed, written with the final status and
# cleared by the same write that logs the end. The partial index finds the few rows that owe one.
_WIND_UP = (
    "ALTER TABLE deployments ADD COLUMN wind_up TEXT",
    "CREATE INDEX deployments_owing_wind_up ON deployments (group_name, created_at) WHERE wind_up IS NOT NULL",
)


@MIGRATIONS(name="0012_wind_up")
def _wind_up(db: Database) -> None:
    for statement in _WIND_UP:
        db.execute(statement)


# Each lifecycle event's command changes status twice (claimed, then finished), and every index holding ``status``
# moved its entry each time: three indexes, two moves per change, for a table that keeps every command ever queued.
# Only the open commands are looked for by status (a host's oldest Pending one, the rest of its run, the InProgress
# ones the heartbeats check, the monitor's rounds), so the two indexes that find them hold those alone, partial on
# their status: a claim moves one entry from one to the other, a finish drops one, and both stay the size of the
# queue, however long the history. A deployment's commands are found by deployment and host, without status (a
# host has seven rows there), so no change of status touches that index. The queries name their status as a
# literal, as a partial index requires (SQLite uses one only for a term it can match, never a bound parameter).
# Finding whether a host ever had a command of a revision (the bundles its agent may download) was the one read by
# host alone over all statuses: it now starts from the revision's deployments.
_OPEN_COMMAND_INDEXES = (
    "DROP INDEX host_commands_queue",
    "DROP INDEX host_commands_by_status",
    "DROP INDEX host_commands_by_deployment",
    "CREATE INDEX host_commands_pending ON host_commands (host, id) WHERE status = 'Pending'",
    "CREATE INDEX host_commands_in_progress ON host_commands (host, id) WHERE status = 'InProgress'",
    "CREATE INDEX host_commands_by_deployment ON host_commands (deployment_id, host)",
    "CREATE INDEX deployments_by_revision ON deployments (revision_sha256)",
)


@MIGRATIONS(name="0013_open_command_indexes")
def _open_command_indexes(db: Database) -> None:
    for statement in _OPEN_COMMAND_INDEXES:
        db.execute(statement)


# A run's commands all carry the deployment's spec, and each claim and finish rewrites a command's whole row: the
# spec (hundreds of bytes) was written three times per lifecycle event and kept seven times per host, about half of
# what a deployment added to the database. A run's first command keeps it; the others name that command in
# ``run_head`` and have no payload of their own (engine/store/command_records.py reads it from there).
_RUN_HEADS = ("ALTER TABLE host_commands ADD COLUMN run_head INTEGER",)


@MIGRATIONS(name="0014_run_heads")
def _run_heads(db: Database) -> None:
    for statement in _RUN_HEADS:
        db.execute(statement)


def apply_migrations(db: Database) -> list[str]:
    """Bring ``db`` up to the newest schema; returns the names of the migrations applied just now."""
    pending = [migration.name for migration in MIGRATIONS.pending(db)]
    MIGRATIONS.apply(db)
    return pending


def applied_migrations(db: Database) -> list[str]:
    return [migration.name for migration in MIGRATIONS.applied(db)]
