"""What every entry point checks before it trusts its input: size and depth before parsing,
and identifiers against their formats before they become Table keys, label or field
selectors, ARM URLs or log lines.

Each entry point calls these in one place (README, "Where input is checked"): the HTTP
helpers in ``functions/http_util.py``, the request parsers in ``shared/runs.py``, the queue
message parsers (``WorkItem.parse``, ``SyncMessage.parse``) and ``shared/config.py``. A
refusal is a ``ValidationError`` whose message shows the value as ``repr`` (shortened), so
the message itself can go into a log line or an answer as it is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.errors import ValidationError

# No message or request of the app nests deeper than a few levels; far deeper ones are
# refused before parsing (the decoder recurses, and so would everything that walks the result).
MAX_JSON_DEPTH = 32
# An operator request is a few hundred bytes; 1 MiB leaves room for a long node list.
MAX_REQUEST_BYTES = 1024 * 1024
# Azure Storage queue messages are at most 64 KiB; the app's own are under 300 bytes.
MAX_MESSAGE_BYTES = 64 * 1024
# A free-text field (a reason, who asked) is stored on records and logged.
MAX_TEXT_CHARS = 1024
_SHOWN = 80

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_A_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(raw: bytes, *, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``raw``'s arrays and objects nest (counting stops past ``limit``)."""
    depth = deepest = 0
    for bracket in _NOT_A_BRACKET.sub(b"", _JSON_STRING.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
        if deepest > limit:
            break
    return deepest


def parse_json(raw: bytes | str, *, what: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``raw`` as JSON, or a ``ValidationError`` naming ``what`` and the limit it broke."""
    data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise ValidationError(f"{what} is larger than {max_bytes} bytes ({len(data)})")
    if json_depth(data, limit=max_depth) > max_depth:
        raise ValidationError(f"{what} nests deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None


# Kubernetes object names (a Node's is a DNS subdomain, RFC 1123): nothing here can end a
# label or field selector term (",", "=", "!"), a URL path segment ("/", "?", "#") or a
# Table key, and nothing is a control character.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_POOL = re.compile(r"[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?")
_RUN_ID = re.compile(r"[A-Za-z0-9][-_A-Za-z0-9]*")
_DELIVERY = re.compile(r"[A-Za-z0-9][-_.A-Za-z0-9]*")

# kind -> (pattern, longest, what it must look like)
FORMATS: dict[str, tuple[re.Pattern[str], int, str]] = {
    "node": (_DNS_SUBDOMAIN, 253, "a Kubernetes node name (lower-case letters, digits, '-' and '.')"),
    "cluster": (_DNS_LABEL, 63, "lower-case letters, digits and '-'"),
    "pool": (_POOL, 63, "letters, digits, '-', '_' and '.'"),
    "run": (_RUN_ID, 64, "a run id (letters, digits, '-' and '_')"),
    "delivery": (_DELIVERY, 200, "a GitHub delivery id (letters, digits, '-', '_' and '.')"),
}
POOL_NAME_PATTERN = r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$"
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-_.A-Za-z0-9]*)?[A-Za-z0-9]")


def label_term_ok(key: str, value: str) -> bool:
    """Whether ``key=value`` is a Kubernetes label (key: an optional DNS-subdomain prefix and
    '/', then a name of at most 63 characters; value: empty or such a name)."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return False
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.fullmatch(value)))


def shown(value: object) -> str:
    """``value`` as a log line or an answer may show it: quoted, escaped, shortened."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def format_problem(kind: str, value: object) -> str:
    """Why ``value`` is no ``kind`` ("" if it is one)."""
    pattern, longest, rule = FORMATS[kind]
    if not isinstance(value, str) or not value:
        return f"{kind} name must be a non-empty string"
    if len(value) > longest:
        return f"{kind} {shown(value)} is longer than {longest} characters"
    if not pattern.fullmatch(value):
        return f"{kind} {shown(value)} is not {rule}"
    return ""


def check_name(kind: str, value: object) -> str:
    """``value`` if it has the format of a ``kind`` (node, cluster, pool, run, delivery),
    else a ``ValidationError`` saying why."""
    problem = format_problem(kind, value)
    if problem:
        raise ValidationError(problem)
    assert isinstance(value, str)
    return value


def check_text(field: str, value: str, *, longest: int = MAX_TEXT_CHARS) -> str:
    """A free-text field, at most ``longest`` characters (its control characters are
    escaped wherever it is logged)."""
    if len(value) > longest:
        raise ValidationError(f"field {field!r} is longer than {longest} characters")
    return value
