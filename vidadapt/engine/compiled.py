"""``train.compile``: how the training step's forward and backward are launched on the GPU.

``off``       eager PyTorch: every operation is its own kernel launch from Python.
``graphs``    the model's training forward and its backward are captured once as two CUDA graphs
              (``torch.cuda.make_graphed_callables``) and replayed every step. Same kernels,
              same numbers, but one launch each: at the recipes' 8 clips per GPU an AIM step
              spent more CPU time launching kernels than the GPU spent running them. The loss,
              gradient accumulation, clipping and the optimizer stay eager (fused AdamW is a
              few launches). Capture takes a few seconds at the first step, reported in the log.
``inductor``  ``torch.compile``: fuses elementwise work into generated kernels; compiling takes
              minutes for a ViT-B and happens again for every new input shape.

Graphs need one input shape (training batches are always full) and a single process. The
graphed model runs its captured graphs in training mode only; ``model.eval()`` gives the eager
forward back for validation.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError

logger = logging.getLogger("vidadapt")

CompileMode = Literal["off", "graphs", "inductor"]


class TrainingForward:
    """The model's training forward (eager, or ``torch.compile``-d), with the autocast and the
    gradient reset that go with it."""

    cache_casts = True  # autocast may keep a weight's cast for the rest of the forward

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None,
                 compile_model: bool = False) -> None:
        self.model = model
        self.amp_dtype = amp_dtype
        self.run = torch.compile(model) if compile_model else model

    def __call__(self, video: Tensor) -> Tensor:
        return self.run(video)

    def autocast(self):
        """Mixed precision for the forward (a no-op context without ``amp_dtype``)."""
        return torch.autocast("cuda" if self.amp_dtype else "cpu", dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None, cache_enabled=self.cache_casts)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)


class GraphedForward(TrainingForward):
    """The model's training forward and backward replayed from CUDA graphs, captured at the
    first call with that call's input as the template.

    Gradients arrive through autograd as usual. The graph's gradient buffers are reused at
    every replay, so each ``.grad`` is a tensor of its own that they are added into (zeroed,
    never set to None): accumulation over micro-batches stays correct.
    """

    cache_casts = False  # a cached cast would outlive the graph that made it

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None) -> None:
        super().__init__(model, amp_dtype)
        self.capture_seconds: float | None = None

    def __call__(self, video: Tensor) -> Tensor:
        if self.capture_seconds is None:
            self._capture(video)
        return self.model(video)  # its forward is the graphed one while it is training

    def _capture(self, video: Tensor) -> None:
        if video.device.type != "cuda":
            raise ConfigError("train.compile: graphs needs a CUDA device; use off on "
                              f"{video.device.type}")
        start = time.perf_counter()
        self.zero_grad()
        # The warm-up passes draw dropout masks: they must not move the training RNG streams.
        with torch.random.fork_rng(devices=[video.device]), self.autocast():
            try:
                # allow_unused_input: a trainable parameter this forward does not reach
                # (an option turned off) gets no gradient instead of stopping the capture.
                torch.cuda.make_graphed_callables(self.model, (video,), allow_unused_input=True)
            except RuntimeError as err:
                raise ConfigError(
                    f"train.compile: graphs could not capture this model's step ({err}); use "
                    "train.compile: off"
                ) from err
        self.capture_seconds = time.perf_counter() - start
        logger.info("captured the training forward and backward as CUDA graphs in %.1f s",
                    self.capture_seconds)

    def zero_grad(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        for p in self.model.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad.zero_()


def training_forward(
    model: nn.Module, mode: CompileMode, amp_dtype: torch.dtype | None, distributed: bool
) -> TrainingForward:
    """The training forward for ``train.compile`` ``mode`` (see the module docstring)."""
    if mode != "graphs":
        return TrainingForward(model, amp_dtype, compile_model=mode == "inductor")
    if distributed:
        raise ConfigError("train.compile: graphs runs on one process; with several GPUs use "
                          "train.compile: off or inductor")
    if amp_dtype is torch.float16:
        raise ConfigError("train.compile: graphs does not support fp16's loss scaling; use "
                          "train.amp: bf16")
    return GraphedForward(model, amp_dtype)
