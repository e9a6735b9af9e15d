"""The bot's settings: secrets come only from the environment, never from the YAML config (which is committed).

``Settings.from_env`` takes the environment as a plain mapping (starlette's ``Config(environ=...)``), so tests pass
a dict instead of patching ``os.environ``. Secret fields are left out of ``repr`` so a logged Settings leaks nothing.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
DEFAULT_GITHUB_API_URL = "https://api.github.com"
API_TOKEN_FILENAME = "api-token"
BOOTSTRAP_TOKEN_PREFIX = "dbt_"  # as engine/runtime/tokens.py's TOKEN_PREFIX: recognisable by secret scanners


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """An environment variable, with empty or blank values counting as unset (``FOO= make run``)."""
    value = environ.get(name, "").strip()
    return value or None


def choice(
    given: str | None, environ: Mapping[str, str], *, option: str, variable: str, choices: tuple[str, ...], what: str
) -> str:
    """``option``'s value when given, else $``variable``, else the first of ``choices`` (case does not matter);
    ValueError, naming where it came from, for a value not among them (``what`` says what a choice is)."""
    chosen = (given or _get(environ, variable) or choices[0]).lower()
    if chosen not in choices:
        source = option if given else variable
        raise ValueError(f"{source}={chosen!r} is not {what}: use {' or '.join(choices)}")
    return chosen


_TOKEN_FILE_OF_DATA_DIR = Path("var") / API_TOKEN_FILENAME
"""The default of ``Settings.api_token_file``, told apart by identity: it stands for ``data_dir``'s token file."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the HTTP server needs besides the engine configuration.

    ``api_token`` (DEPLOYBOT_TOKEN) and the contents of ``api_token_file`` are the bootstrap admin's secrets: the
    file (written by ``deploybot serve``) for the local CLI, the env var for scripts and CI. The server registers
    them once, by hash, as tokens of the bootstrap admin; from then on the store decides (a revoked one stays
    refused). Everyone else gets a per-user token (``deploybot token create``).
    """

    data_dir: Path = Path("var")
    api_token_file: Path = _TOKEN_FILE_OF_DATA_DIR  # unless given: ``data_dir``'s (``__post_init__``)
    api_token: str | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_api_url: str = DEFAULT_SLACK_API_URL
    github_webhook_secret: str | None = field(default=None, repr=False)
    github_token: str | None = field(default=None, repr=False)
    github_api_url: str = DEFAULT_GITHUB_API_URL
    aws_keys: str | None = field(default=None, repr=False)  # DEPLOYBOT_AWS_KEYS: ACCESS_KEY:SECRET:ACTOR[,...]
    pages_secret: str | None = field(default=None, repr=False)  # DEPLOYBOT_PAGES_SECRET: signs page links

    def __post_init__(self) -> None:
        # Settings(data_dir=X) reads X/api-token, not ./var/api-token: the latter is the token file of whatever
        # server last ran in the current directory (`make run` in a checkout, then `make test` there).
        if self.api_token_file is _TOKEN_FILE_OF_DATA_DIR:
            object.__setattr__(self, "api_token_file", self.data_dir / API_TOKEN_FILENAME)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, data_dir: Path | str | None = None) -> Settings:
        """Read the settings from ``environ``.

        Args:
            environ: usually ``os.environ``.
            data_dir: the server's data directory (``server.data_dir`` of the config); falls back to
                DEPLOYBOT_DATA_DIR, then ``var``. The API token file is ``<data_dir>/api-token`` unless
                DEPLOYBOT_TOKEN_FILE says otherwise.
        """
        base = Path(data_dir if data_dir is not None else _get(environ, "DEPLOYBOT_DATA_DIR") or "var")
        token_file = _get(environ, "DEPLOYBOT_TOKEN_FILE")
        return cls(
            data_dir=base,
            api_token_file=Path(token_file) if token_file else base / API_TOKEN_FILENAME,
            api_token=_get(environ, "DEPLOYBOT_TOKEN"),
            slack_bot_token=_get(environ, "SLACK_BOT_TOKEN"),
            slack_signing_secret=_get(environ, "SLACK_SIGNING_SECRET"),
            slack_app_token=_get(environ, "SLACK_APP_TOKEN"),
            slack_api_url=_get(environ, "SLACK_API_URL") or DEFAULT_SLACK_API_URL,
            github_webhook_secret=_get(environ, "GITHUB_WEBHOOK_SECRET"),
            github_token=_get(environ, "GITHUB_TOKEN"),
            github_api_url=_get(environ, "GITHUB_API_URL") or DEFAULT_GITHUB_API_URL,
            aws_keys=_get(environ, "DEPLOYBOT_AWS_KEYS"),
            pages_secret=_get(environ, "DEPLOYBOT_PAGES_SECRET"),
        )

    @property
    def upload_dir(self) -> Path:
        """Where uploaded bundles are streamed before the engine stores them (same filesystem: cheap moves)."""
        return self.data_dir / "uploads"

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_bot_token and (self.slack_signing_secret or self.slack_app_token))

    @property
    def github_enabled(self) -> bool:
        return bool(self.github_webhook_secret)

    def api_tokens(self) -> frozenset[str]:
        """The bootstrap secrets to register at start: DEPLOYBOT_TOKEN and the token file's content (reads the
        file). Not what the API accepts: that is whatever the store holds unrevoked and unexpired."""
        tokens = {self.api_token} if self.api_token else set()
        try:
            from_file = self.api_token_file.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            from_file = ""
        if from_file:
            tokens.add(from_file)
        return frozenset(tokens)


def ensure_api_token_file(path: Path) -> bool:
    """Create ``path`` holding a fresh random bootstrap token (``dbt_`` + 43 URL-safe characters, like every API
    token), mode 0600, unless it exists; True when it was created.

    ``O_EXCL`` makes two servers starting at once agree on one token instead of overwriting each other's.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(BOOTSTRAP_TOKEN_PREFIX + secrets.token_urlsafe(32) + "\n")
    return True
