"""Video data: annotation formats, decoding, frame sampling, transforms and the synthetic set."""

from .annotations import Annotation, VideoRecord, load_annotation, write_annotation
from .dataset import SkipReport, VideoDataset, check_record, collate_samples
from .decode import (
    BadVideoError,
    DecordReader,
    InMemoryReader,
    PyAVReader,
    RawFrameReader,
    VideoReader,
)
from .sampling import DenseSampler, FrameSampler, UniformSampler
from .synthetic import SyntheticClips, make_synthetic
from .transforms import TransformConfig, build_transform, mirror_label_map

__all__ = [
    "Annotation", "VideoRecord", "load_annotation", "write_annotation",
    "SkipReport", "VideoDataset", "check_record", "collate_samples",
    "BadVideoError", "DecordReader", "InMemoryReader", "PyAVReader", "RawFrameReader",
    "VideoReader",
    "DenseSampler", "FrameSampler", "UniformSampler",
    "TransformConfig", "build_transform", "mirror_label_map",
    "SyntheticClips", "make_synthetic",
]
