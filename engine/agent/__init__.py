"""deploybot's host agent (the CodeDeploy agent's counterpart): polls the server, installs revisions, runs hooks.

Modules: client (HTTP long poll, results, heartbeats; ``run_agent``; its HTTP/1.1 client is engine/http11.py, shared
with the CLI), executor (one command; the hooks' environment), installer (Install), hooks (script runner), output
(capped log and tail), layout (on-disk records), version (the installed version it reports); the JSON bodies are
typed in engine/core/agent_protocol.py.
"""

from engine.agent.client import (
    Agent,
    AgentOptions,
    parse_assignment,
    parse_assignments,
    read_token_file,
    run_agent,
)
from engine.agent.executor import BASIC_ENV, TOKEN_VARIABLE

__all__ = [
    "BASIC_ENV",
    "TOKEN_VARIABLE",
    "Agent",
    "AgentOptions",
    "parse_assignment",
    "parse_assignments",
    "read_token_file",
    "run_agent",
]
