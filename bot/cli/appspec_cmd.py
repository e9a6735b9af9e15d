"""``deploybot appspec validate FILE``: check an AppSpec file before any host is touched.

Exit codes: 0 valid, 1 invalid (each problem on stderr as ``FILE:LINE:COL: message``), 2 usage error, including a
file that cannot be read. ``--json`` prints one document on stdout instead, with the same exit codes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_USAGE_ERROR = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engine import Platform

    parser = subparsers.add_parser("appspec", help="check AppSpec files", description="Check AppSpec files.")
    parser.set_defaults(func=lambda _args: _usage(parser))
    actions = parser.add_subparsers(dest="appspec_action", metavar="ACTION")
    validate = actions.add_parser(
        "validate",
        help="validate an AppSpec file strictly (exit 0 valid, 1 invalid, 2 usage)",
        description="Validate an AppSpec file the way deploybot does before a deployment starts.",
    )
    validate.add_argument("file", metavar="FILE", help="the AppSpec file, e.g. appspec.yml")
    validate.add_argument(
        "--platform",
        choices=[platform.value for platform in Platform],
        default=Platform.SERVER.value,
        help="compute platform the file is for (default: server)",
    )
    validate.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    validate.set_defaults(func=run_validate)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return _USAGE_ERROR


def run_validate(args: argparse.Namespace) -> int:
    from engine import AppSpec, AppSpecInvalid, Platform, Problem, normalized, parse_appspec

    platform = Platform(args.platform)
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"deploybot appspec validate: cannot read {args.file}: {reason}", file=sys.stderr)
        return _USAGE_ERROR
    spec: AppSpec | None = None
    problems: list[Problem] = []
    try:
        spec = parse_appspec(data.decode("utf-8"), platform=platform, filename=args.file)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problems = [Problem(args.file, line, column, "the file is not UTF-8 text: save it as UTF-8")]
    except AppSpecInvalid as exc:
        problems = list(exc.problems)
    if args.json:
        document = {
            "valid": spec is not None,
            "platform": platform.value,
            "errors": [{"line": p.line, "column": p.column, "message": p.message} for p in problems],
            "spec": normalized(spec) if spec is not None else None,
        }
        print(json.dumps(document, indent=2))
    elif spec is None:
        for problem in problems:
            print(f"{problem.file}:{problem.line}:{problem.column}: {problem.message}", file=sys.stderr)
    else:
        print(f"{args.file}: valid {platform.value} AppSpec")
    return 0 if spec is not None else 1
