"""Run logs in the work dir: one JSON object per line (``log.jsonl``) and TensorBoard events;
progress displays for long passes (``progress``).

Only the main process writes; other ranks get a logger that does nothing, so call sites need
no rank checks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

logger = logging.getLogger("vidadapt")


def setup_logging(is_main: bool = True) -> None:
    """Show vidadapt's messages on stderr: info on the main process, warnings on the others."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)


class LoggedProgress:
    """tqdm's interface (``update``, ``write``, context manager) for output that is not a
    terminal (CI logs, ``nohup``, a file): there a bar is hidden or one endless line, so this
    logs the count, the rate and the time left every ``every`` seconds and at the end."""

    def __init__(self, total: int, desc: str, unit: str, every: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            self._report(now)

    def _report(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        logger.info("%s: %d/%d %s (%.0f%%), %.1f %s/s, %s left", self.desc, self.done,
                    self.total, self.unit, 100 * self.done / max(self.total, 1), rate, self.unit,
                    _duration(left))

    def write(self, message: str) -> None:
        print(message)  # like tqdm.write: results go to stdout, progress to the log

    def close(self) -> None:
        pass

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress(total: int, desc: str, unit: str, enabled: bool = True):
    """A progress display for a long pass: a tqdm bar (count, rate, ETA) on a terminal, log
    lines elsewhere (``LoggedProgress``), nothing when not ``enabled``."""
    if enabled and not sys.stderr.isatty():
        return LoggedProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)


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


def pyplot(what: str) -> Any | None:
    """matplotlib's ``pyplot`` drawing to files only (no display needed), or None, with a log
    line naming ``what`` is skipped, when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed (pip install 'vidadapt[plots]'); skipping %s",
                    what)
        return None
    return plt
