"""Samples: the schema (``schema.py``), image opening (``images.py``), loading and writing
(``loaders.py``), ``r1v2 data check`` (``check.py``) and the synthetic task (``synthetic/``)."""

from r1v2.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageInfo,
    ImageSource,
    open_image,
    probe_image,
)
from r1v2.data.loaders import LoadResult, find_data_files, load_samples, write_jsonl
from r1v2.data.schema import DataError, Sample, parse_record

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DataError",
    "ImageError",
    "ImageInfo",
    "ImageSource",
    "LoadResult",
    "Sample",
    "find_data_files",
    "load_samples",
    "open_image",
    "parse_record",
    "probe_image",
    "write_jsonl",
]
