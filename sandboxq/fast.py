"""The one place that chooses the native hot path or its pure-Python twin.

``SANDBOXQ_NO_EXTENSIONS=1`` forces the twin. Otherwise the compiled
``sandboxq._fast`` is used when it was built, ``IMPLEMENTATION`` says
which one is loaded ("native" or "pure") and ``IMPLEMENTATION_REASON`` why
the twin runs ("" when the native one does). An install with no C compiler
at hand has no compiled module: it runs the twin, which gives the same
results, slower.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

#: Why the twin runs when it was asked for (other reasons say what went wrong).
FORCED = "SANDBOXQ_NO_EXTENSIONS is set"


def _choose() -> tuple[ModuleType, str, str]:
    from sandboxq import _fast_py

    if os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") not in ("", "0"):
        return _fast_py, "pure", FORCED
    try:  # by its full name: "from sandboxq import" can't tell a missing module apart
        _fast = importlib.import_module("sandboxq._fast")
    except ModuleNotFoundError as exc:
        if exc.name != "sandboxq._fast":
            raise  # the extension is there but needs a module that is not: a real error
        return _fast_py, "pure", "the native extension was not built with this install"
    except ImportError as exc:  # built for another Python or platform, or damaged
        return _fast_py, "pure", f"the native extension failed to import: {exc}"
    return _fast, "native", ""


_impl, IMPLEMENTATION, IMPLEMENTATION_REASON = _choose()


def describe() -> str:
    """One line for people: which implementation runs, and why the twin if it does."""
    if IMPLEMENTATION == "native":
        return "native extension"
    return f"pure-Python twin ({IMPLEMENTATION_REASON})"


from sandboxq._fast_py import CorruptRecord  # noqa: E402  one class, shared by both

decode_job_flat = _impl.decode_job_flat
decode_job_mapping = _impl.decode_job_mapping
decode_fetched = _impl.decode_fetched

if TYPE_CHECKING:  # the classes by name, so they can annotate (both share _fast.pyi)
    from sandboxq._fast import (
        MAX_FRAME_LIMIT,
        MAX_FRAME_SIZE,
        FrameDecoder,
        SlidingWindow,
        encode_frame,
    )
else:
    MAX_FRAME_LIMIT = _impl.MAX_FRAME_LIMIT
    MAX_FRAME_SIZE = _impl.MAX_FRAME_SIZE
    encode_frame = _impl.encode_frame
    FrameDecoder = _impl.FrameDecoder
    SlidingWindow = _impl.SlidingWindow

__all__ = [
    "IMPLEMENTATION",
    "IMPLEMENTATION_REASON",
    "MAX_FRAME_LIMIT",
    "MAX_FRAME_SIZE",
    "CorruptRecord",
    "FrameDecoder",
    "SlidingWindow",
    "decode_fetched",
    "decode_job_flat",
    "decode_job_mapping",
    "describe",
    "encode_frame",
]
