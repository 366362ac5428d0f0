"""``simcal calibrate``: one head, the sampler statistics, or a sweep, from one cache load.

    simcal calibrate --cache train.zarr --head 3fc_ft --steps 1000 --out head.pth
    simcal calibrate --cache train.zarr --sample-only --steps 500 --stats sampler.json
    simcal calibrate --cache train.zarr --sweep grid.json --eval-cache val.zarr --out sweep/
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from simcal.core.checks import NONNEG_INT, POSITIVE_INT, check
from simcal.core.errors import InputError, input_error
from simcal.core.names import HEADS, LOSSES, SAMPLERS


def _config(args: argparse.Namespace, amp: bool, **override: Any):
    from simcal.calibrate.trainer import CalibConfig

    cfg = CalibConfig(head=args.head, sampler=args.sampler, loss=args.loss, steps=args.steps, lr=args.lr,
                      lr_steps=tuple(args.lr_steps), classes_per_batch=args.classes_per_batch,
                      images_per_class=args.images_per_class, bg_ratio=args.bg_ratio, batch_rows=args.batch_rows,
                      seed=args.seed, amp=amp)
    for k, v in override.items():
        setattr(cfg, k, v)
    return cfg  # every value was checked where it came from: a flag (argparse) or a grid (_grid_axis)


def sampler_statistics(cache, index, cfg) -> dict[str, Any]:
    """Draw ``cfg.steps`` batches exactly as the trainer would and count what they hold (counts per class
    accumulate in arrays: no Python work per row or per class in the loop)."""
    from simcal.calibrate.samplers import build_sampler

    sampler = build_sampler(cfg.sampler, index, seed=cfg.seed, classes_per_batch=cfg.classes_per_batch,
                            bg_ratio=cfg.bg_ratio, batch_rows=cfg.batch_rows, images_per_class=cfg.images_per_class)
    ids = [c["id"] for c in cache.attrs["categories"]]
    C = len(ids)
    draws = np.zeros(C + 1, dtype=np.int64)
    rows = np.zeros(C + 1, dtype=np.int64)  # rows[0]: background rows
    images = 0
    for _ in range(cfg.steps):
        b = sampler.sample()
        lab = index.labels[b.rows]
        drawn = b.drawn_classes if len(b.drawn_classes) else np.unique(lab[lab > 0])
        np.add.at(draws, np.asarray(drawn, dtype=np.int64), 1)
        rows += np.bincount(lab, minlength=C + 1)
        images += len(b.images)
    return {
        "sampler": cfg.sampler,
        "batches": cfg.steps,
        "class_draws": {str(ids[c - 1]): int(draws[c]) for c in np.flatnonzero(draws)},
        "fg_rows": {str(ids[c - 1]): int(rows[c]) for c in np.flatnonzero(rows[1:]) + 1},
        "bg_rows": int(rows[0]),
        "images": images,
    }


def _open(path: str):
    from simcal.extract.schema import SMALL_ARRAYS, Cache

    cache = Cache(path)
    cache.require_intact(SMALL_ARRAYS)  # the features are checked as they are read (extract/reader.py)
    if not (np.diff(cache.index("class_row_ptr"))[1:] > 0).any():
        raise input_error(cache.path, "has no foreground rows for any class", "re-extract it with a trained detector")
    return cache


def _identity(cfg, cache, eval_cache) -> dict[str, Any]:
    """What makes two heads the same: configuration, training cache (or detector), val cache."""
    from simcal.calibrate.trainer import cache_fingerprint, config_dict

    return {"config": config_dict(cfg), "cache_fingerprint": cache_fingerprint(cache.attrs),
            "eval_cache_fingerprint": None if eval_cache is None else cache_fingerprint(eval_cache.attrs)}


def _previous(cfg, cache, out: Path, eval_cache, quiet: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The head's identity, and its results row when ``out`` already holds it (else any stale manifest goes)."""
    from simcal.core.manifest import completed, remove_manifest

    identity = _identity(cfg, cache, eval_cache)
    previous = completed(out, "calibrate", identity)
    if previous is not None:
        if not quiet:
            print(f"reusing {out} (same configuration and cache)")
        return identity, previous["record"]["row"]
    remove_manifest(out)
    return identity, None


def _write_head(cache, cfg, out: Path, device, head, info: dict[str, Any], identity: dict[str, Any],
                eval_cache=None, acc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The head file, its val scores (with ``acc``) and, last, its manifest; returns its results row."""
    from simcal.calibrate.trainer import head_checkpoint, save_head
    from simcal.core.atomic import write_json
    from simcal.core.manifest import write_manifest

    ck = head_checkpoint(head, cfg, cache, info)
    save_head(ck, out)
    row = {**ck["config"], "head_file": str(out), "steps_per_s": round(info["steps_per_s"], 1),
           "head_steps_per_s": round(info.get("head_steps_per_s", info["steps_per_s"]), 1),
           "group_heads": info.get("group_heads", 1)}
    if acc is not None:
        write_json(out.with_name(out.name + ".eval.json"), {"eval_cache": str(eval_cache.path), **acc}, indent=2)
        row.update(acc)
    write_manifest(out, "calibrate", identity, {"row": row, "cache": str(cache.path), "device": str(device)})
    return row


def _log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log.jsonl")


def _run_one(cache, cfg, out: Path, device, reader, index, eval_cache=None, eval_reader=None,
             source=None, what: str | None = None) -> dict[str, Any]:
    """Train (or reuse) one head at ``out``; returns its results row. ``what``: say "wrote OUT (what, ...)" when
    it trains (a reused head has said "reusing OUT")."""
    from tqdm import tqdm

    from simcal.calibrate.evaluate_cache import proposal_accuracy
    from simcal.calibrate.trainer import train_head
    from simcal.core.atomic import atomic_open

    identity, row = _previous(cfg, cache, out, eval_cache)
    if row is not None:
        return row
    # The log appears with its head: a run that fails leaves neither (atomic_open removes its temporary file).
    with atomic_open(_log_path(out), "w") as f, tqdm(total=cfg.steps, desc=f"calibrate {cfg.head}", unit="step",
                                                     disable=None, leave=False) as bar:
        head, info = train_head(cache, cfg, device, reader, index, lambda rec: f.write(json.dumps(rec) + "\n"), bar,
                                source)
    acc = None if eval_cache is None else proposal_accuracy(head, eval_cache, eval_reader, device=device)
    row = _write_head(cache, cfg, out, device, head, info, identity, eval_cache, acc)
    if what is not None:
        print(f"wrote {out} ({what}, {cfg.steps} steps, {row['steps_per_s']} steps/s)")
    return row


def _units(configs: list, todo: list[int], sequential: bool) -> list[list[int]]:
    """The sweep's units of work: each head alone (``--sequential``) or the groups that share a batch stream."""
    from simcal.calibrate.batched import group_configs

    if sequential:
        return [[n] for n in todo]
    return [[todo[k] for k in g] for g in group_configs([configs[n] for n in todo])]


def _train_group(group: list[int], configs: list, outs: list[Path], identities: dict[int, dict[str, Any]], cache,
                 device, reader, index, eval_cache, eval_reader) -> None:
    """Train one group of heads together (calibrate/batched.py), score them on the val cache in one pass, write
    each head; a head that diverged stops the sweep there (its InputError), as one head after another would."""
    from tqdm import tqdm

    from simcal.calibrate.batched import train_group
    from simcal.calibrate.evaluate_cache import proposal_accuracies
    from simcal.core.atomic import write_text

    cfgs = [configs[n] for n in group]
    with tqdm(total=max(c.steps for c in cfgs), desc=f"calibrate {len(group)} heads", unit="step",
              disable=None, leave=False) as bar:
        trained = train_group(cache, cfgs, device, reader, index, bar)
    ok = next((k for k, t in enumerate(trained) if t.error is not None), len(trained))
    accs = ([None] * ok if eval_cache is None else
            proposal_accuracies([t.head for t in trained[:ok]], eval_cache, eval_reader, device=device))
    for n, t, acc in zip(group, trained, accs):
        write_text(_log_path(outs[n]), "".join(json.dumps(rec) + "\n" for rec in t.log))
        _write_head(cache, configs[n], outs[n], device, t.head, t.info, identities[n], eval_cache, acc)
    if ok < len(trained):
        raise trained[ok].error


def _run_units(args: argparse.Namespace, configs: list, outs: list[Path], cache, device, reader, index,
               eval_cache, eval_reader, rank: int, world: int) -> Optional[list[dict[str, Any]]]:
    """Train this rank's units of the sweep (calibrate/sweep_ranks.py); every rank's rows on rank 0, else None.

    Heads already complete are reused; every rank looks before any trains, so all split the same work.
    """
    from simcal.calibrate.sweep_ranks import first_error, split
    from simcal.detector.distributed import barrier

    identities, done = {}, {}
    for n, c in enumerate(configs):
        identities[n], row = _previous(c, cache, outs[n], eval_cache, quiet=rank > 0)
        if row is not None:
            done[n] = row
    barrier()
    units = _units(configs, [n for n in range(len(configs)) if n not in done], args.sequential)
    mine = split([sum(configs[n].steps for n in u) for u in units], world)[rank]
    at = f" (rank {rank})" if world > 1 else ""
    error = None
    try:
        for u in mine:
            if args.sequential:
                n = units[u][0]
                print(f"[{n + 1}/{len(configs)}]{at} {outs[n].stem}")
                _run_one(cache, configs[n], outs[n], device, reader, index, eval_cache, eval_reader)
            else:
                print(f"[group {u + 1}/{len(units)}]{at} {len(units[u])} heads on one batch stream: "
                      + ", ".join(outs[n].stem for n in units[u]))
                _train_group(units[u], configs, outs, identities, cache, device, reader, index, eval_cache,
                             eval_reader)
    except InputError as e:  # a diverged head: the other ranks finish their units, then all stop with it
        error = e
    error = first_error(error, world)
    if error is not None:
        raise error
    if rank > 0:
        return None
    return [done.get(n) or _previous(c, cache, outs[n], eval_cache, quiet=True)[1] for n, c in enumerate(configs)]


def results_table(rows: list[dict[str, Any]]) -> str:
    """A sweep's rows as a markdown table (accuracies in %, when scored on a val cache)."""
    from simcal.core.formatting import pct

    cols = ["head", "sampler", "loss", "steps", "seed", "steps_per_s", "head_steps_per_s"]
    acc = [c for c in ("acc_bin1", "acc_bin2", "acc_bin3", "acc_bin4", "fg_acc", "bg_acc") if c in rows[0]]
    lines = ["| " + " | ".join(cols + acc) + " |", "|" + "---|" * (len(cols) + len(acc))]
    for r in rows:
        vals = [str(r.get(c, "-")) for c in cols] + [pct(r[c]) for c in acc]  # "-": a head from before
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _run_online(args: argparse.Namespace, cfg, device) -> int:
    """The reference: a frozen detector forward every step instead of the cache."""
    from simcal.calibrate.online import OnlineSource
    from simcal.calibrate.trainer import DetectorSpec
    from simcal.data.annotations import load_annotations
    from simcal.data.layout import resolve_dataset
    from simcal.detector.checkpoint import check_categories, load_checkpoint

    _check_out(args)
    if not args.checkpoint:
        raise input_error(None, "--source online needs --checkpoint CKPT and --data DIR (or --ann FILE --images DIR)",
                          "the detector and the images it was trained on")
    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images)
    if args.sweep or args.sample_only or cfg.sampler != "bilevel":
        raise input_error(None, "--source online runs one bi-level calibration; sweeps, --sample-only and "
                          "other samplers work from a cache")
    model, ck = load_checkpoint(args.checkpoint, device)
    model.requires_grad_(False)
    ann = load_annotations(ann_path)
    check_categories(ck, ann.mapping, args.checkpoint, ann_path)
    source = OnlineSource(model, ann, image_root, cfg.seed, cfg.classes_per_batch, cfg.bg_ratio)
    spec = DetectorSpec(model, ck, args.checkpoint, ann.fingerprint)
    eval_cache = _open(args.eval_cache) if args.eval_cache else None
    row = _run_one(spec, cfg, Path(args.out), device, None, None, eval_cache, None, source=source,
                   what=f"online, {cfg.head}")
    if eval_cache is not None:
        print(results_table([row]))
    return 0


#: A grid's keys: the registry its names come from, or the rule its numbers follow (as the flags).
GRID_NAMES = {"head": HEADS, "sampler": SAMPLERS, "loss": LOSSES}
GRID_NUMBERS = {"steps": POSITIVE_INT, "seed": NONNEG_INT}


def _grid_axis(path: str, key: str, value: Any) -> list:
    """One key's values, each checked: a registered name or a number by the flag's rule."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise input_error(path, f"has an empty list for '{key}'", "give at least one value or leave the key out")
    for v in values:
        if key in GRID_NAMES and (not isinstance(v, str) or v not in GRID_NAMES[key]):
            raise input_error(path, f"has {key} {v!r}, which is not one of {', '.join(GRID_NAMES[key])}")
        if key in GRID_NUMBERS:
            try:
                check(v, GRID_NUMBERS[key], key)
            except ValueError as e:
                raise input_error(path, str(e))
    return values


def _sweep_configs(args: argparse.Namespace, cfg, amp: bool) -> list:
    """Every configuration of the grid file (a grid, or a list of grids: their union, in order)."""
    from simcal.core.jsonio import read_json

    grid = read_json(args.sweep, "a JSON grid such as {\"head\": [\"3fc_ft\", \"2fc_rand\"]}")
    keys = ("head", "sampler", "loss", "steps", "seed")
    grids = grid if isinstance(grid, list) else [grid]
    if not grids:
        raise input_error(args.sweep, "holds no grid", 'give an object such as {"head": ["3fc_ft", "2fc_rand"]}')
    combos: list[tuple] = []
    for g in grids:
        if not isinstance(g, dict):
            raise input_error(args.sweep, "must be a JSON object of lists, or a list of such objects")
        unknown = sorted(set(g) - set(keys))
        if unknown:
            raise input_error(args.sweep, f"has unknown keys {unknown}", f"use only {', '.join(keys)}")
        axes = [_grid_axis(args.sweep, k, g[k]) if k in g else [getattr(cfg, k)] for k in keys]
        combos += [c for c in itertools.product(*axes) if c not in combos]
    return [_config(args, amp, **dict(zip(keys, c))) for c in combos]


def _check_out(args: argparse.Namespace) -> None:
    """Outputs are checked before any work: a head is a file, a sweep a folder."""
    from simcal.core.atomic import require_output

    if args.sample_only:
        if not args.stats:
            raise input_error(None, "--sample-only needs --stats OUT.json")
        return require_output(args.stats, "file", "--stats", "stats.json")
    if not args.out:
        what = "--sweep needs --out DIR" if args.sweep else "--out HEAD.pth is required"
        raise input_error(None, what, "name where the heads go" if args.sweep else "name the head checkpoint to write")
    if args.sweep:
        require_output(args.out, "folder", "--out with --sweep", "sweep/")
    else:
        require_output(args.out, "file", "--out", "head.pth")


def _run_sweep(args: argparse.Namespace, configs: list, cache, device, reader, index, eval_cache,
               eval_reader, rank: int = 0, world: int = 1) -> int:
    """One head per configuration of the grid, then results.json and results.md in the folder.

    Heads that share a batch stream train together (calibrate/batched.py); ``--sequential`` trains
    them one after another, the reference path. Under torchrun the units of work are split across the
    ranks (calibrate/sweep_ranks.py) and rank 0 writes the table.
    """
    from simcal.core.atomic import write_json, write_text

    out = Path(args.out)
    outs = [out / f"{c.head}_{c.sampler}_{c.loss}_s{c.steps}_seed{c.seed}.pth" for c in configs]
    rows = _run_units(args, configs, outs, cache, device, reader, index, eval_cache, eval_reader, rank, world)
    if rows is None:
        return 0
    write_json(out / "results.json", rows, indent=2)
    table = results_table(rows)
    write_text(out / "results.md", table + "\n")
    print(table)
    return 0


def _run_sample_only(args: argparse.Namespace, cfg, cache, index) -> int:
    from simcal.core.atomic import write_json

    stats = sampler_statistics(cache, index, cfg)
    write_json(args.stats, stats, indent=2)
    print(f"wrote {args.stats}: {stats['batches']} batches, {sum(stats['fg_rows'].values())} fg rows, "
          f"{stats['bg_rows']} bg rows, {stats['images']} images")
    return 0


def _eval_cache(args: argparse.Namespace, cache, device):
    """The val cache and its reader (both None without --eval-cache)."""
    from simcal.extract.reader import FeatureReader

    if not args.eval_cache:
        return None, None
    eval_cache = _open(args.eval_cache)
    if eval_cache.attrs["detector_fingerprint"] != cache.attrs["detector_fingerprint"]:
        raise input_error(eval_cache.path, "was extracted with another detector than --cache",
                          "extract both caches with the same checkpoint")
    return eval_cache, FeatureReader(eval_cache, args.preload, device)


def _ranks(args: argparse.Namespace, device):
    """(rank, world size, device): a sweep under torchrun splits its heads across the ranks, each on its own GPU."""
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if not args.sweep or args.sample_only:
        raise input_error(None, f"torchrun started {world} processes, and only a --sweep is split across processes",
                          "run a single head or --sample-only without torchrun")
    from simcal.detector.distributed import init_distributed

    rank, world, local_rank = init_distributed()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return rank, world, device


def main(args: argparse.Namespace) -> int:
    from simcal.calibrate.samplers import CacheIndex
    from simcal.calibrate.trainer import feature_dtype
    from simcal.core.device import resolve_amp, resolve_device
    from simcal.extract.reader import FeatureReader

    device = resolve_device(args.device)
    if args.preload == "gpu" and device.type != "cuda":
        raise input_error(None, f"--preload gpu needs a CUDA device, and this run uses {device.type}",
                          "use --preload ram, or run where a GPU is (--device cuda)")
    amp = resolve_amp(args.amp, device)
    cfg = _config(args, amp)
    if args.source == "online":
        return _run_online(args, cfg, device)
    if not args.cache:
        raise input_error(None, "--cache is required (or --source online with --checkpoint and --data)")
    _check_out(args)
    rank, world, device = _ranks(args, device)
    configs = _sweep_configs(args, cfg, amp) if args.sweep else None
    cache = _open(args.cache)
    index = CacheIndex.from_cache(cache)
    if args.sample_only:
        return _run_sample_only(args, cfg, cache, index)
    reader = FeatureReader(cache, args.preload, device, feature_dtype(cfg.amp))
    eval_cache, eval_reader = _eval_cache(args, cache, device)
    if args.sweep:
        from simcal.detector.distributed import finish_distributed

        rc = _run_sweep(args, configs, cache, device, reader, index, eval_cache, eval_reader, rank, world)
        finish_distributed()
        return rc
    out = Path(args.out)
    row = _run_one(cache, cfg, out, device, reader, index, eval_cache, eval_reader,
                   what=f"{cfg.head}, {cfg.sampler}, {cfg.loss}")
    if eval_cache is not None:
        print(results_table([row]))
    return 0
