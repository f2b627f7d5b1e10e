"""Running a guide's examples as a test: each ```python block of the page,
in order, on a queue of the test's own (the guide's queue name replaced)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from sandboxq import Queue

GUIDES = Path(__file__).resolve().parent.parent / "docs" / "guides"


def run_guide_examples(
    page: str, text: str, replacement: str, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """Run ``docs/guides/PAGE``'s examples with each ``text`` in them made
    ``replacement``, where ``{name}`` is a fresh queue's name (obliterated
    after). Each block checks what it shows; one that fails raises."""
    guide = GUIDES / page
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", redis_url)
    name = f"guide-{uuid.uuid4().hex[:8]}"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), re.DOTALL)
    assert len(blocks) >= 4, f"{page} has fewer examples than it used to"
    try:
        for block in blocks:
            code = block.replace(text, replacement.format(name=name))
            exec(compile(code, str(guide), "exec"), {})
    finally:
        Queue(name, url=redis_url).obliterate(force=True)
