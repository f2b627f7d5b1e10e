"""The one place that chooses the native hot path or its pure-Python twin.

``SANDBOXQ_NO_EXTENSIONS=1`` forces the twin. Otherwise the compiled
``sandboxq._fast`` is used when it was built, and ``IMPLEMENTATION`` says
which one is loaded ("native" or "pure").
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING


def _choose() -> tuple[ModuleType, str]:
    if os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") not in ("", "0"):
        from sandboxq import _fast_py

        return _fast_py, "pure"
    try:
        from sandboxq import _fast
    except ImportError:
        from sandboxq import _fast_py

        return _fast_py, "pure"
    return _fast, "native"


_impl, IMPLEMENTATION = _choose()

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
    "MAX_FRAME_LIMIT",
    "MAX_FRAME_SIZE",
    "CorruptRecord",
    "FrameDecoder",
    "SlidingWindow",
    "decode_fetched",
    "decode_job_flat",
    "decode_job_mapping",
    "encode_frame",
]
