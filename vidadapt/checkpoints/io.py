"""Read every tensor of a checkpoint file without running pickled code.

Containers: safetensors, ``torch.save`` files (read with ``torch.load(weights_only=True)``),
TorchScript archives such as OpenAI's CLIP ``.pt`` (read by a tensor-only unpickler, never
``torch.jit.load``) and Hugging Face model directories. Names and dtypes are kept as stored;
``vidadapt.checkpoints.convert`` maps them to vidadapt's names.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..errors import CheckpointError

# Weight files of a Hugging Face model directory, in order of preference.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Wrappers that training scripts put around a state dict ({"state_dict": ..., "epoch": ...}).
_WRAPPER_KEYS = ("state_dict", "model")

# Errors the readers raise on a truncated or corrupt file. Besides UnpicklingError, a damaged
# pickle can raise several built-in errors (the pickle documentation says so).
_READ_ERRORS = (
    zipfile.BadZipFile,
    SafetensorError,
    RuntimeError,  # torch.load: "PytorchStreamReader failed reading zip archive"
    pickle.UnpicklingError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Every tensor in a checkpoint file or Hugging Face directory, under its stored name.

    A ``state_dict`` / ``model`` wrapper and a DDP ``module.`` prefix are removed; nothing else
    is renamed or cast. Raises ``CheckpointError`` naming the file when it is missing, corrupt,
    or holds no state dict.
    """
    path = Path(path)
    file = _weight_file(path) if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{file}: checkpoint file not found")
    try:
        content = _read_container(file)
    except _READ_ERRORS as e:
        raise _read_error(file, e) from e
    return _unwrap(content, file)


def read_hf_config(path: str | Path) -> dict | None:
    """``config.json`` of a Hugging Face model directory; None for a single file."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config}: not valid JSON ({e})") from e


def _weight_file(directory: Path) -> Path:
    for name in HF_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: directory has no weights file ({' or '.join(HF_WEIGHT_FILES)})"
    )


def _read_container(file: Path) -> object:
    """Dispatch on the file's content, not its suffix (.pt is used for all three formats)."""
    with open(file, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(file) as archive:
            if any(name.endswith("/constants.pkl") for name in archive.namelist()):
                return read_torchscript(archive)
    elif head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def _read_error(file: Path, error: Exception) -> CheckpointError:
    text = str(error)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)  # from weights_only
    if unsupported:
        return CheckpointError(
            f"{file}: holds a pickled {unsupported[1]} object, which vidadapt does not unpickle "
            "(that could run code); save only the state dict, or convert to .safetensors"
        )
    cause = text.split("WeightsUnpickler error:")[-1].strip()  # torch.load wraps it in advice
    reason = cause.splitlines()[0] if cause else type(error).__name__
    return CheckpointError(
        f"{file}: cannot read checkpoint ({reason}); the file looks truncated or corrupt, "
        "download it again"
    )


def _unwrap(content: object, file: Path) -> dict[str, Tensor]:
    if isinstance(content, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    tensors = {}
    if isinstance(content, dict):
        tensors = {k: v for k, v in content.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{file}: holds no tensors (found {type(content).__name__})")
    if all(k.startswith("module.") for k in tensors):  # saved from a DistributedDataParallel
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


# --- TorchScript archives ----------------------------------------------------------------------
#
# A TorchScript archive is a zip with ``<root>/data.pkl`` (the module tree, pickled) and one raw
# little-endian storage per tensor in ``<root>/data/<key>``. The pickle names module classes
# ``__torch__.*`` whose code lives in the archive: we never run it. Each such object is rebuilt
# as a ``ScriptObject`` holding only its attribute dict; tensors are rebuilt from the storages.

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ScriptObject:
    """Stand-in for a pickled TorchScript object: keeps its attributes, runs none of its code.

    The unpickler makes one subclass per TorchScript class, named after it.
    """

    def __init__(self, *args) -> None:
        self.attributes: dict = {}

    def __setstate__(self, state) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple, *_) -> Tensor:
    """Safe counterpart of ``torch._utils._rebuild_tensor_v2`` (requires_grad/hooks ignored)."""
    return storage.as_strided(size, stride, offset)


def _first_argument(value, *_):
    """Counterpart of the ``torch.jit._pickle`` helpers, which only tag their first argument."""
    return value


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(archive.open(f"{root}/data.pkl"))
        self.archive, self.root = archive, root
        self.storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch.jit._pickle":
            return _first_argument
        if module.startswith("__torch__"):
            return type(name, (ScriptObject,), {"__module__": module})
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid) -> Tensor:
        _, dtype, key, _location, numel = pid  # ("storage", dtype, key, location, numel)
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.root}/data/{key}"))
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} values")
            empty = torch.empty(0, dtype=dtype)
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if numel else empty
        return self.storages[key]


def read_torchscript(archive: zipfile.ZipFile) -> dict[str, Tensor]:
    """Tensors of a TorchScript archive, named by their attribute path (``visual.conv1.weight``).

    Every tensor attribute is returned, including ones that are not in the module's
    ``state_dict`` (e.g. OpenAI CLIP's text attention masks).
    """
    roots = [n.removesuffix("/data.pkl") for n in archive.namelist() if n.endswith("/data.pkl")]
    if not roots:
        raise zipfile.BadZipFile("no data.pkl in the archive")
    tree = _TensorOnlyUnpickler(archive, roots[0]).load()
    tensors: dict[str, Tensor] = {}
    _collect_tensors(tree, "", tensors)
    return tensors


def _collect_tensors(node: object, prefix: str, out: dict[str, Tensor]) -> None:
    if isinstance(node, Tensor):
        out[prefix] = node
    elif isinstance(node, (ScriptObject, dict)):
        items = node.attributes if isinstance(node, ScriptObject) else node
        for name, child in items.items():
            _collect_tensors(child, f"{prefix}.{name}" if prefix else str(name), out)
