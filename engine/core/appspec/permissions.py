"""The ``permissions`` section of a server AppSpec (pure): objects, types, modes, ACL entries, SELinux contexts.

The agent applies these after Install with its own small grammars (``ModeInfo``, ``AceInfo``, ``RangeInfo``); the
checks below follow them, so a value the agent would refuse, or read differently (an unquoted ``0644`` is the
octal number 420), is refused before any host is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from yaml.nodes import Node, ScalarNode, SequenceNode

from engine.core.appspec.model import FAILED, AppSpecReader, Permission, SELinuxContext
from engine.core.yamlnode import Entry, as_written, is_null, quoted

_NO_OBJECT = (
    f"{FAILED} a permission listed in the application specification file has no object value. "
    "Update the permissions section of the AppSpec file, and then try again."
)
_WINDOWS_PERMISSIONS = (
    f"{FAILED} the application specification file specifies file permissions, but the deployment is targeting "
    "one or more Windows Server instances. Permissions are supported only for Amazon Linux, Ubuntu Server, and "
    "Red Hat Enterprise Linux (RHEL) instances. Remove the permissions section or use `os: linux`."
)
_ACL_PROBLEM = f"{FAILED} of a problem with the acls permission settings in the application specification file."
_ACE_TYPES = {"u": "user", "user": "user", "g": "group", "group": "group", "m": "mask", "mask": "mask"}
_ACE_TYPES |= {"o": "other", "other": "other"}
_MODE_TYPES = 'mode must be an octal number such as 644 or 4755, or a quoted string such as "0644"'
_PERMISSION_KEYS = ("object", "pattern", "except", "type", "owner", "group", "mode", "acls", "context")


def parse_permissions(reader: AppSpecReader, entry: Entry, os_name: str | None) -> tuple[Permission, ...]:
    """The ``permissions`` items (none on Windows, where the agent refuses them)."""
    items = reader.sequence(entry.value, "permissions", "'- object: /opt/app' with 'mode: 644' below it") or []
    if items and os_name == "windows":
        reader.report(entry.key, _WINDOWS_PERMISSIONS)
        return ()
    permissions = (_permission(reader, item) for item in items)
    return tuple(p for p in permissions if p is not None)


def _permission(reader: AppSpecReader, node: Node) -> Permission | None:
    found = reader.known_keys(node, _PERMISSION_KEYS, "a permissions item")
    if found is None:
        return None
    target = reader.optional_text(found, "object")
    if not target:
        reader.report(found["object"].value if "object" in found else node, _NO_OBJECT)
    pattern = reader.optional_text(found, "pattern") or "**"
    excepts = _text_list(reader, found, "except", "'except: [README.md]'")
    types = _text_list(reader, found, "type", "'type: [file]'")
    for type_node, kind in zip(_list_nodes(found, "type"), types, strict=False):
        if kind not in ("file", "directory"):
            reader.report(
                type_node,
                f"{FAILED} the application specification file specifies a permission for an object type not "
                f"supported for permissions ({kind}). Use file, directory or both.",
            )
    if _list_nodes(found, "type") == [] and "type" in found and isinstance(found["type"].value, SequenceNode):
        reader.report(found["type"].value, "type must list file, directory or both (leave it out for both)")
    acls = _text_list(reader, found, "acls", "'acls: [\"u:bob:rw\"]'")
    for acl_node, acl in zip(_list_nodes(found, "acls"), acls, strict=False):
        problem = _ace_problem(acl)
        if problem:
            reader.report(acl_node, problem)
    mode = _mode(reader, found["mode"].value) if "mode" in found else None
    context = _context(reader, found["context"]) if "context" in found else None
    return Permission(
        object=target or "",
        pattern=pattern,
        except_=tuple(excepts),
        types=frozenset(types) or frozenset({"file", "directory"}),
        owner=reader.optional_text(found, "owner"),
        group=reader.optional_text(found, "group"),
        mode=mode,
        acls=tuple(acls),
        context=context,
    )


def _list_nodes(found: Mapping[str, Entry], name: str) -> list[Node]:
    node = found[name].value if name in found else None
    return list(node.value) if isinstance(node, SequenceNode) else []


def _text_list(reader: AppSpecReader, found: Mapping[str, Entry], name: str, example: str) -> list[str]:
    if name not in found:
        return []
    items = reader.sequence(found[name].value, name, example) or []
    texts = [reader.text(item, f"an item of {name}") for item in items]
    return [text.strip() for text in texts if text is not None]


def _mode(reader: AppSpecReader, node: Node) -> str | None:
    """The agent's ``ModeInfo``: ``to_s``, left-padded to 3, at most 4 characters, digits 0-7 only.

    An unquoted ``0755`` is the YAML 1.1 octal number 493, which the agent rejects ("invalid character (9)");
    ``0644`` becomes 420 and would silently set the wrong mode. The docs say to quote such values, so both fail.
    """
    value = reader.value(node)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        # An int comes from a ScalarNode only (reader.value gives UNREADABLE for the rest): style None is unquoted.
        if isinstance(node, ScalarNode) and node.style is None and re.fullmatch(r"[-+]?0[0-7_]+", node.value):
            outcome = _mode_problem(text) or f"The agent would set mode {text.rjust(3, '0')} instead."
            reader.report(
                node,
                f"mode {node.value} has a leading zero, so YAML reads it as the octal number {value}. {outcome} "
                f'Quote it (mode: "{node.value}") or drop the leading zero (mode: {node.value.lstrip("0") or 0}).',
            )
            return None
    elif isinstance(value, str):
        text = value.strip()
    else:
        reader.report(node, f"{_MODE_TYPES}, not {quoted(node)}")
        return None
    problem = _mode_problem(text)
    if problem:
        reader.report(node, f"{problem} Modes are octal: up to four digits from 0 to 7, such as 644 or 4755.")
        return None
    return text.rjust(3, "0")


def _mode_problem(mode: str) -> str | None:
    mode = mode.rjust(3, "0")
    if len(mode) > 4:
        return (
            f"{FAILED} the length of a permissions mode ({mode}) in the application specification file is "
            "invalid. Permissions modes must be between one and four characters long."
        )
    bad = next((char for char in mode if char not in "01234567"), None)
    if bad is not None:
        return (
            f"{FAILED} the permissions mode ({mode}) in the application specification file contains an invalid "
            f"character ({bad})."
        )
    return None


def _ace_problem(ace: str) -> str | None:
    """The agent's ``AceInfo`` grammar: ``[d[efault]:][u[ser]|g[roup]|m[ask]|o[ther]:]name:perms``."""
    invalid = f"{_ACL_PROBLEM} Invalid acl entry ({ace}). Entries look like u:bob:rw, g:staff:r-x or d:u:bob:rwx."
    parts = ace.split(":")[::-1]
    if not 2 <= len(parts) <= 4 or (len(parts) == 4 and parts[3] not in ("d", "default")):
        return invalid
    default = len(parts) == 4
    kind: str | None = None
    name = ""
    if len(parts) >= 3:
        if parts[2] in ("d", "default"):
            if default:
                return invalid
            default = True
        elif parts[2] in _ACE_TYPES:
            kind = _ACE_TYPES[parts[2]]
        else:
            return invalid
    who = _ACE_TYPES.get(parts[1]) if parts[1] in ("m", "mask", "o", "other") else None
    if who is not None and kind is None:
        kind = who
    else:
        kind = kind or "user"
        name = parts[1]
    if kind in ("mask", "other") and name:
        return invalid
    if not default and kind != "mask" and not name:
        return f"{_ACL_PROBLEM} Use mode to set the base acl entry ({ace}): ACL entries must name a user or group."
    perms = parts[0]
    if len(perms) == 1 and perms in "01234567":
        return None
    bad = next((char for char in perms if char not in "rwx-"), None)
    if bad is not None:
        return (
            f"{FAILED} the access control list (ACL) named {ace} in the application specification file contains "
            f"an invalid character ({bad}). Permissions are one octal digit or the letters r, w, x and -."
        )
    return None


def _context(reader: AppSpecReader, entry: Entry) -> SELinuxContext | None:
    """SELinux context. The agent reads ``name`` for the SELinux user, the docs write ``user``: both are accepted."""
    key, node = entry.key, entry.value
    if is_null(node):
        return None
    found = reader.known_keys(node, ("name", "user", "type", "range"), "context")
    if found is None:
        return None
    if "name" in found and "user" in found:
        reader.report(found["user"].key, "give the SELinux user once: as name (the agent's key) or user (the docs')")
    kind = reader.optional_text(found, "type")
    if not kind:
        shown = "{" + ", ".join(f"{k}: {as_written(v.value)}" for k, v in found.items()) + "}"
        reader.report(
            key,
            f"{FAILED} the application specification file specifies an invalid context type ({shown}). "
            "The context needs a type, e.g. 'type: httpd_sys_content_t'.",
        )
    selinux_range = reader.optional_text(found, "range")
    if selinux_range is not None:
        try:
            _check_range(selinux_range)
        except ValueError as exc:
            reader.report(
                found["range"].value,
                f"{FAILED} of a problem with the SELinux range specified ({selinux_range}) for the context "
                f"parameter in the permissions section of the application specification file: {exc}. "
                "Ranges look like s0, s0-s2 or s0:c0.c10,c12.",
            )
    user = reader.optional_text(found, "name") or reader.optional_text(found, "user")
    return SELinuxContext(kind or "", user, selinux_range)


def _check_range(text: str) -> None:
    """The agent's ``RangeInfo``: ``s<n>[-s<n>][:c<n>[.c<n>],...]``, categories 0-1023, none twice."""
    parts = _range_parts(text, ":")
    sensitivities = [_range_level(part, "s") for part in _range_parts(parts[0], "-")]
    if sensitivities != sorted(sensitivities):
        raise ValueError("the high sensitivity is lower than the low one")
    if len(parts) == 1:
        return
    categories: list[int] = []
    for part in parts[1].split(","):
        if "." in part:
            low, high = (_range_level(bound, "c") for bound in _range_parts(part, "."))
            if high < low:
                raise ValueError(f"invalid category range {part}")
            categories.extend(range(low, high + 1))
        else:
            categories.append(_range_level(part, "c"))
    if len(categories) != len(set(categories)):
        raise ValueError("duplicate categories")


def _range_parts(text: str, separator: str) -> list[str]:
    parts = text.split(separator, 1)
    if "" in parts:
        raise ValueError(f"invalid range part {text}")
    return parts


def _range_level(part: str, letter: str) -> int:
    digits = part[1:]
    level = int(digits) if part[:1] == letter and digits.isascii() and digits.isdigit() else -1
    if level < 0 or (letter == "c" and level > 1023):
        raise ValueError(f"invalid {'sensitivity' if letter == 's' else 'category'} {part}")
    return level
