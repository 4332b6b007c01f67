"""Run logs in the work dir: one JSON object per line (``log.jsonl``) and TensorBoard events.

Only the main process writes; other ranks get a logger that does nothing, so call sites need
no rank checks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("vidadapt")


def setup_logging(is_main: bool = True) -> None:
    """Show vidadapt's messages on stderr: info on the main process, warnings on the others."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)


class RunLogger:
    """Appends ``{"kind": ..., "step": ..., **values}`` lines to ``log.jsonl`` and mirrors the
    numbers to TensorBoard (``tb/``) when the ``tensorboard`` package is installed.

    ``start_step`` is the step the run starts from: records after it (left by an earlier run,
    or by a killed one after its last save) are dropped from both logs, so 0 starts afresh.
    """

    def __init__(self, work_dir: str | os.PathLike, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.path = Path(work_dir) / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._drop_after(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            logger.info("tensorboard is not installed; logging to %s only", self.path)
        else:
            # TensorBoard hides the events from purge_step on that earlier writers left.
            self.tb = SummaryWriter(str(Path(work_dir) / "tb"), purge_step=start_step)

    def log(self, kind: str, step: int, **values: Any) -> None:
        """Record one event (``kind`` is e.g. "train" or "val")."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def _drop_after(self, step: int) -> None:
        """Forget the records after ``step`` (they are about to be redone)."""
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(work_dir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``log.jsonl`` (of one ``kind`` if given)."""
    path = Path(work_dir) / "log.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
