"""Results that reach a deployment before the result they follow (pure).

A host's results are delivered in the order they were recorded by one server, but with several replicas a result
recorded elsewhere is read back later (RESULTS_RECORDED), and the host's next result, recorded by the owner itself,
may be delivered first. The machine takes only the event each target runs now and refuses any other. So the runner
keeps such a result here, and feeds it to the machine once the target reaches its event, rather than losing it:
it was taken once already, and nothing would offer it again.
"""

from __future__ import annotations

from engine.core.errors import InvalidTransition
from engine.core.events import Command, EventFailed, EventSucceeded
from engine.core.machine import DeploymentMachine, DeploymentState
from engine.core.model import EventStatus, LifecycleEvent


class EarlyResults:
    """The results kept per target, by the event they are of. One per runner."""

    def __init__(self) -> None:
        self._held: dict[str, dict[LifecycleEvent, EventSucceeded | EventFailed]] = {}

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, state: DeploymentState, event: EventSucceeded | EventFailed) -> LifecycleEvent | None:
        """Keep ``event`` if it is the result of a later event of a target still running an earlier one: the event
        that target runs now, whose result it waits for. None: not such a result, not kept."""
        progress = state.targets.get(event.target)
        if progress is None or progress.status is not EventStatus.IN_PROGRESS:
            return None
        if event.event not in progress.events[progress.position + 1 :]:
            return None
        self._held.setdefault(event.target, {})[event.event] = event
        return progress.current

    def feed_due(self, machine: DeploymentMachine) -> list[Command]:
        """Send ``machine`` each kept result whose target has reached its event, in turn; the commands it gave.
        A target done with (failed, finished, another stage) drops what it still had kept: it will never be due."""
        commands: list[Command] = []
        for target in list(self._held):
            held = self._held[target]
            while (progress := machine.state.targets.get(target)) is not None and (
                progress.status is EventStatus.IN_PROGRESS and progress.current in held
            ):
                try:
                    commands += machine.send(held.pop(progress.current))
                except InvalidTransition:  # the deployment ended meanwhile
                    break
            if not held or progress is None or progress.status is not EventStatus.IN_PROGRESS:
                del self._held[target]
        return commands
