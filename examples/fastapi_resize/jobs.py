"""The worker side: resize an uploaded image with Pillow.

Run it with ``sandboxq worker jobs -q images --procs auto
--max-memory-per-child 512MiB``: each resize runs in a forked child, so a
decompression bomb that eats memory, or a corrupt file that crashes the
decoder, fails that one job (with a reason) and never the worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from sandboxq import Unrecoverable, handler

OUTPUTS = Path(os.environ.get("RESIZE_DIR", "resize-data")) / "resized"


@handler("images", timeout=30)
def resize(job: Any) -> dict[str, Any]:
    source = Path(job.data["path"])
    width = int(job.data["width"])
    try:
        image = Image.open(source)
        image.load()
    except FileNotFoundError:
        raise Unrecoverable(f"upload {source.name} is gone") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise Unrecoverable(f"not an image we can read: {exc}") from None
    job.update_progress(50)
    height = max(round(image.height * width / image.width), 1)
    resized = image.convert("RGB").resize((width, height))
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    target = OUTPUTS / f"{source.name}-{width}.jpg"
    resized.save(target, "JPEG", quality=85)
    return {"path": str(target), "width": width, "height": height}
