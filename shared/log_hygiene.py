"""No log line holds a raw control character, whoever chose the text.

Node names, event ids, delivery ids, principal headers and error messages reach log lines,
and some of them come from outside: a newline in one would start a forged line of its own
("... ERROR run abc succeeded"), an ESC sequence would repaint a terminal. Every record is
escaped as it is made, whichever logger made it and whichever handler writes it (the
Functions worker's, Application Insights', a test's), so the app installs one record
factory at start-up (``function_app.py``) rather than a filter on each handler: a filter on
a logger misses what its children propagate, and a filter on a handler misses handlers
added later.

A message whose text is clean is left as it was, template and arguments; one that is not
is replaced by its formatted text, escaped (``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u2028``),
with no arguments left. An exception's message is escaped in its traceback too; the
traceback's own line breaks stay.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from typing import Any

# C0 and C1 controls and DEL, and the Unicode line and paragraph separators that some log
# viewers also break lines on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control_characters(text: str) -> str:
    """``text`` with every control character written out as its escape."""
    return _CONTROL.sub(_escaped, text)


class EscapeControlCharacters(logging.Filter):
    """Rewrites a record so that its message and its exception's text hold no control
    character; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a template that does not fit its arguments: logging reports it itself
            return True
        if _CONTROL.search(message):
            record.msg, record.args = escape_control_characters(message), ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = _traceback(record.exc_info)
        return True


def _traceback(exc_info: Any) -> str:
    """The traceback as ``logging.Formatter.formatException`` writes it, with each
    exception's own message (and notes) escaped."""
    shown = traceback.TracebackException(*exc_info)
    seen: set[int] = set()
    pending = [shown]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # ``_str`` is where TracebackException keeps str(exception) (3.11 to 3.13); a
        # version without it keeps the message as Python writes it.
        message = getattr(current, "_str", None)
        if isinstance(message, str):
            setattr(current, "_str", escape_control_characters(message))  # noqa: B010 - private
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            current.__notes__ = [escape_control_characters(str(note)) for note in notes]
        pending.extend(t for t in (current.__cause__, current.__context__) if t is not None)
        pending.extend(getattr(current, "exceptions", None) or ())
    text = "".join(shown.format())
    return text[:-1] if text.endswith("\n") else text


_MARK = "_escapes_control_characters"


def install() -> None:
    """Escape every record made in this process from now on (idempotent)."""
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
    if getattr(previous, _MARK, False):
        return
    escape = EscapeControlCharacters()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        escape.filter(record)
        return record

    setattr(factory, _MARK, True)
    logging.setLogRecordFactory(factory)
