"""The category mapping: dataset category id <-> contiguous index 1..C (0 = background).

Category ids in json are arbitrary (COCO skips ids, LVIS is 1..1230 with gaps in
val); models index classes 1..C in ascending category-id order, torchvision's
convention with 0 as background. One mapping, built from the *train* file, is
stored in every checkpoint, cache and results file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class CategoryMapping:
    """Ascending category ids; ``ids[k - 1]`` is the category of contiguous label ``k``."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ValueError("ids and names differ in length")
        if list(self.ids) != sorted(set(self.ids)):
            raise ValueError("category ids must be unique and ascending")
        object.__setattr__(self, "_index", {cid: k + 1 for k, cid in enumerate(self.ids)})

    @classmethod
    def from_categories(cls, categories: Iterable[Mapping[str, Any]]) -> "CategoryMapping":
        cats = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in cats), tuple(str(c.get("name", c["id"])) for c in cats))

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes (a classifier has C + 1 outputs)."""
        return len(self.ids)

    def to_contiguous(self, category_id: int) -> int:
        """Category id -> label in 1..C; KeyError for an unknown id."""
        return self._index[int(category_id)]  # type: ignore[attr-defined]

    def to_category_id(self, label: int) -> int:
        """Label in 1..C -> category id; 0 (background) has no category."""
        if not 1 <= int(label) <= len(self.ids):
            raise KeyError(f"label {label} is not in 1..{len(self.ids)}")
        return self.ids[int(label) - 1]

    def __contains__(self, category_id: object) -> bool:
        return category_id in self._index  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, list]:
        """JSON-/torch-``weights_only``-serializable form (plain lists of ints and strs)."""
        return {"ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence]) -> "CategoryMapping":
        return cls(tuple(int(i) for i in d["ids"]), tuple(str(n) for n in d["names"]))
