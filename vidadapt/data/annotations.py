"""Annotation files: which videos a split holds, their labels and the class names.

Every supported format is read into one :class:`Annotation` (see docs/methods.md):

============  ================================================================================
``list``      ``relative/path.mp4 label`` per line (mmaction2 video list; the label is the last
              field, so paths may contain spaces). Names come from ``classes.txt`` beside it.
``rawframes`` ``frame_dir total_frames label`` per line; frames are ``img_00001.jpg`` onwards.
``kinetics``  CSV ``label,youtube_id,time_start,time_end,split``; videos are
              ``{id}_{start:06d}_{end:06d}.mp4`` under ``root/<label>/`` or directly in ``root``.
``ssv2``      Something-Something-v2 JSON (items with ``id`` and ``template``) + ``labels.json``.
``hmdb51``    the folder of official split files ``<class>_test_split<k>.txt``.
``ucf101``    ``trainlist0k.txt`` / ``testlist0k.txt`` with ``classInd.txt`` beside them.
``folder``    a folder per class: ``root/<class>/<video>``.
============  ================================================================================

Relative video paths are joined with ``root``, which defaults to the folder holding the
annotation file (the tree itself for ``folder``). HMDB51 and UCF101 split files live apart
from the videos, so they need ``root``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

FORMATS = ("list", "rawframes", "kinetics", "ssv2", "hmdb51", "ucf101", "folder")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")
CLASSES_FILE = "classes.txt"

logger = logging.getLogger("vidadapt")

_HMDB_SPLIT_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>\d+)\.txt$")
_UCF_SPLIT_FILE = re.compile(r"^(train|test)list\d+\.txt$")


@dataclass
class VideoRecord:
    """One sample: a video file, or a folder of frames when ``num_frames`` is set."""

    path: str  # absolute, or relative to the working directory when root was relative
    label: int  # class index into Annotation.classes
    num_frames: int | None = None  # raw-frame folders only: frames img_{i:05d}.jpg it holds
    start_index: int = 1  # raw-frame folders only: index of the first frame file


@dataclass
class Annotation:
    """The records of one split and the class names their labels index."""

    records: list[VideoRecord]
    classes: list[str]
    source: str  # the annotation file or folder that was read, for messages


def load_annotation(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    format: str = "auto",
    classes: Sequence[str] | None = None,
    *,
    split: int = 1,
    subset: str = "train",
    labels: str | os.PathLike | None = None,
) -> Annotation:
    """Read an annotation file (or folder) of any supported format.

    Args:
        path: the annotation file; for ``hmdb51`` the folder of split files, for ``folder``
            the class tree.
        root: folder that relative video paths are joined with (default: see module doc).
        format: one of ``FORMATS`` or ``"auto"`` (by extension, file name and content).
        classes: class names to index labels with, e.g. the training split's names so that a
            validation split uses the same indices. Overrides names found in the files.
        split: HMDB51 split number (1-3).
        subset: HMDB51 part to read, ``"train"`` or ``"test"``.
        labels: SSv2 ``labels.json``; default: ``*labels.json`` beside ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"annotation file {path} does not exist")
    if format == "auto":
        format = detect_format(path)
    if format not in FORMATS:
        raise DataError(f"unknown annotation format {format!r}; choose one of {', '.join(FORMATS)}")
    if format in ("hmdb51", "ucf101") and root is None:
        raise DataError(f"{path}: {format} split files do not say where the videos are; pass root")
    if root is None:
        root = path if path.is_dir() else path.parent
    root = str(root)
    classes = list(classes) if classes is not None else None
    if format == "list":
        return _read_list(path, root, classes, rawframes=False)
    if format == "rawframes":
        return _read_list(path, root, classes, rawframes=True)
    if format == "kinetics":
        return _read_kinetics(path, root, classes)
    if format == "ssv2":
        return _read_ssv2(path, root, classes, labels)
    if format == "hmdb51":
        return _read_hmdb51(path, root, classes, split, subset)
    if format == "ucf101":
        return _read_ucf101(path, root, classes)
    return _read_folder(path, classes)


def detect_format(path: Path) -> str:
    """Guess the format of ``path`` from its extension, name and first line."""
    if path.is_dir():
        if any(_HMDB_SPLIT_FILE.match(p.name) for p in path.iterdir()):
            return "hmdb51"
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "ssv2"
    if suffix == ".csv":
        return "kinetics"
    if _UCF_SPLIT_FILE.match(path.name):
        return "ucf101"
    first = next((line for line in _read_lines(path) if line.strip()), None)
    if first is None:
        raise DataError(f"{path} is empty; cannot tell its format (pass format=...)")
    fields = first.split()
    if len(fields) >= 2 and fields[-1].lstrip("-").isdigit():
        # A raw-frame line ends in two integers and names a folder, not a video file.
        looks_like_frames = len(fields) >= 3 and fields[-2].isdigit()
        has_video_suffix = first.rsplit(None, 2)[0].lower().endswith(VIDEO_EXTENSIONS)
        return "rawframes" if looks_like_frames and not has_video_suffix else "list"
    raise DataError(
        f"cannot tell the annotation format of {path} from its first line {first.strip()!r}; "
        f"pass format= one of {', '.join(FORMATS)}"
    )


def write_annotation(
    annotation: Annotation,
    path: str | os.PathLike,
    format: str = "list",
    root: str | os.PathLike | None = None,
) -> None:
    """Write ``annotation`` as a ``list`` or ``rawframes`` file, plus ``classes.txt`` beside it.

    Paths under ``root`` (default: the folder of ``path``) are written relative to it, so the
    file reads back with :func:`load_annotation`. An existing ``classes.txt`` with other names is
    an error rather than overwritten, because other list files beside it may index it.
    """
    if format not in ("list", "rawframes"):
        raise DataError(f"cannot write annotation format {format!r}; use 'list' or 'rawframes'")
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    classes_path = path.parent / CLASSES_FILE
    names = "".join(f"{name}\n" for name in annotation.classes)
    if classes_path.exists() and classes_path.read_text(encoding="utf-8") != names:
        raise DataError(f"{classes_path} exists with other class names; write {path} elsewhere")
    lines = []
    for record in annotation.records:
        record_path = _relative_to(record.path, root)
        if format == "list":
            lines.append(f"{record_path} {record.label}\n")
        else:
            if record.num_frames is None:
                raise DataError(f"{record.path} has no frame count; cannot write it as rawframes")
            lines.append(f"{record_path} {record.num_frames} {record.label}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    classes_path.write_text(names, encoding="utf-8")


def _relative_to(path: str, root: Path) -> str:
    relative = os.path.relpath(path, root)
    return path if relative.startswith("..") else relative


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _read_classes_file(path: Path) -> list[str]:
    return [line.strip() for line in _read_lines(path) if line.strip()]


def _lookup(index: dict[str, int], name: str, where: str) -> int:
    """The label of class ``name``; ``where`` (FILE:LINE) names the line asking for it."""
    if name not in index:
        raise DataError(f"{where}: unknown class {name!r} (not among the {len(index)} classes)")
    return index[name]


def _index(classes: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(classes)}


def _read_list(path: Path, root: str, classes: list[str] | None, rawframes: bool) -> Annotation:
    if classes is None and (path.parent / CLASSES_FILE).exists():
        classes = _read_classes_file(path.parent / CLASSES_FILE)
        classes_source = str(path.parent / CLASSES_FILE)
    else:
        classes_source = "the given classes"
    expected = "<frame_dir> <total_frames> <label>" if rawframes else "<path> <label>"
    records = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        # Split from the right: the last one or two fields are numbers, the rest is the path.
        fields = line.strip().rsplit(None, 2 if rawframes else 1)
        numbers = fields[1:]
        if len(fields) != (3 if rawframes else 2) or not all(_is_int(f) for f in numbers):
            raise DataError(f"{path}:{number}: expected '{expected}', got {line.strip()!r}")
        label = int(numbers[-1])
        if label < 0 or (classes is not None and label >= len(classes)):
            limit = f"{len(classes)} classes in {classes_source}" if classes else "labels >= 0"
            raise DataError(f"{path}:{number}: label {label} is out of range for {limit}")
        record = VideoRecord(os.path.join(root, fields[0]), label)
        if rawframes:
            record.num_frames = int(numbers[0])
        records.append(record)
    if classes is None:
        num_classes = max((r.label for r in records), default=-1) + 1
        classes = [f"class_{i}" for i in range(num_classes)]
        unused = sorted(set(range(num_classes)) - {r.label for r in records})
        if unused:  # a typo in one label silently makes a head of its size
            logger.warning(
                "%s: the highest label is %d, so %d classes, but %d of them have no video "
                "(e.g. %s); with no %s beside the list the class count is the highest label + "
                "1: add one if that is not what you meant", path, num_classes - 1, num_classes,
                len(unused), ", ".join(map(str, unused[:5])), CLASSES_FILE)
    return Annotation(records, classes, str(path))


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _read_kinetics(path: Path, root: str, classes: list[str] | None) -> Annotation:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
        columns = set(rows[0]) if rows else set()
    missing = {"label", "youtube_id", "time_start", "time_end"} - columns
    if missing:
        raise DataError(f"{path}: Kinetics CSV lacks the column(s) {', '.join(sorted(missing))}")
    if classes is None:
        classes = sorted({row["label"] for row in rows})
    index = _index(classes)
    entries = []  # (label, the file's possible stems)
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        label = _lookup(index, row["label"], f"{path}:{number}")
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except ValueError:
            raise DataError(
                f"{path}:{number}: time_start/time_end must be numbers, got {row}"
            ) from None
        # Downloaders name a clip with its time span, or by its YouTube id alone.
        entries.append((label, (f"{row['youtube_id']}_{start:06d}_{end:06d}", row["youtube_id"])))
    videos = _VideoFolders(root)
    layout = videos.layout(path, [(classes[label], stems) for label, stems in entries], [
        lambda name: name,  # one folder per class, named as the label
        lambda name: name.replace(" ", "_"),  # ... or with underscores
        lambda name: "",  # all in one folder
    ])
    records = [VideoRecord(videos.path(layout(classes[label]), stems), label)
               for label, stems in entries]
    return Annotation(records, classes, str(path))


class _VideoFolders:
    """Finds the files of a downloaded data set whose names the annotation fixes only up to the
    folder layout, the naming pattern and the extension (``.mp4``, ``.webm``, ``.mkv``...).

    Each folder is listed once (one ``scandir``, not a probe per file and extension), so a
    240k-clip list resolves in seconds, and files of mixed extensions are found.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.listed: dict[str, dict[str, str]] = {}  # folder → {file stem: file name}

    def _listing(self, folder: str) -> dict[str, str]:
        if folder not in self.listed:
            found: dict[str, str] = {}
            try:
                with os.scandir(os.path.join(self.root, folder)) as it:
                    for entry in it:
                        stem, ext = os.path.splitext(entry.name)
                        if ext.lower() in VIDEO_EXTENSIONS:
                            found.setdefault(stem, entry.name)
            except OSError:  # no such folder
                pass
            self.listed[folder] = found
        return self.listed[folder]

    def find(self, folder: str, stems: Sequence[str]) -> str | None:
        listing = self._listing(folder)
        return next((listing[stem] for stem in stems if stem in listing), None)

    def path(self, folder: str, stems: Sequence[str], default_ext: str = ".mp4") -> str:
        """The file in ``folder`` named by the first of ``stems`` that exists, with whatever
        video extension it has; else the first stem with ``default_ext`` (the data set then
        reports it missing)."""
        name = self.find(folder, stems) or stems[0] + default_ext
        return os.path.join(self.root, folder, name)

    def layout(self, source: Path, entries: list[tuple[str, Sequence[str]]], layouts: list):
        """The first of ``layouts`` (class name → folder) under which a video of ``entries``
        (class name, stems) exists. Many videos are missing from every copy of Kinetics, so
        it probes until one is found; when none is, it says which names it tried."""
        for name, stems in entries:
            for layout in layouts:
                if self.find(layout(name), stems):
                    return layout
        if entries:
            name, stems = entries[0]
            tried = ", ".join(os.path.join(self.root, layout(name), f"{stem}.*")
                              for layout in layouts for stem in stems)
            logger.warning("%s: none of its %d videos was found under %s (for the first one "
                           "tried %s); set the data root to the folder that holds them",
                           source, len(entries), self.root, tried)
        return layouts[0]


def _read_ssv2(
    path: Path, root: str, classes: list[str] | None, labels: str | os.PathLike | None
) -> Annotation:
    items = _read_json(path)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of items with 'id' and 'template'")
    if classes is None:
        labels_path = Path(labels) if labels is not None else _find_ssv2_labels(path)
        label_ids = {name: int(i) for name, i in _read_json(labels_path).items()}
        classes = sorted(label_ids, key=label_ids.get)
    index = _index(classes)
    entries = []
    for number, item in enumerate(items):
        if "template" not in item or "id" not in item:
            raise DataError(
                f"{path}: item {number} has no 'id' or 'template' "
                "(the SSv2 test split carries no labels)"
            )
        template = item["template"].replace("[", "").replace("]", "")
        entries.append((_lookup(index, template, f"{path}: item {number} (id {item['id']})"),
                        str(item["id"])))
    videos = _VideoFolders(root)  # .webm as released; re-encoded copies are often .mp4
    videos.layout(path, [("", (video_id,)) for _, video_id in entries], [lambda name: ""])
    records = [VideoRecord(videos.path("", (video_id,), default_ext=".webm"), label)
               for label, video_id in entries]
    return Annotation(records, classes, str(path))


def _find_ssv2_labels(path: Path) -> Path:
    found = sorted(path.parent.glob("*labels.json"))
    if not found:
        raise DataError(f"{path}: no labels.json beside it; pass labels=PATH")
    return found[0]


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def _read_hmdb51(
    path: Path, root: str, classes: list[str] | None, split: int, subset: str
) -> Annotation:
    """HMDB51 lists every video of a class in each split file, tagged 1 (train), 2 (test) or
    0 (unused in this split)."""
    if subset not in ("train", "test"):
        raise DataError(f"HMDB51 subset must be 'train' or 'test', got {subset!r}")
    wanted = "1" if subset == "train" else "2"
    split_files = {}
    for file in path.iterdir():
        match = _HMDB_SPLIT_FILE.match(file.name)
        if match and int(match["split"]) == split:
            split_files[match["name"]] = file
    if not split_files:
        raise DataError(f"{path}: no HMDB51 split files '<class>_test_split{split}.txt'")
    if classes is None:
        classes = sorted(split_files)
    index = _index(classes)
    records = []
    for name in sorted(split_files):
        file = split_files[name]
        label = _lookup(index, name, str(file))
        for number, line in enumerate(_read_lines(file), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DataError(f"{file}:{number}: expected '<video> 0|1|2', got {line.strip()!r}")
            if fields[1] == wanted:
                records.append(VideoRecord(os.path.join(root, name, fields[0]), label))
    return Annotation(records, classes, str(path))


def _read_ucf101(path: Path, root: str, classes: list[str] | None) -> Annotation:
    """``trainlist0k.txt`` lines carry a 1-based class id; ``testlist0k.txt`` lines only the
    path, whose folder is the class name."""
    class_ind = path.parent / "classInd.txt"
    if not class_ind.exists():
        raise DataError(f"{path}: no classInd.txt beside it")
    official = []
    for number, line in enumerate(_read_lines(class_ind), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) != len(official) + 1:
            raise DataError(
                f"{class_ind}:{number}: expected '{len(official) + 1} <class>', "
                f"got {line.strip()!r}"
            )
        official.append(fields[1])
    if classes is None:
        classes = official
    # Folder names and classInd differ in case for one UCF101 class (HandStandPushups).
    by_lower_name = _index([name.lower() for name in classes])
    records = []
    for number, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 2 and fields[1].isdigit():
            class_id = int(fields[1])
            if not 1 <= class_id <= len(official):
                raise DataError(
                    f"{path}:{number}: class id {class_id} is out of range for "
                    f"the {len(official)} classes in {class_ind}"
                )
            name = official[class_id - 1]
        elif len(fields) == 1 and "/" in fields[0]:
            name = fields[0].split("/")[0]
        else:
            raise DataError(
                f"{path}:{number}: expected '<class>/<video> [class id]', got {line.strip()!r}"
            )
        if name.lower() not in by_lower_name:
            raise DataError(f"{path}:{number}: unknown class {name!r} (not in {class_ind})")
        label = by_lower_name[name.lower()]
        records.append(VideoRecord(os.path.join(root, fields[0]), label))
    return Annotation(records, classes, str(path))


def _read_folder(path: Path, classes: list[str] | None) -> Annotation:
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = [folder.name for folder in folders]
    index = _index(classes)
    records = []
    for folder in folders:
        label = _lookup(index, folder.name, str(folder))
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in VIDEO_EXTENSIONS:
                records.append(VideoRecord(str(file), label))
    if not records:
        raise DataError(f"{path}: no videos ({', '.join(VIDEO_EXTENSIONS)}) in class folders")
    return Annotation(records, classes, str(path))
