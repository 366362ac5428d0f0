"""Baseline detector training: a flat loop in the style of torchvision's detection references.

    simcal train --data runs/demo/data --arch tiny --iters 3000 --out runs/demo/tiny.pth
    torchrun --nproc_per_node 2 -m simcal train ...        # DDP: gloo on CPU, nccl on GPU

SGD with momentum, linear warm-up then x0.1 steps (one LambdaLR), gradient
clipping, AMP on CUDA. Every ``--checkpoint-every`` iterations rank 0 writes
``OUT.resume.pth`` (weights, optimizer, scheduler, scaler, RNG); ``--resume``
continues from it and, because the image stream and the RNG are restored, ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from simcal.core.errors import input_error


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from simcal.detector.cli import add_train_arguments

    return add_train_arguments(argparse.ArgumentParser("simcal train", add_help=add_help))


def lr_factor(it: int, warmup: int, steps: list[int]) -> float:
    """Linear warm-up from 0.001 to 1 over ``warmup`` iterations, then x0.1 at each step."""
    w = 1.0 if it >= warmup else 0.001 + (1 - 0.001) * it / max(warmup, 1)
    return w * 0.1 ** sum(it >= s for s in steps)


def _plain_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}


#: The arguments that change the weights a run ends with (its identity in CKPT.manifest.json).
TRAINING_ARGS = ("arch", "class_agnostic", "backbone_weights", "iters", "batch_size", "lr", "momentum", "weight_decay",
                 "warmup", "lr_steps", "clip_grad", "flip", "sampler", "rfs_t", "cls_loss", "focal_gamma",
                 "reweight_n", "margin_k", "seed")


def _identity(args: argparse.Namespace, annotation_fingerprint: str) -> dict[str, Any]:
    return {"annotation_fingerprint": annotation_fingerprint, "args": {k: getattr(args, k) for k in TRAINING_ARGS}}


def _builder_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"class_agnostic": bool(args.class_agnostic)}
    return kw


def main(args: argparse.Namespace) -> int:
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from simcal.core.atomic import write_json
    from simcal.core.device import resolve_amp, resolve_device
    from simcal.core.manifest import completed, remove_manifest, write_manifest
    from simcal.data.annotations import load_annotations
    from simcal.data.detection_dataset import DetectionDataset, collate
    from simcal.data.layout import resolve_dataset
    from simcal.data.statistics import category_statistics
    from simcal.detector.builders import build
    from simcal.detector.checkpoint import make_checkpoint, read_checkpoint, save_checkpoint
    from simcal.detector.distributed import finish_distributed, init_distributed
    from simcal.detector.losses import build_classification_loss
    from simcal.detector.samplers import TrainingSampler, repeat_factors

    if args.iters <= 0 or args.batch_size <= 0:
        raise input_error(None, "--iters and --batch-size must be positive")
    if args.arch != "r50_fpn" and args.backbone_weights:
        raise input_error(args.backbone_weights, "--backbone-weights applies to --arch r50_fpn only")
    rank, world, local_rank = init_distributed()
    if args.batch_size % world:
        raise input_error(None, f"--batch-size {args.batch_size} is not divisible by {world} processes")
    device = resolve_device(args.device, local_rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    amp = resolve_amp(args.amp, device)
    if amp and not use_cuda:
        raise input_error(None, "--amp on needs CUDA; use --amp off or auto on CPU")

    out = Path(args.out)
    resume_path = out.with_name(out.name + ".resume.pth")
    log_path = out.with_name(out.name + ".log.jsonl")
    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images, what="training data")
    ann = load_annotations(ann_path)
    identity = _identity(args, ann.fingerprint)
    if out.exists() and not args.overwrite:
        if args.resume and completed(out, "train", identity):
            if rank == 0:
                print(f"{out} is already trained ({args.iters} iterations); nothing to do.", file=sys.stderr)
            finish_distributed()
            return 0
        raise input_error(out, "already exists", "pass --overwrite to replace it, or choose another --out")
    if rank == 0:
        remove_manifest(out)

    dataset = DetectionDataset(ann, image_root, flip_prob=args.flip, seed=args.seed)
    dataset.check_files()  # every rank: a bad input must stop all of them, not leave some at a barrier
    stats = category_statistics(ann)
    counts = [c["instance_count"] for c in stats]

    torch.manual_seed(args.seed)
    builder_kwargs = _builder_kwargs(args)
    extra = {"backbone_weights": args.backbone_weights} if args.backbone_weights else {}
    model = build(args.arch, ann.mapping.num_classes, **builder_kwargs, **extra)
    if args.cls_loss != "ce":
        model.roi_heads.cls_loss = build_classification_loss(
            args.cls_loss, counts, gamma=args.focal_gamma, n=args.reweight_n, k=args.margin_k
        )
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    steps = [int(float(s) * args.iters) for s in args.lr_steps.split(",") if s.strip()]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, args.warmup, steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_iter, rng_state = 0, None
    if args.resume and resume_path.exists():
        state = read_checkpoint(resume_path)
        if state["annotation_fingerprint"] != ann.fingerprint or state["train_args"].get("arch") != args.arch:
            raise input_error(resume_path, "was written for other data or another arch",
                              "delete it or re-run with the original arguments")
        model.load_state_dict(state["state_dict"])
        ts = state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        scaler.load_state_dict(ts["scaler"])
        start_iter, rng_state = state["iteration"], ts["rng"]
        if rank == 0:
            print(f"resuming from {resume_path} at iteration {start_iter}", file=sys.stderr)

    per_rank = args.batch_size // world
    workers = args.workers if args.workers is not None else (4 if use_cuda else 0)
    factors = None
    if args.sampler == "repeat_factor":
        cats = [[a["category_id"] for a in ann.annotations_of(img["id"])] for img in ann.images]
        factors = repeat_factors(cats, args.rfs_t)
    sampler = TrainingSampler(len(dataset), args.seed, rank, world, factors, start=start_iter * per_rank)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                        collate_fn=collate, persistent_workers=workers > 0, pin_memory=use_cuda)
    batches = iter(loader)
    if rng_state is not None:  # after the loader consumed its seed, as in the uninterrupted run
        torch.set_rng_state(rng_state)
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    if rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        cfg = {**_plain_args(args), "world_size": world, "device": str(device), "amp": amp,
               "annotations": str(ann_path), "annotation_fingerprint": ann.fingerprint,
               "cls_loss_config": getattr(model.roi_heads.cls_loss, "config", lambda: {"name": "ce"})(),
               "repeat_factor_images": None if factors is None else float(factors.sum())}
        write_json(out.with_name(out.name + ".config.json"), cfg, indent=2)
        if start_iter == 0 and log_path.exists():
            log_path.unlink()

    def checkpoint(iteration: int, with_state: bool) -> dict[str, Any]:
        ck = make_checkpoint(model, args.arch, builder_kwargs, ann.mapping,
                             [{k: c[k] for k in ("id", "name", "instance_count", "image_count", "frequency")}
                              for c in stats], ann.fingerprint, _plain_args(args), iteration)
        if with_state:
            ck["train_state"] = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "scaler": scaler.state_dict(), "rng": torch.get_rng_state()}
        return ck

    # With AMP, GradScaler skips the optimizer step of an overflowing first iteration; the per-iteration
    # schedule is meant to advance anyway, so torch's ordering warning is noise here.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    bar = tqdm(total=args.iters, initial=start_iter, desc=f"train {args.arch}", unit="it",
               disable=rank != 0 or None, dynamic_ncols=True)
    t_start, t_last = time.perf_counter(), time.perf_counter()
    for it in range(start_iter, args.iters):
        images, targets = next(batches)
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=amp):
            losses = ddp(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise input_error(None, f"the training loss became {loss.item()} at iteration {it}",
                              "lower --lr or check the annotations")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, args.clip_grad)
        lr_used = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        bar.update(1)
        done = it + 1
        if rank == 0 and (done % args.log_every == 0 or done == args.iters):
            now = time.perf_counter()
            rec = {"iter": done, "lr": lr_used, "loss": loss.item(),
                   **{k: v.item() for k, v in losses.items()},
                   "s_per_iter": (now - t_last) / min(args.log_every, done - start_iter)}
            if use_cuda:
                rec["max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            t_last = now
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.3f}", cls=f"{rec['loss_classifier']:.3f}")
        if done % args.checkpoint_every == 0 and done < args.iters:
            if rank == 0:
                save_checkpoint(checkpoint(done, True), resume_path)
            if world > 1:
                torch.distributed.barrier()
    bar.close()
    if rank == 0:
        save_checkpoint(checkpoint(args.iters, False), out)
        write_manifest(out, "train", identity, {"iterations": args.iters, "world_size": world,
                                                "annotations": str(ann_path)})
        resume_path.unlink(missing_ok=True)
        took = time.perf_counter() - t_start
        mem = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if use_cuda else ""
        print(f"wrote {out} ({args.iters - start_iter} iterations in {took:.0f} s, "
              f"{took / max(args.iters - start_iter, 1):.3f} s/it{mem})", file=sys.stderr)
    finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
