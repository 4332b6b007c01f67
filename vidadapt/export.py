"""One self-contained safetensors model for serving, from a trained model.

An adapter checkpoint holds only the tuned tensors; serving needs the frozen encoders too.
:func:`save_exported` writes the model's whole state, with every LoRA update folded into the
frozen weight it adapts and ZeroI2V's linear adapters into the layers they wrap
(``methods.folding.merged_state_dict``). Where nothing else remains — LoRA, BitFit, full
fine-tuning, the linear probe — the file is a plain ViT + head (``plain``):
serving costs exactly what the image model costs. Methods that add modules (AIM, ST-Adapter,
VPT, prefix, adapters, a text head) cannot fold; their modules' weights are written beside the
backbone's and the model keeps their compute. A text head's file also holds the text tower's
architecture, the tokenizer and the class names. :func:`load_exported` rebuilds either kind
without the pretrained file.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from .backbones.vit import has_site_modules
from .checkpoints import create_backbone
from .clip.text import TextConfig, TextTransformer
from .clip.tokenizer import ClipTokenizer
from .clip.towers import Clip
from .engine.checkpoint import atomic_write, upgrade_names
from .errors import CheckpointError, UserError
from .methods.folding import foldable_layers, folded_copy, merged_state_dict
from .methods.lora import lora_layers
from .methods.registry import parse_methods
from .methods.text_head import TextHead
from .models import ModelSpec, VideoModel, create_model, spec_kwargs

EXPORT_FORMAT = "vidadapt-model/1"
PLAIN_METHOD = "linear"  # a model with no method modules: the plain ViT + head


def serving_spec(spec: ModelSpec) -> ModelSpec:
    """The architecture of the exported model: ``spec`` with every method's folded form
    (``Method.export_as``: LoRA gone, ZeroI2V without its adapters), and the plain model
    (``linear``) where nothing of the methods remains."""
    kept = {}
    for method in parse_methods(spec.method):
        options = spec.options[method.name]
        if method.export_as is not None:
            folded = method.export_as(method.make_config(options))
            if folded is None:
                continue
            options = asdict(folded)
        kept[method.name] = options
    kept_spec = replace(spec, method="+".join(kept) or PLAIN_METHOD, options=kept)
    if any(m.classifies_with_text for m in parse_methods(kept_spec.method)):
        return kept_spec  # a text head is never the plain model
    with torch.device("meta"):  # shapes only: does anything of the methods remain?
        plain_spec = replace(spec, method=PLAIN_METHOD, options={PLAIN_METHOD: {}})
        plain = create_model(**spec_kwargs(plain_spec))
        remaining = create_model(**spec_kwargs(kept_spec))
    # BitFit and full fine-tuning change only the image model's own tensors: plain as well. A
    # parameter-free site module (ZeroI2V's frame shift) still changes the computation.
    same = set(remaining.state_dict()) == set(plain.state_dict())
    return plain_spec if same and not has_site_modules(remaining.backbone) else kept_spec


def export_state(model: VideoModel) -> tuple[dict[str, Tensor], ModelSpec]:
    """The model's whole state with every foldable wrapper (LoRA, ZeroI2V's adapters) folded
    in, and the spec of the model it loads into."""
    spec = model.spec
    if spec is None or spec.backbone == "custom":
        raise UserError("export writes models that vidadapt.create_model builds from a backbone "
                        "preset; a custom ViT or Clip object cannot be rebuilt from the file")
    state = {k: v.detach().contiguous().cpu() for k, v in merged_state_dict(model).items()}
    return state, serving_spec(spec)


def save_exported(path: str | os.PathLike, model: VideoModel,
                  classes: list[str] | None = None) -> ModelSpec:
    """Write :func:`export_state` of ``model`` to ``path``; returns the serving spec."""
    state, spec = export_state(model)
    metadata = {
        "format": EXPORT_FORMAT,
        "spec": json.dumps(asdict(spec)),
        "trained_method": model.spec.method,
        "classes": json.dumps(classes),
    }
    if isinstance(model.head, TextHead):  # what rebuilds the text tower and its tokenizer
        tokenizer = model.head.tokenizer
        metadata["classes"] = json.dumps(model.head.classes)
        metadata["text"] = json.dumps({
            "config": asdict(model.head.text.cfg),
            "vocab": tokenizer.encoder,
            "merges": tokenizer.merges,
        })
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return spec


def load_exported(path: str | os.PathLike) -> tuple[VideoModel, list[str] | None]:
    """The model a :func:`save_exported` file holds (in eval mode) and its class names."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    if metadata.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} is not a model written by `vidadapt export` (format "
                              f"{metadata.get('format')!r}, expected {EXPORT_FORMAT!r})")
    spec = ModelSpec(**json.loads(metadata["spec"]))
    classes = json.loads(metadata["classes"])
    kwargs = spec_kwargs(spec)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        if "text" in metadata:
            kwargs.update(backbone=_towers(spec, json.loads(metadata["text"])), classes=classes)
        model = create_model(**kwargs)
    model.load_state_dict(upgrade_names(load_file(str(path))), strict=True, assign=True)
    model.spec = spec
    if "text" in metadata:  # class embeddings are not stored: embed them with the loaded tower
        model.set_classes(classes)
    return model.eval(), classes


def _towers(spec: ModelSpec, text: dict) -> Clip:
    """Empty towers shaped as the exported model's (weights come from the file)."""
    visual = create_backbone(spec.backbone, image_size=spec.image_size)
    tokenizer = ClipTokenizer([tuple(pair) for pair in text["merges"]], text["vocab"])
    return Clip(visual, TextTransformer(TextConfig(**text["config"])), tokenizer, 0.0)


# ---- LoRA in peft's layout ----------------------------------------------------------------------

# vidadapt's names of the image model's linear layers → Hugging Face CLIPVisionModel's.
_HF_LINEAR = {"attn.proj": "self_attn.out_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_HF_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def save_peft_lora(model: VideoModel, folder: str | os.PathLike) -> Path:
    """Write the LoRA of a ``lora`` model on a CLIP image tower as a peft adapter for Hugging
    Face's ``CLIPVisionModel``: ``adapter_config.json`` + ``adapter_model.safetensors``
    (``PeftModel.from_pretrained(clip_vision_model, folder)`` reads it), on the module names of
    transformers 5 (``encoder.layers.N.self_attn.q_proj``; earlier releases nested them under
    ``vision_model.``). A fused qkv's slices become the q/k/v projections' own A and B. The
    video head is not part of a ``CLIPVisionModel``; it stays in vidadapt's files."""
    if model.spec is None or model.spec.method != "lora":
        raise UserError("a peft adapter holds LoRA alone: export a model whose method is lora "
                        f"(this one is {model.spec.method if model.spec else 'unknown'})")
    tensors, targets = {}, []
    for name, layer in lora_layers(model.backbone).items():
        block, _, local = name.partition(".")[2].partition(".")  # "3", "attn.qkv"
        prefix = f"encoder.layers.{block}."
        if local == "attn.qkv":
            hf_names = [_HF_QKV[int(s)] for s in layer.slots.tolist()]
        elif local in _HF_LINEAR:
            hf_names = [_HF_LINEAR[local]]
        else:
            raise UserError(f"LoRA on {name} has no CLIPVisionModel counterpart")
        for hf_name, a, b in zip(hf_names, layer.lora_A, layer.lora_B, strict=True):
            key = f"base_model.model.{prefix}{hf_name}"
            tensors[f"{key}.lora_A.weight"] = a.detach().float().contiguous()  # [r, in]
            tensors[f"{key}.lora_B.weight"] = b.detach().float().contiguous()  # [out, r]
            targets.append(prefix + hf_name)
    options = model.spec.options["lora"]
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "r": options["rank"],
        "lora_alpha": options["alpha"],
        "lora_dropout": options["lora_dropout"],
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": None,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "adapter_model.safetensors",
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, indent=1) + "\n"
    atomic_write(folder / "adapter_config.json", lambda tmp: tmp.write_text(text))
    return folder


# ---- ONNX ---------------------------------------------------------------------------------------

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # largest logit difference to PyTorch accepted when checking the file


def save_onnx(model: VideoModel, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Trace ``model`` (eval mode) to an ONNX file: input ``video`` ``[batch, T, 3, H, W]``
    (``3 + M`` channels with motion maps, ``data.motion``), output ``logits`` ``[batch, C]``,
    the batch dynamic, LoRA and ZeroI2V's adapters folded in. With onnxruntime installed the
    file is checked against PyTorch at another batch size (to ``ONNX_TOLERANCE``); a model whose
    traced graph does not hold for other batches (a per-clip Python loop: CoCoOp; EVL) is
    refused in one line, as is one that cannot be traced at all."""
    spec = model.spec
    method = spec.method if spec else "this model"
    frames, size = (spec.num_frames, spec.image_size) if spec else (model.num_frames, 224)
    if foldable_layers(model):  # served folded, as `vidadapt export` serves it
        model = folded_copy(model)
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, frames, model.input_channels, size, size,
                          generator=torch.Generator().manual_seed(0))

    def export(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["video"], output_names=["logits"],
                              dynamic_axes={"video": {0: "batch"}, "logits": {0: "batch"}})
        _check_onnx(model, tmp, frames, size, method)

    try:
        atomic_write(path, export)
    except UserError:
        raise
    except Exception as err:  # the tracer raises many types; the first line says why
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{method} cannot be traced to ONNX: {reason}") from None
    return path


def _check_onnx(model: VideoModel, path: Path, frames: int, size: int, method: str) -> None:
    """The file's logits against PyTorch's at batch 3 (onnxruntime only; skipped without it)."""
    try:
        import onnxruntime  # optional: checks the file when installed
    except ImportError:
        return
    video = torch.randn(3, frames, model.input_channels, size, size,
                        generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        (logits,) = session.run(None, {"video": video.numpy()})
    except Exception as err:  # noqa: BLE001 (onnxruntime's own exception types)
        raise UserError(f"{method} traces to an ONNX graph that only holds for the traced "
                        f"batch size ({type(err).__name__}); export it with PyTorch instead") \
            from None
    with torch.no_grad():
        gap = (torch.from_numpy(logits) - model(video)).abs().max().item()
    if gap > ONNX_TOLERANCE:
        raise UserError(f"{method}'s ONNX graph differs from PyTorch by {gap:.2g} at another "
                        "batch size (a per-clip Python loop was traced); export it with "
                        "PyTorch instead")
