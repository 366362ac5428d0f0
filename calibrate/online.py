"""The online source: bi-level batches computed by the frozen detector every step (the paper's way).

This is what the released code does and what the cache replaces; it is kept as
the fidelity and speed reference. Per step:

1. draw n classes uniformly with replacement among the classes with train
   instances, and one image uniformly among the images holding each (from the
   annotation file, as the released code does);
2. run the frozen detector's transform, backbone and RPN on those images;
3. ``roi_heads.select_training_samples`` adds the GT boxes to the proposals and
   samples 512 RoIs per image with 25 % foreground (IoU >= 0.5), torchvision's own
   training sampler, set to the released code's numbers;
4. keep the foreground RoIs of the drawn class only, pool the background RoIs of the
   batch and subsample them to ``bg_ratio`` x foreground;
5. pool the kept RoIs with the detector's ``box_roi_pool``: the same tap as the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from simcal.calibrate.samplers import subsample
from simcal.data.annotations import Annotations
from simcal.data.detection_dataset import DetectionDataset


class OnlineSource:
    def __init__(self, model: torch.nn.Module, ann: Annotations, image_root: str | Path, seed: int = 0,
                 classes_per_batch: int = 16, bg_ratio: float = 1.0, rois_per_image: int = 512,
                 positive_fraction: float = 0.25) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        heads = model.roi_heads
        heads.fg_bg_sampler.batch_size_per_image = rois_per_image
        heads.fg_bg_sampler.positive_fraction = positive_fraction
        self.dataset = DetectionDataset(ann, image_root, with_masks=False)
        pos = {img_id: k for k, img_id in enumerate(self.dataset.image_ids)}
        images_of: dict[int, list[int]] = {}
        for a in ann.annotations:
            if not a.get("iscrowd", 0):
                images_of.setdefault(ann.mapping.to_contiguous(a["category_id"]), []).append(pos[a["image_id"]])
        self.images_of = {c: np.unique(v) for c, v in images_of.items()}
        self.classes = np.array(sorted(self.images_of))
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)  # torchvision's RoI sampler draws from the global generator
        self.n, self.bg_ratio = classes_per_batch, bg_ratio

    @torch.no_grad()
    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One bi-level batch: ``(B, D)`` features and ``(B,)`` labels on the detector's device."""
        m = self.model
        classes = self.classes[self.rng.integers(0, len(self.classes), size=self.n)]
        idx = [int(self.images_of[int(c)][self.rng.integers(0, len(self.images_of[int(c)]))]) for c in classes]
        items = [self.dataset[i] for i in idx]
        imgs = [im.to(self.device) for im, _ in items]
        # torchvision's target check wants a "masks" entry on a Mask R-CNN; the RoI sampler never reads it
        tgts = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device),
                 "masks": torch.zeros((len(t["labels"]), 1, 1), dtype=torch.uint8, device=self.device)}
                for _, t in items]
        image_list, tgts = m.transform(imgs, tgts)
        feats = m.backbone(image_list.tensors)
        proposals, _ = m.rpn(image_list, feats)
        proposals, _, labels, _ = m.roi_heads.select_training_samples(proposals, tgts)
        rois, ys, bg_rois = [], [], []
        for k, (p, lab) in enumerate(zip(proposals, labels)):
            fg = lab == int(classes[k])
            rois.append(p[fg])
            ys.append(lab[fg])
            bg_rois.append((k, p[lab == 0]))
        n_fg = sum(len(y) for y in ys)
        # background of the whole batch, subsampled to bg_ratio x foreground
        counts = np.array([len(b) for _, b in bg_rois])
        chosen = subsample(int(counts.sum()), int(round(self.bg_ratio * n_fg)), self.rng)
        owner = np.repeat(np.arange(len(bg_rois)), counts)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for k, b in bg_rois:
            mine = np.sort(chosen[owner[chosen] == k]) - offsets[k]
            sel = torch.from_numpy(mine).to(self.device)
            rois[k] = torch.cat([rois[k], b[sel]])
            ys[k] = torch.cat([ys[k], torch.zeros(len(sel), dtype=ys[k].dtype, device=self.device)])
        x = m.roi_heads.box_roi_pool(feats, rois, image_list.image_sizes).flatten(start_dim=1)
        return x.float(), torch.cat(ys)
