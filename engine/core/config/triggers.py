"""A deployment group's ``triggers:`` (engine/core/triggers.py): who hears about its deployments, and how.

``triggers: [{name, events: [...], target: {sns: ARN} | {webhook: URL, secret_env: NAME} | {slack: CHANNEL}}]``.
A secret is never written in the file: a webhook names the environment variable that holds it.
"""

from __future__ import annotations

from yaml.nodes import SequenceNode

from engine.core.triggers import ENV_NAME, SNS_TOPIC_ARN, TRIGGER_NAME, TargetKind, Trigger, TriggerEvent, TriggerTarget
from engine.core.yamlnode import Entry, NodeReader

OFFLINE_HOSTS = ("refuse", "proceed")
"""A group's ``offline_hosts``: what a deployment does when target hosts' agents are silent."""
_TARGET_KEYS = ("sns", "webhook", "slack", "secret_env", "secret")


def read_triggers(reader: NodeReader, entry: Entry | None) -> tuple[Trigger, ...]:
    """``triggers: [{name, events: [...], target: {sns: ARN} | {webhook: URL, secret_env: NAME} | {slack: CH}}]``."""
    if entry is None:
        return ()
    triggers: list[Trigger] = []
    for item, path in reader.items(entry.value, entry.path):
        fields = reader.fields(item, path, ("name", "events", "target"), required=("name", "events", "target"))
        name = reader.get(fields, "name", reader.string, None)
        if name is not None and not TRIGGER_NAME.match(name):
            reader.report(
                fields["name"].value, f"bad trigger name {name!r}: use letters, digits, '.', '_' or '-'", path
            )
            name = None
        if name is not None and any(t.name == name for t in triggers):
            reader.report(fields["name"].value, f"trigger {name!r} is declared twice in this group", path)
            name = None
        events: list[TriggerEvent] = []
        if (listed := fields.get("events")) is not None:
            for event_node, event_path in reader.items(listed.value, listed.path):
                event = reader.choice(event_node, event_path, tuple(TriggerEvent))
                if event is not None:
                    events.append(TriggerEvent(event))
            if not events and isinstance(listed.value, SequenceNode):
                reader.report(listed.value, "list at least one event", listed.path)
        target = _trigger_target(reader, fields.get("target"))
        if name is not None and events and target is not None:
            triggers.append(Trigger(name, frozenset(events), target))
    return tuple(triggers)


def _trigger_target(reader: NodeReader, entry: Entry | None) -> TriggerTarget | None:
    if entry is None:
        return None
    fields = reader.fields(entry.value, entry.path, _TARGET_KEYS)
    if (secret := fields.get("secret")) is not None:
        message = "never write a secret in the config file: put it in an environment variable and name it (secret_env)"
        reader.report(secret.key, message, secret.path)
        return None
    kinds = [kind for kind in TargetKind if str(kind) in fields]
    if len(kinds) != 1:
        reader.report(entry.value, "a trigger target is exactly one of sns, webhook or slack", entry.path)
        return None
    kind = kinds[0]
    address = reader.get(fields, str(kind), reader.string, None)
    secret_env = reader.get(fields, "secret_env", reader.string, None)
    where = fields[str(kind)]
    if address is None:
        return None
    if kind is TargetKind.SNS and not SNS_TOPIC_ARN.match(address):
        reader.report(
            where.value, f"expected an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME), got {address!r}", where.path
        )
        return None
    if kind is TargetKind.WEBHOOK:
        if reader.url(where.value, where.path) is None:
            return None
        if secret_env is None:
            reader.report(
                entry.value, "a webhook needs secret_env: the environment variable holding its secret", entry.path
            )
            return None
        if not ENV_NAME.match(secret_env):
            reader.report(fields["secret_env"].value, f"{secret_env!r} is not an environment variable name", entry.path)
            return None
    elif secret_env is not None:
        reader.report(fields["secret_env"].key, "secret_env applies only to a webhook", fields["secret_env"].path)
        return None
    return TriggerTarget(kind, address, secret_env)
