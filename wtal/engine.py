"""Training: ``train_one_epoch``, the memory's initialisation, and ``fit``.

Read ``fit`` from top to bottom: it is the whole method (paper.md §1.8). The base stage
(RSKP) trains with the video-level losses; from the first regeneration epoch on, pseudo
labels come from :func:`wtal.regenerate.generate_pseudo_labels`, which detects on the
training videos with the path that produces the test detections and turns the detections
into snippet targets by the LP of :mod:`wtal.pseudo`. :mod:`wtal.schedule` says what each
epoch does, :func:`wtal.losses.compute_losses` what it optimises.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from wtal import distributed
from wtal.calibration import calibrate, stored_choice
from wtal.checkpoint import (
    CHECKPOINT_VERSION,
    INIT_FROM_FILE,
    fault_point,
    restore,
    rng_state,
    save_checkpoint,
    starting_checkpoint,
    stored_choice_of,
)
from wtal.config import Config, config_to_dict, with_choice
from wtal.configfile import save_config
from wtal.data import Batch, FeatureDataset, split_batch
from wtal.data.split import check_splits, open_datasets, open_validation, report_warnings
from wtal.diagnostics import negative_share, parameter_change, parameter_snapshot
from wtal.distributed import Shard, ShardedLoader
from wtal.featmeta import copy_features_meta
from wtal.inference import build_model
from wtal.io import InputError, write_json
from wtal.losses import compute_losses
from wtal.model import WTALModel
from wtal.pseudo import update_history
from wtal.regenerate import generate_pseudo_labels
from wtal.runlock import RunLock
from wtal.runlog import JsonlLog
from wtal.schedule import (
    dist_weight,
    in_pseudo_stage,
    is_delta_target,
    learning_rate,
    regeneration_temperature,
    select_pseudo_target,
)
from wtal.scoring import evaluate_model

log = logging.getLogger("wtal")

_EVAL_DETAIL = ("classification_map", "floors", "signal")
"""What a periodic evaluation logs beside the headline mAP: whether the model classifies, the
floors it must beat, and whether its attention and CAS vary in time (:mod:`wtal.floors`)."""


def _pad_pseudo(targets: dict[str, Tensor], batch: Batch, device: torch.device) -> Tensor:
    """Stack per-video pseudo labels (T_i, C+1) into (B, T_max, C+1), zero on padding."""
    b, t = batch.mask.shape
    first = next(iter(targets.values()))
    out = torch.zeros(b, t, first.shape[1], device=device)
    for i, vid in enumerate(batch.video_ids):
        y = targets[vid]
        out[i, : y.shape[0]] = y.to(device)
    return out


def _unsplit(rows: list[tuple[np.ndarray, Tensor, Tensor]]) -> tuple[Tensor, ...]:
    """Per-pass ``(index, tensor, ...)`` rows of :func:`~wtal.data.split_batch` back in the
    batch's order: each tensor (b, ...) of a pass lands at rows ``index`` of a (B, ...) one."""
    index = torch.from_numpy(np.concatenate([r[0] for r in rows]))
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(len(index))
    columns = zip(*(r[1:] for r in rows), strict=True)
    return tuple(torch.cat(parts)[inverse.to(parts[0].device)] for parts in columns)


def train_one_epoch(
    model: WTALModel,
    loader: Iterable[Batch] | ShardedLoader,
    optimizer: torch.optim.Optimizer,
    cfg: Config,
    epoch: int,
    device: torch.device,
    pseudo_targets: dict[str, Tensor] | None = None,
    progress: bool = True,
    ddp: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One pass over the training videos; returns the mean of each loss term per video.

    Losses are summed (not averaged) over ``cfg.train.videos_per_step`` videos before each
    optimizer step, like the reference's accumulation over 10 single-video passes. A
    remainder at the end of the epoch makes one last, smaller step.

    Under DDP ``loader`` is a :class:`~wtal.distributed.ShardedLoader` and ``ddp`` the
    :func:`~wtal.distributed.wrap_model` wrapper of ``model``: each rank runs its slice of
    every global batch, gradients are summed over ranks, the memory is updated from the
    gathered global batch, and videos are counted per global batch, so the step is the
    single-process step.
    """
    net = model if ddp is None else ddp
    net.train()
    use_memory = epoch > cfg.train.warmup_epoch
    sums: dict[str, float] = {}
    n_videos = 0
    since_step = 0
    optimizer.zero_grad(set_to_none=True)
    for item in tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress):
        batch, global_size, empty = (
            (item.batch, item.global_size, item.empty)
            if isinstance(item, Shard)
            else (item, len(item.video_ids), False)
        )
        # Videos of similar length share a forward pass; every pass reads the memory as it
        # was before the batch, and the batch updates it once, in its own order, afterwards.
        passes = split_batch(batch, cfg.train.max_padding)
        rows: list[tuple[np.ndarray, Tensor, Tensor]] = []
        for i, (index, part) in enumerate(passes):
            features = part.features.to(device)
            mask = part.mask.to(device)
            labels = part.labels.to(device)
            # Under DDP only the batch's last backward all-reduces (the earlier ones add up
            # locally), so every rank joins one all-reduce per batch however it splits.
            last = i == len(passes) - 1
            with contextlib.nullcontext() if ddp is None or last else ddp.no_sync():
                out = net(features, mask, labels, use_memory=use_memory)
                pseudo = (
                    None if pseudo_targets is None else _pad_pseudo(pseudo_targets, part, device)
                )
                terms = compute_losses(out, labels, mask, pseudo, cfg, epoch)
                loss = terms["total"].sum()
                if not torch.isfinite(loss):
                    bad = {k: v.detach().tolist() for k, v in terms.items()}
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}: {bad} ({part.video_ids})"
                    )
                if empty:  # a stand-in video: exact zero gradients keep the all-reduce in step
                    loss = torch.stack([p.sum() for p in model.parameters()]).sum() * 0.0
                loss.backward()
            rows.append((index, out.bases.detach(), out.basis_scores.detach()))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + (0.0 if empty else float(v.detach().sum()))
        if use_memory:
            bases, scores = _unsplit(rows)
            model.memory.update(
                *distributed.gather_rows(item, bases, scores, batch.labels.to(device))
            )
        fault_point("epoch", epoch)
        n_videos += 0 if empty else len(batch.video_ids)
        since_step += global_size
        if since_step >= cfg.train.videos_per_step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            since_step = 0
    if since_step:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if isinstance(loader, ShardedLoader):
        totals = distributed.sum_over_ranks({**sums, "": float(n_videos)})
        n_videos = int(totals.pop(""))
        sums = totals
    return {k: v / max(n_videos, 1) for k, v in sums.items()}


@torch.no_grad()
def init_memory(
    model: WTALModel,
    loader: Iterable[Batch] | ShardedLoader,
    device: torch.device,
    max_padding: float = 0.0,
) -> None:
    """Fill the inter-video memory from a dropout-free pass over the training videos
    (after the warm-up epoch, method.py:330-334).

    ``max_padding`` splits each batch into passes of similar length
    (:func:`~wtal.data.split_batch`); the memory is updated batch by batch in the loader's
    order either way. With a :class:`~wtal.distributed.ShardedLoader` each rank runs its
    slices and every rank updates from the gathered rows in global order, so all memories
    are the same.
    """
    was_training = model.training
    model.eval()
    model.memory.reset()
    for item in loader:
        batch = item.batch if isinstance(item, Shard) else item
        rows = []
        for index, part in split_batch(batch, max_padding):
            out = model(part.features.to(device), part.mask.to(device))
            rows.append((index, out.bases, out.basis_scores))
        bases, scores = _unsplit(rows)
        model.memory.update(*distributed.gather_rows(item, bases, scores, batch.labels.to(device)))
    model.train(was_training)


# ----------------------------------------------------------------------------- fit


def fit(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train the whole method and evaluate the final model on the test subset.

    Writes into ``run_dir``: ``config.yaml``, ``log.jsonl``, ``last.pt`` (every epoch) and
    ``epoch_XXX.pt`` (every ``train.checkpoint_every`` epochs), ``metrics_base.json`` right
    before the first regeneration, and at the end ``detections_test.json``, ``cas_test.npz``
    and ``metrics.json``. With a validation split (``data.val_fraction``) also
    ``metrics_val_base.json`` and ``metrics_val.json``.

    Args:
        cfg: the resolved config.
        run_dir: the run folder, created once the data has been checked (bad input leaves
            nothing behind).
        resume: continue from ``run_dir/last.pt`` exactly where it stopped (from epoch 0,
            or from the run's ``init_from.json`` checkpoint, when the run stopped before its
            first checkpoint).
        init_from: start a new run from this checkpoint (a ``.pt`` file or a run folder):
            its epoch, weights, memory, optimizer state, pseudo-label history and random
            state, under ``cfg`` (which may differ, e.g. in ``pseudo.*`` or ``loss.*``).
            With the checkpoint's own config the run continues bit for bit as the run that
            wrote it (CPU). The source's path, sha256 and epoch go to ``init_from.json``, the
            checkpoints and the first ``log.jsonl`` record.
        progress: show tqdm progress bars.

    Under DDP (a process group is initialised, see :mod:`wtal.distributed`) every rank calls
    this with the same arguments; rank 0 writes the files, and every rank returns the metrics.

    The run folder is locked (:class:`wtal.runlock.RunLock`) for the whole run: a second
    process training into it gets an :class:`InputError` naming this one's pid.

    Returns:
        The final metrics on the test subset (see :func:`wtal.scoring.evaluate_predictions`).
    """
    if resume and init_from is not None:
        raise InputError(run_dir, "--resume continues a run; --init-from starts a new one")
    with RunLock(run_dir, active=distributed.is_main()) as lock:
        return _fit(cfg, Path(run_dir), resume, progress, lock, init_from)


def _fit(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    progress: bool,
    lock: RunLock,
    init_from: str | Path | None,
) -> dict:
    """The body of :func:`fit`, inside the run folder's lock."""
    world, main = distributed.world_size(), distributed.is_main()
    device = distributed.rank_device(distributed.resolve_device(cfg.train.device))
    torch.manual_seed(cfg.train.seed)

    # Data: every file is checked now, before the run folder exists.
    train_set, train_fixed, test_set = open_datasets(cfg)
    val_set = open_validation(cfg)
    for dataset in (train_set, test_set, val_set):  # fail now, not mid-run
        if dataset is not None:
            dataset.check_features(train_set.feat_dim)
    check_splits(train_set, test_set, train_truth=cfg.pseudo.enabled and cfg.pseudo.oracle)
    if main:
        report_warnings(*(d for d in (train_set, test_set, val_set) if d is not None))

    # Model and optimizer, then the state of a resumed or branched run on top.
    model = build_model(cfg, train_set.feat_dim, train_set.num_classes).to(device)
    if world > 1:  # same initial weights everywhere, then each rank its own dropout stream
        torch.manual_seed(distributed.rank_seed(cfg.train.seed, distributed.rank()))
    tc, pc = cfg.train, cfg.pseudo
    optimizer = torch.optim.Adam(
        model.parameters(), lr=tc.lr_values[0], betas=tc.betas, weight_decay=tc.weight_decay
    )
    history: list[tuple[int, dict[str, Tensor]]] = []  # (regeneration epoch, labels per video)
    fused: list[tuple[int, dict[str, Any]]] = []  # every regeneration's LP input (small)
    start = 0
    state, source, branch = starting_checkpoint(cfg, run_dir, resume, init_from, train_set)
    choice = stored_choice_of(state, source) if resume and state is not None else None
    if state is not None:
        history, fused, start = restore(state, source, model, optimizer, cfg, train_set.video_ids)
        log.info("%s %s at epoch %d", "resuming" if resume else "branching", run_dir, start)

    # The run folder: written from here on, by rank 0 only.
    if main and not (resume and (run_dir / "config.yaml").is_file()):  # a new run folder
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # before the first file: a second writer is refused now
        save_config(cfg, run_dir / "config.yaml")
        copy_features_meta(cfg.data.path, run_dir)  # the run remembers how its features were made
        if branch is not None:
            write_json(run_dir / INIT_FROM_FILE, branch)
    tensorboard = run_dir / "tensorboard" if tc.tensorboard else None
    logbook = JsonlLog(run_dir / "log.jsonl", start, tensorboard) if main else None
    ddp = distributed.wrap_model(model, device) if world > 1 else None
    ordered = distributed.batch_loader(train_fixed, tc.batch_size)  # memory initialisation

    dcfg = cfg  # cfg with the detection last chosen on validation (wtal.calibration)
    if choice is not None and source == run_dir / "last.pt":  # chosen before the stop
        dcfg = with_choice(cfg, *choice)  # (not a branch's)
    for epoch in range(start, tc.epochs):
        t0 = time.perf_counter()
        record: dict[str, Any] = {"epoch": epoch}
        if branch is not None and epoch == branch["epoch"]:
            record["init_from"] = branch
        temperature = regeneration_temperature(epoch, cfg)
        if temperature is not None:  # this model detects: its thresholds are chosen now
            dcfg = _calibrated(model, val_set, cfg, device, record, "calibration_start") or dcfg
        if pc.enabled and epoch == pc.regen_epochs[0]:  # the base stage's result, for reference
            record["eval_base"] = _evaluate_base(model, test_set, val_set, dcfg, device, run_dir)
        if temperature is not None:  # before the epoch's first batch (§1.8)
            if pc.reset_memory:
                model.memory.reset()
            labels, stats, inputs = generate_pseudo_labels(
                model, train_fixed, dcfg, temperature, device
            )
            fault_point("pseudo", epoch)
            history = update_history(history, epoch, labels, history_length=pc.history_length)
            fused.append((epoch, inputs))
            record["pseudo"] = {"temperature": temperature, **stats}
        targets = select_pseudo_target(epoch, history, cfg) if pc.enabled else None
        # Diagnostics of the pseudo-label stage: how far one epoch moves the weights.
        before = parameter_snapshot(model) if in_pseudo_stage(epoch, cfg) else None

        lr = learning_rate(epoch, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_set.set_epoch(epoch)
        # modulo 2**64: any valid seed (< 2**64) gives a seed the generator accepts
        shuffle = torch.Generator().manual_seed((tc.seed * 1_000_003 + epoch) % 2**64)
        loader = distributed.batch_loader(train_set, tc.batch_size, shuffle)
        record["loss"] = train_one_epoch(
            model, loader, optimizer, cfg, epoch, device, targets, progress and main, ddp
        )
        if before is not None:
            record["diag"] = {
                "dist_weight": dist_weight(epoch, cfg),
                **parameter_change(before, model),
            }
            if targets is not None and is_delta_target(epoch, cfg):
                record["diag"].update(negative_share(targets))
        if epoch == tc.warmup_epoch:
            init_memory(model, ordered, device, tc.max_padding)
        record["lr"] = lr
        record["time_s"] = time.perf_counter() - t0
        evaluate = tc.eval_every and (epoch + 1) % tc.eval_every == 0 and epoch + 1 < tc.epochs
        keep = tc.checkpoint_every and (epoch + 1) % tc.checkpoint_every == 0
        if evaluate or keep or epoch + 1 == tc.epochs:  # thresholds for what is scored or kept
            warn = main and epoch + 1 == tc.epochs
            dcfg = _calibrated(model, val_set, cfg, device, record, "calibration", warn) or dcfg
        if evaluate:
            record["eval"] = {}
            if val_set is not None:
                m = evaluate_model(model, val_set, dcfg, device)[1]
                record["eval"]["val"] = m["headline"]
                record["eval"]["val_detail"] = {k: m[k] for k in _EVAL_DETAIL}
            if val_set is None or tc.eval_test:
                m = evaluate_model(model, test_set, dcfg, device)[1]
                record["eval"]["average_mAP"] = m["headline"]
                record["eval"]["detail"] = {k: m[k] for k in _EVAL_DETAIL}

        state = {
            "format": "wtal",
            "version": CHECKPOINT_VERSION,
            "config": config_to_dict(cfg),
            "epoch": epoch + 1,
            "feat_dim": train_set.feat_dim,
            "class_names": list(train_set.class_names),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "pseudo_epochs": [e for e, _ in history],
            "pseudo": [labels for _, labels in history],
            "pseudo_segment_epochs": [e for e, _ in fused],
            "pseudo_segments": [inputs for _, inputs in fused],
            "rng": rng_state(),
            **stored_choice(cfg, dcfg),
        }
        if branch is not None:
            state["init_from"] = branch
        if world > 1:  # every rank's dropout stream, for an exact resume
            state["rng_ranks"] = distributed.gather_objects(state["rng"])
        if main:
            # last.pt goes last: it commits the epoch. A crash before its rename re-runs the
            # epoch on resume (dropping its log record), so nothing is missing or duplicated.
            logbook.write(record)
            if keep:
                save_checkpoint(run_dir / f"epoch_{epoch + 1:03d}.pt", state)
            save_checkpoint(run_dir / "last.pt", state)

    # The final model on the test split (and the validation split).
    if dcfg is cfg:  # no epoch ran here (a finished run, or a branch past its last epoch)
        dcfg = _calibrated(model, val_set, cfg, device, {}, "calibration", main) or dcfg
    cache = run_dir / "cas_test.npz" if main else None
    results, metrics = evaluate_model(model, test_set, dcfg, device, cache=cache)
    if main:
        write_json(run_dir / "detections_test.json", results)
        write_json(run_dir / "metrics.json", metrics)
    if val_set is not None:
        metrics_val = evaluate_model(model, val_set, dcfg, device)[1]
        if main:
            write_json(run_dir / "metrics_val.json", metrics_val)
    return metrics


def _calibrated(
    model: WTALModel,
    val_set: FeatureDataset | None,
    cfg: Config,
    device: torch.device,
    record: dict[str, Any],
    key: str,
    warn: bool = False,
) -> Config | None:
    """:func:`~wtal.calibration.calibrate`: the config with the detection chosen now (None
    when the run chooses none), the choice logged as the epoch's ``record[key]``:
    ``calibration_start`` before the epoch (pseudo labels), ``calibration`` after it."""
    dcfg, chosen = calibrate(model, val_set, cfg, device, warn=warn)
    if chosen is None:
        return None
    record[key] = chosen
    return dcfg


def _evaluate_base(
    model: WTALModel,
    test_set: FeatureDataset,
    val_set: FeatureDataset | None,
    cfg: Config,
    device: torch.device,
    run_dir: Path,
) -> dict[str, float]:
    """Score the base stage's model right before the first regeneration: writes
    ``metrics_base.json`` (and ``metrics_val_base.json``) on rank 0, returns the headlines."""
    main = distributed.is_main()
    base = evaluate_model(model, test_set, cfg, device)[1]
    if main:
        write_json(run_dir / "metrics_base.json", base)
    headlines = {"average_mAP": base["headline"]}
    if val_set is not None:
        base_val = evaluate_model(model, val_set, cfg, device)[1]
        if main:
            write_json(run_dir / "metrics_val_base.json", base_val)
        headlines["val"] = base_val["headline"]
    return headlines
