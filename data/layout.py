"""Where a command's images and annotations are: ``--data DIR --split S`` or ``--ann FILE --images DIR``.

``--data`` is the folder ``simcal data synth`` writes: ``DIR/annotations/<split>.json``
with images under ``DIR/images/<split>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from simcal.core.errors import input_error


def resolve_dataset(data: str | os.PathLike | None, split: str, ann: str | os.PathLike | None,
                    images: str | os.PathLike | None, what: str = "images") -> tuple[Path, Path]:
    """(annotation file, image root) from the flags of :func:`simcal.core.cli_args.add_dataset_args`."""
    if data and ann:
        raise input_error(None, "pass either --data (with --split) or --ann with --images, not both")
    if data:
        root = Path(data)
        path = root / "annotations" / f"{split}.json"
        if not path.is_file():
            raise input_error(root, f"has no annotations/{split}.json", "pass a folder written by 'simcal data synth'")
        return path, root / "images" / split
    if not ann or not images:
        raise input_error(None, f"no {what} given", "pass --data DIR (with --split), or --ann FILE with --images DIR")
    return Path(ann), Path(images)
