"""Every record mixin, once: both stores (SqliteStore, PostgresStore) are ``Records`` plus their connection, so a
new table's mixin cannot be given to one store and forgotten in the other."""

from __future__ import annotations

from engine.store.agent_records import AgentRecords
from engine.store.agent_token_records import AgentTokenRecords
from engine.store.application_records import ApplicationRecords
from engine.store.bundle_records import BundleRecords
from engine.store.command_records import CommandRecords
from engine.store.deployment_records import DeploymentRows
from engine.store.hook_records import HookExecutionRecords
from engine.store.intent_records import IntentRecords
from engine.store.lease_records import LeaseRecords
from engine.store.registry_records import RegistryRecords
from engine.store.release_records import ReleaseRecords
from engine.store.replica_records import ReplicaRecords
from engine.store.token_records import TokenRecords


class Records(
    DeploymentRows,
    LeaseRecords,
    ReleaseRecords,
    RegistryRecords,
    ApplicationRecords,
    TokenRecords,
    IntentRecords,
    HookExecutionRecords,
    CommandRecords,
    AgentRecords,
    BundleRecords,
    AgentTokenRecords,
    ReplicaRecords,
):
    """The SQL of every table, run through the accessors each store defines (statements.SqlAccess)."""
