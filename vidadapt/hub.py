"""A trained model as a folder in the layout Hugging Face users expect.

    save_pretrained(model, "my_aim/", config=cfg, classes=names, metrics={"top1": 80.1})
    model = from_pretrained("my_aim/")                  # or a hub id, with huggingface_hub
    model = from_pretrained("my_aim/", pretrained="ViT-B-16.pt")  # the frozen weights' file

The folder holds ``config.json`` (the model spec, the experiment config, the class names, the
frozen backbone's fingerprint and where its weights came from), ``model.safetensors`` (the
tuned tensors only, as an adapter checkpoint) and ``README.md``, a model card (method,
backbone, data, metrics, parameter counts). The frozen weights are not copied: the fingerprint
checks that the file they are read from again is the one the model was trained on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, config_from_dict
from .engine.build import build_model
from .engine.checkpoint import (
    atomic_write,
    backbone_fingerprint,
    load_adapter,
    read_classifier,
    save_adapter,
)
from .errors import CheckpointError
from .models import ModelSpec, VideoModel, create_model, spec_kwargs

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
PRETRAINED_FORMAT = "vidadapt-pretrained/1"


def save_pretrained(
    model: VideoModel, folder: str | os.PathLike, config: ExperimentConfig | None = None,
    classes: list[str] | None = None, metrics: dict[str, float] | None = None,
    pretrained: str | None = None,
) -> Path:
    """Write ``model`` to ``folder`` (see the module docstring). ``config`` is the experiment
    it was trained by (it rebuilds the model exactly, seed included); without one the spec
    does, on the ``pretrained`` weights."""
    if model.spec is None or model.spec.backbone == "custom":
        raise CheckpointError("save_pretrained writes models that vidadapt.create_model builds "
                              "from a backbone preset")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pretrained = pretrained or (config.model.pretrained if config else None)
    fingerprint = backbone_fingerprint(model)
    data = config.to_dict() if config else None
    save_adapter(folder / WEIGHTS_FILE, model, fingerprint, data, classes, {"metrics": metrics})
    description = {
        "format": PRETRAINED_FORMAT,
        "spec": asdict(model.spec),
        "config": data,
        "classes": classes,
        "pretrained": pretrained,
        "backbone_fingerprint": fingerprint,
        "metrics": metrics or {},
    }
    text = json.dumps(description, indent=1) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    card = model_card(model, description)
    atomic_write(folder / CARD_FILE, lambda tmp: tmp.write_text(card))
    return folder


def model_card(model: VideoModel, description: dict[str, Any]) -> str:
    """The README.md of a save_pretrained folder, from ``config.json``'s ``description``."""
    spec, counts = model.spec, model.parameter_counts()
    config = description["config"] or {}
    data = config.get("data", {})
    parts = "\n".join(f"| {name} | {n:,} |" for name, n in counts.items()
                      if name not in ("total", "tunable"))
    metrics = "\n".join(f"| {k} | {v:.2f} |" for k, v in description["metrics"].items())
    return f"""---
library_name: vidadapt
tags: [video-classification, parameter-efficient-fine-tuning, {spec.method}]
---

# {spec.method} on {spec.backbone}

A video classifier made with vidadapt: the frozen image
model `{spec.backbone}` (weights: `{description['pretrained'] or 'random'}`, fingerprint
`{description['backbone_fingerprint']}`) adapted to {spec.num_frames}-frame clips at
{spec.image_size}² by `{spec.method}`, {spec.num_classes} classes.

Data: `{data.get('dataset', 'not recorded')}` (train `{data.get('train')}`, val
`{data.get('val')}`).

| parameters | count |
|---|---|
| total | {counts['total']:,} |
| tunable | {counts['tunable']:,} ({100 * counts['tunable'] / counts['total']:.2f}%) |
{parts}

| metric | value |
|---|---|
{metrics or '| (none recorded) | |'}

```python
import vidadapt
model = vidadapt.from_pretrained("THIS_FOLDER_OR_HUB_ID")  # pretrained=... if moved
```
"""


def from_pretrained(source: str | os.PathLike, pretrained: str | None = None) -> VideoModel:
    """The model a :func:`save_pretrained` folder holds (in eval mode), from a local folder or,
    when ``huggingface_hub`` is installed and online, a hub id. ``pretrained`` replaces the
    recorded source of the frozen weights (the fingerprint must still match)."""
    folder = Path(source)
    if not folder.is_dir():
        folder = _download(str(source))
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}: not a save_pretrained folder")
    description = json.loads(path.read_text())
    if description.get("format") != PRETRAINED_FORMAT:
        raise CheckpointError(f"{path} is not a vidadapt model (format "
                              f"{description.get('format')!r}, expected {PRETRAINED_FORMAT!r})")
    checkpoint = read_classifier(folder / WEIGHTS_FILE)
    weights = pretrained or description["pretrained"]
    classes = description["classes"]
    if description["config"] is not None:
        overrides = [f"model.pretrained={json.dumps(weights)}"]
        cfg = config_from_dict(description["config"], overrides)
        model = build_model(cfg, checkpoint.spec.num_classes, classes)
    else:
        spec = ModelSpec(**description["spec"])
        model = create_model(**spec_kwargs(spec), pretrained=weights, classes=classes)
    load_adapter(model, checkpoint, str(folder / WEIGHTS_FILE))
    return model.eval()


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download  # optional: only hub ids need it
    except ImportError:
        raise CheckpointError(f"{repo_id} is not a folder; a hub id needs huggingface_hub "
                              "(pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE,
                                                               CARD_FILE]))
    except Exception as err:  # offline, unknown repo, no access: one line either way
        raise CheckpointError(f"{repo_id}: not a folder, and the hub download failed "
                              f"({type(err).__name__})") from None
