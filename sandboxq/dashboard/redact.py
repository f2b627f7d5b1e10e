"""Hide sensitive fields of job data, results and progress before display,
and the same secrets wherever they show up in text: an error, a traceback,
a log line."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

REDACTED = "[redacted]"
#: Shorter values of sensitive fields are not searched for in text: hiding
#: every "1" or "ab" of a traceback would hide the traceback, not a secret.
MIN_SECRET_LENGTH = 4


class Redactor:
    """Replace the value of every key that contains one of ``words``
    (case-insensitively), in nested dicts and lists."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(w.lower() for w in words if w)
        # In text: NAME=VALUE or NAME: VALUE (quoted or not, as in a query
        # string, a dict's repr, JSON or YAML) where NAME holds a word.
        # "NAME = VALUE" is left alone: that is code, in a traceback.
        names = "|".join(re.escape(w) for w in self.words)
        self._pairs = re.compile(
            rf"""(?ix)
            (?P<name>[\w.-]*(?:{names})[\w.-]*)
            (?P<sep>["']?(?::[ \t]*|=))
            (?P<value>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[^\s,;&()\[\]{{}}<>"']+)
            """
        )

    def sensitive(self, key: object) -> bool:
        text = str(key).lower()
        return any(word in text for word in self.words)

    def __call__(self, value: Any) -> Any:
        if not self.words:
            return value
        if isinstance(value, dict):
            return {k: REDACTED if self.sensitive(k) else self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return value

    def secrets(self, *sources: Any) -> list[str]:
        """The text of every value that ``self(source)`` hides (each leaf
        under a sensitive key), longest first."""
        found: set[str] = set()

        def walk(value: Any, hidden: bool) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, hidden or self.sensitive(k))
            elif isinstance(value, list | tuple):
                for v in value:
                    walk(v, hidden)
            elif hidden and value is not None and not isinstance(value, bool):
                text = str(value)
                if len(text) >= MIN_SECRET_LENGTH:
                    found.add(text)

        if self.words:
            for source in sources:
                walk(source, False)
        return sorted(found, key=len, reverse=True)

    def in_text(self, *sources: Any) -> Callable[[str | None], str | None]:
        """A function that hides, in a text, what ``self`` hides in
        ``sources`` (a job's data, result...), and the value of every
        ``name=value`` or ``name: value`` whose name is sensitive."""
        secrets = self.secrets(*sources)

        def hide(text: str | None) -> str | None:
            if not text or not self.words:
                return text
            for secret in secrets:
                text = text.replace(secret, REDACTED)
            return self._pairs.sub(_hide_value, text)

        return hide


def _hide_value(found: re.Match[str]) -> str:
    value = found["value"]
    quote = value[0] if value[0] in "\"'" else ""
    return f"{found['name']}{found['sep']}{quote}{REDACTED}{quote}"
