"""The revisions the benchmarks deploy, and the facts about them the plain-script baseline needs."""

from __future__ import annotations

from pathlib import Path

# (source in the revision, destination directory on the host): a couple of small files, like a static site.
FILES: tuple[tuple[str, str], ...] = (
    ("www/index.html", "/opt/bench/www"),
    ("etc/app.json", "/opt/bench/etc"),
)
HOOK_EVENTS: tuple[str, ...] = ("BeforeInstall", "AfterInstall", "ApplicationStart", "ValidateService")
TRIVIAL_SCRIPT = "#!/bin/sh\nexit 0\n"


def hook_script(event: str) -> str:
    """Path of ``event``'s script inside the revision."""
    return f"scripts/{event}.sh"


def write_revision(path: Path, *, hooks: bool) -> Path:
    """A revision dir with FILES; with ``hooks`` each of HOOK_EVENTS runs one ``exit 0`` script.

    Without hooks the appspec has only version/os/files, so every hook event is a no-op on the agent and the
    pickup figure measures dispatch alone.
    """
    lines = ["version: 0.0", "os: linux", "files:"]
    for source, destination in FILES:
        (path / source).parent.mkdir(parents=True, exist_ok=True)
        (path / source).write_text(f"bench file {source}\n" * 20)
        lines += [f"  - source: {source}", f"    destination: {destination}"]
    if hooks:
        lines.append("hooks:")
        for event in HOOK_EVENTS:
            script = path / hook_script(event)
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(TRIVIAL_SCRIPT)
            script.chmod(0o755)
            lines += [f"  {event}:", f"    - location: {hook_script(event)}", "      timeout: 30"]
    (path / "appspec.yml").write_text("\n".join(lines) + "\n")
    return path
