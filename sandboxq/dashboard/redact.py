"""Hide sensitive fields of job data, results and progress before display."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"


class Redactor:
    """Replace the value of every key that contains one of ``words``
    (case-insensitively), in nested dicts and lists."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(w.lower() for w in words if w)

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
