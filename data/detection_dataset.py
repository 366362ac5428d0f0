"""A torch Dataset over a validated annotation file, in torchvision detection format.

``dataset[i]`` returns ``(image, target)``:
- ``image``: ``(3, H, W)`` float32 in [0, 1];
- ``target["boxes"]``: ``(N, 4)`` float32 xyxy in (resized) image pixels;
- ``target["labels"]``: ``(N,)`` int64 contiguous labels 1..C (0 is background);
- ``target["masks"]``: ``(N, H, W)`` uint8, decoded with pycocotools;
- ``target["image_id"]``: int, the dataset's image id; ``target["flipped"]``: bool.

Crowd regions are dropped (they are not instances to detect or classify).
Random horizontal flip is drawn from a generator seeded by ``(seed, epoch,
index)``, so a sample is the same whatever the worker or process order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from simcal.core.errors import input_error
from simcal.data.annotations import Annotations


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 4) xyxy boxes of an image ``width`` pixels wide -> the same boxes after a horizontal flip."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def decode_masks(anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` uint8 masks from polygon or RLE segmentations (box-filled when absent)."""
    from pycocotools import mask as mask_utils

    out = np.zeros((len(anns), height, width), dtype=np.uint8)
    for k, a in enumerate(anns):
        seg = a.get("segmentation")
        if seg is None:
            x, y, w, h = a["bbox"]
            out[k, int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = 1
            continue
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        out[k] = mask_utils.decode(rle)
    return out


class DetectionDataset(Dataset):
    """Images and instance targets of one annotation file.

    Args:
        annotations: a validated :class:`Annotations`.
        image_root: folder the images' ``file_name`` are relative to.
        flip_prob: probability of a horizontal flip (0 for evaluation).
        min_size: if set, resize so the shorter side is ``min_size`` (capped by ``max_size``).
        seed: seeds the flips; ``set_epoch`` changes them between epochs.
        with_masks: decode masks (extraction only needs boxes).
    """

    def __init__(
        self,
        annotations: Annotations,
        image_root: str | os.PathLike,
        flip_prob: float = 0.0,
        min_size: int | None = None,
        max_size: int = 1333,
        seed: int = 0,
        with_masks: bool = True,
    ) -> None:
        self.ann = annotations
        self.root = Path(image_root)
        self.flip_prob = flip_prob
        self.min_size = min_size
        self.max_size = max_size
        self.seed = seed
        self.epoch = 0
        self.with_masks = with_masks
        self.image_ids = [img["id"] for img in annotations.images]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_ids)

    def check_files(self) -> None:
        """Raise one InputError naming the first missing image and how many are missing."""
        missing = [
            self.ann.image_path(img, self.root) for img in self.ann.images
            if not self.ann.image_path(img, self.root).is_file()
        ]
        if missing:
            raise input_error(
                missing[0], f"image file is missing ({len(missing)} of {len(self.image_ids)} images missing)",
                f"check --images (image root {self.root})",
            )

    def _load_image(self, img: dict[str, Any]) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.ann.image_path(img, self.root)
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise input_error(path, "image file is missing", f"check the image root {self.root}")
        except (UnidentifiedImageError, OSError) as e:
            raise input_error(path, f"cannot be read as an image ({e})")
        if arr.shape[:2] != (img["height"], img["width"]):
            raise input_error(
                path, f"is {arr.shape[1]}x{arr.shape[0]} but the annotations say {img['width']}x{img['height']}",
                "use the images the annotation file was made for",
            )
        return arr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        img = self.ann.image(self.image_ids[index])
        arr = self._load_image(img)
        anns = [a for a in self.ann.annotations_of(img["id"]) if not a.get("iscrowd", 0)]
        H, W = arr.shape[:2]
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.tensor([self.ann.mapping.to_contiguous(a["category_id"]) for a in anns], dtype=torch.int64)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)
        masks = torch.from_numpy(decode_masks(anns, H, W)) if self.with_masks else None

        flipped = False
        if self.flip_prob > 0:
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
            flipped = bool(torch.rand((), generator=g) < self.flip_prob)
        if flipped:
            image = image.flip(-1)
            boxes = flip_boxes(boxes, W)
            if masks is not None:
                masks = masks.flip(-1)
        if self.min_size is not None:
            scale = min(self.min_size / min(H, W), self.max_size / max(H, W))
            if scale != 1.0:
                size = (round(H * scale), round(W * scale))
                image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
                boxes = boxes * torch.tensor([size[1] / W, size[0] / H, size[1] / W, size[0] / H])
                if masks is not None and len(masks):
                    masks = torch.nn.functional.interpolate(masks[None].float(), size=size, mode="nearest")[0].byte()
                elif masks is not None:
                    masks = masks.new_zeros((0, *size))
        target: dict[str, Any] = {"boxes": boxes, "labels": labels, "image_id": img["id"], "flipped": flipped}
        if masks is not None:
            target["masks"] = masks
        return image, target


def collate(batch: list) -> tuple[list, list]:
    """Detection batches are lists (images differ in size)."""
    return tuple(zip(*batch))  # type: ignore[return-value]
