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
from dataclasses import dataclass
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
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


#: The arguments that change the weights a run ends with (its identity in CKPT.manifest.json).
TRAINING_ARGS = ("arch", "class_agnostic", "backbone_weights", "iters", "batch_size", "lr", "momentum", "weight_decay",
                 "warmup", "lr_steps", "clip_grad", "flip", "sampler", "rfs_t", "cls_loss", "focal_gamma",
                 "reweight_n", "margin_k", "seed")


def _identity(args: argparse.Namespace, annotation_fingerprint: str) -> dict[str, Any]:
    return {"annotation_fingerprint": annotation_fingerprint, "args": {k: getattr(args, k) for k in TRAINING_ARGS}}


def _builder_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"class_agnostic": bool(args.class_agnostic)}


@dataclass
class _Run:
    """Where this process trains and writes: set up once by :func:`_setup`."""

    rank: int
    world: int
    device: torch.device
    amp: bool
    out: Path
    ann: Any
    ann_path: Path
    image_root: Path
    identity: dict[str, Any]
    logged: bool = False  # this run appended to the log

    @property
    def resume_path(self) -> Path:
        return self.out.with_name(self.out.name + ".resume.pth")

    @property
    def log_path(self) -> Path:
        return self.out.with_name(self.out.name + ".log.jsonl")


def _setup(args: argparse.Namespace) -> _Run | None:
    """Check the flags, join the process group, load the data; None when ``--out`` is already trained."""
    from simcal.core.atomic import require_output
    from simcal.core.device import resolve_amp, resolve_device
    from simcal.core.manifest import completed, remove_manifest
    from simcal.data.annotations import load_annotations
    from simcal.data.layout import resolve_dataset
    from simcal.detector.distributed import init_distributed

    require_output(args.out, "file", "--out", "detector.pth")  # the numbers were checked by their flags
    if args.arch not in ("r50_fpn", "r50_cascade") and args.backbone_weights:
        raise input_error(args.backbone_weights, "--backbone-weights applies to --arch r50_fpn and r50_cascade only")
    rank, world, local_rank = init_distributed()
    if args.batch_size % world:
        raise input_error(None, f"--batch-size {args.batch_size} is not divisible by {world} processes")
    device = resolve_device(args.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp = resolve_amp(args.amp, device)
    if amp and device.type != "cuda":
        raise input_error(None, "--amp on needs CUDA; use --amp off or auto on CPU")
    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images, what="training data")
    ann = load_annotations(ann_path)
    run = _Run(rank, world, device, amp, Path(args.out), ann, ann_path, image_root,
               _identity(args, ann.fingerprint))
    if run.out.exists() and not args.overwrite:
        if args.resume and completed(run.out, "train", run.identity):
            if rank == 0:
                print(f"{run.out} is already trained ({args.iters} iterations); nothing to do.")
            return None
        raise input_error(run.out, "already exists", "pass --overwrite to replace it, or choose another --out")
    if rank == 0:
        remove_manifest(run.out)
    return run


def _build_model(args: argparse.Namespace, run: _Run, counts: list[int]) -> torch.nn.Module:
    """The detector to train (seeded), with the long-tail classification loss asked for."""
    from simcal.detector.builders import build
    from simcal.detector.losses import build_classification_loss

    torch.manual_seed(args.seed)
    extra = {"backbone_weights": args.backbone_weights} if args.backbone_weights else {}
    model = build(args.arch, run.ann.mapping.num_classes, **_builder_kwargs(args), **extra)
    if args.cls_loss != "ce":
        model.roi_heads.cls_loss = build_classification_loss(
            args.cls_loss, counts, gamma=args.focal_gamma, n=args.reweight_n, k=args.margin_k
        )
    return model.to(run.device).train()


def _optimisation(args: argparse.Namespace, model: torch.nn.Module, amp: bool):
    """SGD with momentum, linear warm-up then x0.1 steps (one LambdaLR), and the AMP grad scaler."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    steps = [int(f * args.iters) for f in args.lr_steps]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, args.warmup, steps))
    return params, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp)


def _resume(args: argparse.Namespace, run: _Run, model, optimizer, scheduler, scaler) -> tuple[int, Any]:
    """(first iteration, saved RNG state or None): the state of ``OUT.resume.pth`` with ``--resume``."""
    from simcal.detector.checkpoint import read_checkpoint

    if not (args.resume and run.resume_path.exists()):
        return 0, None
    state = read_checkpoint(run.resume_path)
    if state["annotation_fingerprint"] != run.ann.fingerprint or state["train_args"].get("arch") != args.arch:
        raise input_error(run.resume_path, "was written for other data or another arch",
                          "delete it or re-run with the original arguments")
    model.load_state_dict(state["state_dict"])
    ts = state["train_state"]
    optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    scaler.load_state_dict(ts["scaler"])
    if run.rank == 0:
        print(f"resuming from {run.resume_path} at iteration {state['iteration']}")
    return state["iteration"], ts["rng"]


def _batches(args: argparse.Namespace, run: _Run, dataset, start_iter: int, factors):
    """This rank's infinite stream of batches, starting where iteration ``start_iter`` would read."""
    from torch.utils.data import DataLoader

    from simcal.data.detection_dataset import collate
    from simcal.detector.samplers import TrainingSampler

    per_rank = args.batch_size // run.world
    use_cuda = run.device.type == "cuda"
    workers = args.workers if args.workers is not None else (4 if use_cuda else 0)
    sampler = TrainingSampler(len(dataset), args.seed, run.rank, run.world, factors, start=start_iter * per_rank)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                        collate_fn=collate, persistent_workers=workers > 0, pin_memory=use_cuda)
    return iter(loader)


def _log(run: _Run, rec: dict[str, Any]) -> None:
    from simcal.core.disk import disk_full_cause, naming

    if run.device.type == "cuda":
        rec["max_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    run.logged = True
    try:
        with open(run.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError as e:
        cause = disk_full_cause(e)
        if cause is None:
            raise
        raise naming(cause, run.log_path) from e


def _drop_orphan_log(run: _Run) -> None:
    """A failed run that leaves no resume checkpoint cannot be continued: its log goes too (a re-run starts over)."""
    if run.rank == 0 and run.logged and not run.resume_path.exists():
        run.log_path.unlink(missing_ok=True)


def main(args: argparse.Namespace) -> int:
    from simcal.detector.distributed import finish_distributed

    run = _setup(args)
    if run is None:
        finish_distributed()
        return 0
    try:
        return _train(args, run)
    except BaseException:
        _drop_orphan_log(run)
        raise


def _train(args: argparse.Namespace, run: _Run) -> int:
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    from simcal.core.atomic import write_json
    from simcal.core.manifest import write_manifest
    from simcal.data.detection_dataset import DetectionDataset
    from simcal.data.statistics import category_statistics
    from simcal.detector.checkpoint import make_checkpoint, save_checkpoint
    from simcal.detector.distributed import finish_distributed
    from simcal.detector.samplers import repeat_factors

    dataset = DetectionDataset(run.ann, run.image_root, flip_prob=args.flip, seed=args.seed)
    dataset.check_files()  # every rank: a bad input must stop all of them, not leave some at a barrier
    stats = category_statistics(run.ann)
    model = _build_model(args, run, [c["instance_count"] for c in stats])
    params, optimizer, scheduler, scaler = _optimisation(args, model, run.amp)
    start_iter, rng_state = _resume(args, run, model, optimizer, scheduler, scaler)
    factors = None
    if args.sampler == "repeat_factor":
        factors = repeat_factors([[a["category_id"] for a in run.ann.annotations_of(img["id"])]
                                  for img in run.ann.images], args.rfs_t)
    batches = _batches(args, run, dataset, start_iter, factors)
    if rng_state is not None:  # after the loader consumed its seed, as in the uninterrupted run
        torch.set_rng_state(rng_state)
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if run.world > 1 else model

    if run.rank == 0:
        cfg = {**_plain_args(args), "world_size": run.world, "device": str(run.device), "amp": run.amp,
               "annotations": str(run.ann_path), "annotation_fingerprint": run.ann.fingerprint,
               "cls_loss_config": getattr(model.roi_heads.cls_loss, "config", lambda: {"name": "ce"})(),
               "repeat_factor_images": None if factors is None else float(factors.sum())}
        write_json(run.out.with_name(run.out.name + ".config.json"), cfg, indent=2)
        if start_iter == 0:
            run.log_path.unlink(missing_ok=True)

    def checkpoint(iteration: int, with_state: bool) -> dict[str, Any]:
        ck = make_checkpoint(model, args.arch, _builder_kwargs(args), run.ann.mapping,
                             [{k: c[k] for k in ("id", "name", "instance_count", "image_count", "frequency")}
                              for c in stats], run.ann.fingerprint, _plain_args(args), iteration)
        if with_state:
            ck["train_state"] = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "scaler": scaler.state_dict(), "rng": torch.get_rng_state()}
        return ck

    # With AMP, GradScaler skips the optimizer step of an overflowing first iteration; the per-iteration
    # schedule is meant to advance anyway, so torch's ordering warning is noise here.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
    bar = tqdm(total=args.iters, initial=start_iter, desc=f"train {args.arch}", unit="it",
               disable=run.rank != 0 or None, dynamic_ncols=True)
    t_start = t_last = time.perf_counter()
    for it in range(start_iter, args.iters):
        images, targets = next(batches)
        images = [im.to(run.device, non_blocking=True) for im in images]
        targets = [{k: (v.to(run.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(run.device.type, enabled=run.amp):
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
        if run.rank == 0 and (done % args.log_every == 0 or done == args.iters):
            now = time.perf_counter()
            _log(run, {"iter": done, "lr": lr_used, "loss": loss.item(), **{k: v.item() for k, v in losses.items()},
                       "s_per_iter": (now - t_last) / min(args.log_every, done - start_iter)})
            t_last = now
            bar.set_postfix(loss=f"{loss.item():.3f}", cls=f"{losses['loss_classifier'].item():.3f}")
        if done % args.checkpoint_every == 0 and done < args.iters:
            if run.rank == 0:
                save_checkpoint(checkpoint(done, True), run.resume_path)
            if run.world > 1:
                torch.distributed.barrier()
    bar.close()
    if run.rank == 0:
        save_checkpoint(checkpoint(args.iters, False), run.out)
        write_manifest(run.out, "train", run.identity, {"iterations": args.iters, "world_size": run.world,
                                                        "annotations": str(run.ann_path)})
        run.resume_path.unlink(missing_ok=True)
        took = time.perf_counter() - t_start
        mem = (f", peak GPU memory {torch.cuda.max_memory_allocated(run.device) / 2**30:.2f} GiB"
               if run.device.type == "cuda" else "")
        print(f"wrote {run.out} ({args.iters - start_iter} iterations in {took:.0f} s, "
              f"{took / max(args.iters - start_iter, 1):.3f} s/it{mem})")
    finish_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
