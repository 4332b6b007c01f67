"""The training loop.

One optimizer step consumes ``data.batch_size`` clips: ``optim.accum_steps`` micro-batches on
each of the ``world_size`` processes. The learning rate follows a per-step linear warmup and
cosine decay to 0 (a pure function of the step, so resuming needs no scheduler object).
AdamW skips weight decay on biases, norms and embeddings. Mixed precision runs on CUDA only.

Everything random is either derived from (seed, epoch, step, rank) — data order, loader
workers, mixup — or drawn from the global RNGs whose states are saved, so ``--resume``
continues a killed run exactly: same batches, same dropout masks, same final weights.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import ExperimentConfig
from ..errors import CheckpointError, ConfigError, Interrupted, UserError
from ..models import VideoModel
from .build import training_device_augment
from .checkpoint import (
    backbone_fingerprint,
    load_resume_state,
    rng_state,
    save_adapter,
    save_resume_state,
    set_rng_state,
    upgrade_names,
)
from .compiled import training_forward
from .data import (
    EpochKeyed,
    EpochStream,
    ShardedSampler,
    SkipReportingLoader,
    derive_seed,
    make_loader,
    pins_memory,
    video_on_device,
)
from .distributed import DistInfo, all_gather_objects, all_reduce_mean
from .evaluate import classification_metrics, left_out, predict, write_metrics
from .features import FeatureSet, feature_datasets, trains_on_features
from .logs import RunLogger
from .mixup import mix_clips
from .optim import build_optimizer, lr_factor, set_lr
from .ssl_objectives import FeatureObjective
from .workdir import claim

logger = logging.getLogger("vidadapt")

RESUME_FILE = "resume.pt"  # full state for --resume
BEST_FILE = "best.safetensors"  # adapter weights with the best validation top-1
LAST_FILE = "last.safetensors"  # adapter weights after the last epoch
SKIPPED_FILE = "skipped.json"  # unreadable videos the datasets passed over, with reasons
SUMMARY_KEYS = ("top1", "top5", "mean_class_accuracy")  # the metrics logged per validation


class DivergedError(UserError):
    """The loss became NaN or infinite; training stopped before the weights were touched."""


@dataclass
class Progress:
    """Where training stands (saved in the resume state)."""

    epoch: int = 0  # epoch in progress, from 0
    step: int = 0  # optimizer steps done since the start
    step_in_epoch: int = 0  # optimizer steps done in `epoch`
    best_top1: float = -1.0  # best validation top-1 so far; -1 before the first validation
    best_loss: float = math.inf  # lowest validation loss of a self-supervised objective so far


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; None = fp32 (always on CPU)."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def micro_batch_size(batch_size: int, world_size: int, accum_steps: int) -> int:
    """Clips per forward pass on one process."""
    parts = world_size * accum_steps
    if batch_size % parts:
        raise ConfigError(
            f"data.batch_size {batch_size} does not split over {world_size} process(es) × "
            f"optim.accum_steps {accum_steps}; use a multiple of {parts}"
        )
    return batch_size // parts


def classification_loss(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy on class indices ``[B]``, or on soft targets ``[B, C]`` (mixup/CutMix,
    which already include the smoothing)."""
    if target.ndim == 2:
        return F.cross_entropy(logits.float(), target)
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


class Trainer:
    """Fits ``model`` to ``train_set`` as ``cfg`` says, validating on ``val_set``.

    Datasets return dicts with ``"video"`` (``[T, 3, H, W]`` for training; ``[V, T, 3, H, W]``
    or ``[T, 3, H, W]`` for validation), ``"label"`` and ``"index"``. Outputs go to
    ``cfg.train.work_dir``: ``log.jsonl``, TensorBoard events, ``config.yaml``, the resume
    state and the adapter checkpoints (written by rank 0 only). With an ``objective``
    (``vidadapt pretrain``'s losses on features, ``engine.ssl_objectives``) the labels are
    unused: the objective's loss trains the model's parts and its own, validation reports its
    loss, and the best checkpoint is the one with the lowest.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: VideoModel,
        train_set: Dataset,
        val_set: Dataset | None = None,
        classes: list[str] | None = None,
        dist: DistInfo | None = None,
        objective: FeatureObjective | None = None,
    ) -> None:
        self.cfg, self.dist = cfg, dist or DistInfo()
        self.device = self.dist.device
        self.work_dir = Path(cfg.train.work_dir or "runs/default")
        if self.dist.is_main:  # before any work (encoding features can take hours)
            with claim(self.work_dir):
                pass
        self.model = model.to(self.device)
        self.objective = objective.to(self.device) if objective is not None else None
        # What the optimizer steps and DDP wraps: the model, or the objective holding it.
        self.trained: nn.Module = self.model if objective is None else self.objective
        model.backbone.set_grad_checkpointing(cfg.train.grad_checkpointing)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(
                f"method {model.spec.method} has nothing to train; evaluate it with "
                "`vidadapt eval CONFIG` (no checkpoint needed)"
            )
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        # data.gpu_augment: the end of the training transform runs here, on the batch
        self.device_augment = training_device_augment(cfg)
        # A frozen image encoder runs once per view (an objective needs the clips themselves).
        if objective is None and trains_on_features(cfg, model):
            train_set, val_set = feature_datasets(cfg, self.model, train_set, val_set,
                                                  self.device, self.amp_dtype, self.dist)
        self.train_set, self.val_set = train_set, val_set
        self.classes = classes or [str(i) for i in range(model.spec.num_classes)]
        self.fingerprint = (backbone_fingerprint(self.model) if objective is None
                            else objective.fingerprint)  # see FeatureObjective

        opt = cfg.optim
        self.optimizer = build_optimizer(
            self.trained, opt.lr, opt.weight_decay, opt.betas, opt.lr_mult,
            prefix="" if objective is None else "model.",  # lr_mult names the model's
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        self.ddp = self.trained
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.trained, device_ids=device_ids)
        self.forward = training_forward(self.ddp, cfg.train.compile, self.amp_dtype,
                                        self.dist.enabled)

        self.micro_batch = micro_batch_size(
            cfg.data.batch_size, self.dist.world_size, opt.accum_steps
        )
        self.steps_per_epoch = len(train_set) // cfg.data.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the training set has {len(train_set)} videos, fewer than one batch "
                f"(data.batch_size {cfg.data.batch_size})"
            )
        self.total_steps = self.steps_per_epoch * opt.epochs
        self.warmup_steps = round(opt.warmup_epochs * self.steps_per_epoch)
        self.train_sampler = ShardedSampler(
            len(train_set), shuffle=True, seed=cfg.train.seed, rank=self.dist.rank,
            world_size=self.dist.world_size,
            samples_per_epoch=self.steps_per_epoch * cfg.data.batch_size,
        )
        self.progress = Progress()
        self.log = RunLogger(self.work_dir, enabled=False)
        self.val_loader: SkipReportingLoader | None = None  # see _val_loader
        self.saved_step: int | None = None  # step of this run's last resume state on disk

    # ---- the loop -----------------------------------------------------------------------------

    def fit(
        self, resume: bool = False, on_step: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Train to the last epoch (from the saved state when ``resume``); returns a summary.

        ``on_step(step)`` is called after every optimizer step (and any save at that step).
        The work dir is held for the run (one run per work dir, see ``workdir.claim``).
        """
        with claim(self.work_dir) if self.dist.is_main else nullcontext():
            try:
                return self._fit(resume, on_step)
            finally:
                # Persistent validation workers would outlive the run, holding the work dir's
                # lock they inherited: end them with it.
                self.val_loader = None

    def _fit(self, resume: bool, on_step: Callable[[int], None] | None) -> dict[str, Any]:
        if resume:
            self._load_resume_state()
        else:
            if (self.work_dir / RESUME_FILE).exists() and self.dist.is_main:
                logger.warning("%s holds an earlier run; starting over (--resume continues it)",
                               self.work_dir)
            self._seed_training_rngs()
        self.log = RunLogger(self.work_dir, self.dist.is_main, start_step=self.progress.step)
        if self.dist.is_main:
            (self.work_dir / "config.yaml").write_text(self.cfg.to_yaml())
            logger.info("training %s: %d steps of %d clips (%d per epoch), work dir %s",
                        self.model.spec.method, self.total_steps, self.cfg.data.batch_size,
                        self.steps_per_epoch, self.work_dir)
        metrics = None
        batches = self._training_batches()
        try:
            for epoch in range(self.progress.epoch, self.cfg.optim.epochs):
                self._train_epoch(epoch, batches, on_step)
                self.progress.epoch, self.progress.step_in_epoch = epoch + 1, 0
                if self._validation_due(epoch):
                    metrics = self.validate()
                self._save_resume_state()
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at step {self.progress.step}; "
                              f"{self._last_good_state()}") from None
        if self.dist.is_main:
            self._save_adapter(LAST_FILE)
            if metrics is not None and self.objective is None:
                write_metrics(metrics, self.work_dir, "val")
        self._report_skipped()
        self.log.close()
        if self.objective is not None:
            best = self.progress.best_loss
            return {"steps": self.progress.step, "best_loss": None if math.isinf(best) else best,
                    "val": metrics}
        return {
            "steps": self.progress.step,
            "best_top1": self.progress.best_top1 if self.progress.best_top1 >= 0 else None,
            "val": None if metrics is None else {k: metrics[k] for k in SUMMARY_KEYS},
        }

    def _training_batches(self) -> Iterator[dict[str, Any]]:
        """Micro-batches from where training stands to the last epoch, from one loader (see
        ``EpochStream``: no stall at epoch boundaries)."""
        accum = self.cfg.optim.accum_steps
        stream = EpochStream(self.train_sampler, self.progress.epoch, self.cfg.optim.epochs,
                             start=self.progress.step_in_epoch * accum * self.micro_batch)
        return iter(make_loader(EpochKeyed(self.train_set), stream, self.micro_batch,
                                self.cfg.data.num_workers, self.cfg.train.seed,
                                pin_memory=pins_memory(self.cfg.data, self.device)))

    def _train_epoch(self, epoch: int, batches: Iterator[dict[str, Any]],
                     on_step: Callable[[int], None] | None) -> None:
        accum = self.cfg.optim.accum_steps
        first = self.progress.step_in_epoch
        bar = tqdm(total=self.steps_per_epoch, initial=first, disable=not self.dist.is_main,
                   desc=f"epoch {epoch + 1}/{self.cfg.optim.epochs}", dynamic_ncols=True)
        self.trained.train()
        losses = []  # since the last log record
        save_every = self.cfg.train.save_every_steps
        for _ in range(first, self.steps_per_epoch):
            started = time.perf_counter()
            schedule = lr_factor(self.progress.step, self.warmup_steps, self.total_steps)
            lr = self.cfg.optim.lr * schedule
            micro_batches = [next(batches) for _ in range(accum)]
            data_s = time.perf_counter() - started  # waiting for the loader: > 0 means a stall
            losses.append(self._train_step(micro_batches, lr))
            clips_per_s = self.cfg.data.batch_size / (time.perf_counter() - started)
            self.progress.step += 1
            self.progress.step_in_epoch += 1
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", clips_s=f"{clips_per_s:.1f}")
            end_of_epoch = self.progress.step_in_epoch == self.steps_per_epoch
            if self.progress.step % self.cfg.train.log_every == 0 or end_of_epoch:
                fraction = self.progress.step_in_epoch / self.steps_per_epoch
                self.log.log("train", self.progress.step, epoch=epoch + fraction,
                             loss=sum(losses) / len(losses), lr=lr, clips_per_s=clips_per_s,
                             data_s=data_s)
                losses = []
            if save_every and self.progress.step % save_every == 0:
                self._save_resume_state()
            if on_step is not None:
                on_step(self.progress.step)
        bar.close()

    def _train_step(self, micro_batches: list[dict[str, Any]], lr: float) -> float:
        """Forward/backward every micro-batch, then one optimizer step at learning rate ``lr``;
        returns the loss averaged over the micro-batches of all processes."""
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            video, target = self._inputs(batch, i)
            # Gradients are averaged over processes once per step, on the last micro-batch.
            last = i == len(micro_batches) - 1
            with nullcontext() if last or not self.dist.enabled else self.ddp.no_sync():
                with self.forward.autocast():
                    output = self.forward(video)  # logits, or an objective's loss
                loss = output if self.objective is not None else self._loss(output, target)
                scaled = loss / len(micro_batches)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach()
        loss = all_reduce_mean(total / len(micro_batches), self.dist).item()
        if not math.isfinite(loss):
            self.forward.zero_grad(self.optimizer)
            raise DivergedError(
                f"loss is {loss} at step {self.progress.step + 1}; stopped before updating the "
                f"weights; {self._last_good_state()}. Try a lower optim.lr, optim.grad_clip, or "
                "train.amp=bf16, not fp16"
            )
        self._optimizer_step(lr)
        if self.objective is not None:  # e.g. the self-distillation teacher's moving average
            self.objective.after_step((self.progress.step + 1) / self.total_steps)
        return loss

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The model's own training loss when it has one (``loss_fn``: ActionCLIP's), else
        cross-entropy."""
        if self.model.loss_fn is not None:
            done = self.progress.step / max(self.total_steps, 1)  # annealed losses read it
            return self.model.loss_fn(logits.float(), target, done)
        return classification_loss(logits, target, self.cfg.optim.label_smoothing)

    def _inputs(self, batch: dict[str, Any], micro_index: int) -> tuple[Tensor, Tensor]:
        video = video_on_device(batch, self.device, self.device_augment)  # [B, T, 3, H, W]
        labels = torch.as_tensor(batch["label"]).to(self.device)
        opt = self.cfg.optim
        if opt.mixup_alpha == 0 and opt.cutmix_alpha == 0:
            return video, labels
        # A generator per (step, rank, micro-batch) keeps mixing reproducible across resumes.
        rng = np.random.default_rng(
            derive_seed(self.cfg.train.seed, self.progress.step, self.dist.rank, micro_index, "mix")
        )
        return mix_clips(video, labels, self.model.spec.num_classes, opt.mixup_alpha,
                         opt.cutmix_alpha, opt.label_smoothing, rng)

    def _optimizer_step(self, lr: float) -> None:
        set_lr(self.optimizer, lr)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
        if self.cfg.optim.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.forward.zero_grad(self.optimizer)

    def _seed_training_rngs(self) -> None:
        """Dropout and drop-path draw from the global RNGs; every rank gets its own stream."""
        seed = derive_seed(self.cfg.train.seed, self.dist.rank, "train")
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # ---- validation ---------------------------------------------------------------------------

    def _validation_due(self, epoch: int) -> bool:
        if self.val_set is None:
            return False
        every, last = self.cfg.train.eval_every, epoch + 1 == self.cfg.optim.epochs
        return last or (every > 0 and (epoch + 1) % every == 0)

    def validate(self) -> dict[str, Any]:
        """Score the validation set (all ranks), log it and keep the best checkpoint."""
        if self.objective is not None:
            return self._validate_objective()
        if isinstance(self.val_set, FeatureSet):  # e.g. Tip-Adapter's alpha and beta
            self.model.select_hparams(self.val_set.features, self.val_set.labels[:, 0])
        loader = self._val_loader()
        scores = predict(self.model, loader, self.device, self.amp_dtype, self.dist,
                         progress=self.dist.is_main)
        metrics = classification_metrics(scores, self.classes)
        metrics["skipped"] = left_out(self.val_set, metrics["num_videos"], self.dist)
        summary = {k: metrics[k] for k in SUMMARY_KEYS}
        self.log.log("val", self.progress.step, epoch=self.progress.epoch, **summary)
        if self.dist.is_main:
            logger.info("epoch %d val: top-1 %.2f, top-5 %.2f, mean class %.2f",
                        self.progress.epoch, *summary.values())
        if metrics["top1"] > self.progress.best_top1:
            self.progress.best_top1 = metrics["top1"]
            if self.dist.is_main:
                self._save_adapter(BEST_FILE, metrics=summary)
        return metrics

    def _validate_objective(self) -> dict[str, Any]:
        """The objective's mean loss on the validation clips, with the same masks and views
        at every validation (drawn per batch from the run's seed); keeps the lowest's
        checkpoint."""
        objective = self.objective
        objective.eval()
        total = torch.zeros(2, device=self.device)  # loss sum, clips
        videos = 0
        with torch.no_grad(), self.forward.autocast():
            for i, batch in enumerate(self._val_loader()):
                if batch["video"] is None:
                    continue
                video = batch["video"].to(self.device, non_blocking=True)
                videos += len(video)
                if video.ndim == 6:  # test views [B, V, T, C, H, W]: each a clip
                    video = video.flatten(0, 1)
                seed = derive_seed(self.cfg.train.seed, self.dist.rank, i, "ssl val")
                loss = objective(video, seed=seed).float()
                total += torch.stack([loss * len(video), loss.new_tensor(float(len(video)))])
        objective.train()
        total = all_reduce_mean(total, self.dist)
        if total[1] == 0:
            raise ValueError("nothing to validate: no validation clip could be read")
        loss = (total[0] / total[1]).item()
        self.log.log("val", self.progress.step, epoch=self.progress.epoch, loss=loss)
        if self.dist.is_main:
            logger.info("epoch %d val: %s loss %.4f", self.progress.epoch,
                        self.cfg.ssl.objective, loss)
        # A loss with fixed targets ranks the epochs; one against a moving teacher does not, so
        # its best checkpoint is the latest validated.
        if loss < self.progress.best_loss or not objective.ranks_epochs:
            self.progress.best_loss = loss
            if self.dist.is_main:
                self._save_adapter(BEST_FILE, metrics={"loss": loss})
        scored = sum(all_gather_objects(videos, self.dist))
        return {"loss": loss, "skipped": left_out(self.val_set, scored, self.dist)}

    def _report_skipped(self) -> None:
        """Log the unreadable files every rank's datasets passed over, listed in skipped.json."""
        local: dict[str, str] = {}
        for dataset in (self.train_set, self.val_set):
            if hasattr(dataset, "skipped"):  # VideoDataset keeps a report; in-memory sets do not
                local.update(dataset.skipped())
        skipped = {}
        for part in all_gather_objects(local, self.dist):
            skipped.update(part)
        if not skipped or not self.dist.is_main:
            return
        path = self.work_dir / SKIPPED_FILE
        path.write_text(json.dumps(skipped, indent=1, sort_keys=True))
        self.log.log("skipped", self.progress.step, files=len(skipped))
        first = "\n".join(f"  {p}: {why}" for p, why in sorted(skipped.items())[:10])
        logger.warning("skipped %d unreadable file(s) (all listed in %s):\n%s",
                       len(skipped), path, first)

    def _val_loader(self) -> SkipReportingLoader:
        """The validation loader, made at the first validation; its workers live on to the
        next ones (validation is not shuffled: one sampler serves every epoch)."""
        if self.val_loader is None:
            sampler = ShardedSampler(len(self.val_set), shuffle=False, rank=self.dist.rank,
                                     world_size=self.dist.world_size)
            self.val_loader = make_loader(
                self.val_set, sampler, self.cfg.data.eval_batch_size, self.cfg.data.num_workers,
                self.cfg.train.seed, pin_memory=pins_memory(self.cfg.data, self.device),
                persistent=True)
        return self.val_loader

    # ---- checkpoints --------------------------------------------------------------------------

    def _save_adapter(self, name: str, metrics: dict[str, float] | None = None) -> None:
        info = {"epoch": self.progress.epoch, "step": self.progress.step, "metrics": metrics}
        save_adapter(self.work_dir / name, self.model, self.fingerprint, self.cfg.to_dict(),
                     self.classes, info)

    def _last_good_state(self) -> str:
        """Where a stopped run can continue from, for its last message."""
        if self.saved_step is None:
            return ("no state of this run was saved yet (train.save_every_steps: N saves one "
                    "every N steps)")
        return (f"the last good state is {self.work_dir / RESUME_FILE}, at step "
                f"{self.saved_step} (continue with --resume)")

    def _save_resume_state(self) -> None:
        rngs = all_gather_objects(rng_state(), self.dist)  # every rank's own streams
        if not self.dist.is_main:
            return
        save_resume_state(self.work_dir / RESUME_FILE, {
            "model": {k: v.cpu() for k, v in self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs,
            "progress": asdict(self.progress),
            "steps_per_epoch": self.steps_per_epoch,
            "fingerprint": self.fingerprint,
            "method": self.model.spec.method,
            "objective": None if self.objective is None else
            {k: v.cpu() for k, v in self.objective.own_state().items()},
        })
        self.saved_step = self.progress.step

    def _load_resume_state(self) -> None:
        path = self.work_dir / RESUME_FILE
        state = load_resume_state(path)
        method = state.get("method", self.model.spec.method)  # older states lack it
        if method != self.model.spec.method:
            raise CheckpointError(
                f"{path} was trained with method {method}, this run builds "
                f"{self.model.spec.method}; resume with --set model.method={method} (and its "
                "method options), or start without --resume"
            )
        # A state written before format 2 fingerprinted the frozen weights under its names.
        if state["fingerprint"] not in (self.fingerprint,
                                        backbone_fingerprint(self.model, format1_names=True)):
            raise CheckpointError(
                f"{path} was trained on backbone {state['fingerprint']}, this model's is "
                f"{self.fingerprint}; pass the same --set model.pretrained=... as before"
            )
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(
                f"{path} has {state['steps_per_epoch']} steps per epoch, this run "
                f"{self.steps_per_epoch}; resume with the same data and data.batch_size"
            )
        self.model.load_trainable_state_dict(upgrade_names(state["model"]))
        if self.objective is not None:
            if state.get("objective") is None:
                raise CheckpointError(f"{path} holds no self-supervised objective's state: it "
                                      "was saved by vidadapt train; start without --resume")
            self.objective.load_state_dict({**self.objective.state_dict(), **state["objective"]})
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:  # a different number of GPUs: same data, but new dropout streams
            logger.warning("resuming on %d processes, saved with %d: RNG streams restart",
                           self.dist.world_size, len(state["rng"]))
            self._seed_training_rngs()
        self.progress = Progress(**state["progress"])
        self.saved_step = self.progress.step
        if self.dist.is_main:
            logger.info("resumed from %s at epoch %d, step %d", path, self.progress.epoch + 1,
                        self.progress.step)
