"""Video data: annotation formats, decoding, frame sampling, transforms and the synthetic set."""

from .annotations import Annotation, VideoRecord, load_annotation, write_annotation

__all__ = ["Annotation", "VideoRecord", "load_annotation", "write_annotation"]
