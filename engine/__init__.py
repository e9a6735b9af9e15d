"""deploybot's engine: CodeDeploy's model (applications, groups, configurations, revisions, deployments, targets).

This module is the public surface ``bot/`` may import; keep ``__all__`` sorted (a test checks it).
"""

from engine.errors import EngineError

__all__ = ["EngineError"]
