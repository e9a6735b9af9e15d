"""deploybot's host agent (the CodeDeploy agent's counterpart): polls the server, installs revisions, runs hooks.

Modules: client (HTTP long poll, results, heartbeats; ``run_agent``), executor (one command), installer (Install),
hooks (script runner), output (capped log and tail), layout (on-disk records); the JSON bodies are typed in
engine/core/agent_protocol.py.
"""

from engine.agent.client import Agent, AgentOptions, parse_assignment, parse_assignments, run_agent

__all__ = ["Agent", "AgentOptions", "parse_assignment", "parse_assignments", "run_agent"]
