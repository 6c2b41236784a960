"""Image–caption pairs packed in ArrayRecord shards: the format, and its random-access reader.

Written by `python -m vlp_jax.tools.to_array_record`. A directory holds
    manifest.json                    format, totals, and per shard: file, records, pairs, bytes,
                                     sha256, images skipped when packing
    pairs-00000-of-00008.array_record ...   one record per image: header + encoded image bytes
    pairs-00000-of-00008.captions.npy ...   captions per record (uint16), to index pairs

Why this at scale: one file per shard instead of millions of small image files (which network
file systems and object stores serve slowly), random access by index (so the seeded shuffle and
a resumed run's exact replay work, as with every source here), and images kept encoded, so the
dataset is no bigger than the JPEGs.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import grain
import numpy as np

from vlp_jax.data.sources import check_index

MANIFEST = "manifest.json"
FORMAT = "vlp_jax.pairs.v1"
_HEADER = struct.Struct("<I")


def shard_name(index: int, count: int) -> str:
    return f"pairs-{index:05d}-of-{count:05d}.array_record"


def captions_name(shard: str) -> str:
    return shard.removesuffix(".array_record") + ".captions.npy"


def encode_record(image: bytes, captions: list[str], image_id: int, ref: str) -> bytes:
    """One image with its captions: a 4-byte header length, a JSON header, the image bytes."""
    header = json.dumps({"captions": captions, "image_id": image_id, "ref": ref}).encode()
    return _HEADER.pack(len(header)) + header + image


def decode_record(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, image bytes) of one record."""
    (size,) = _HEADER.unpack_from(data)
    start = _HEADER.size
    return json.loads(data[start : start + size]), data[start + size :]


def read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found; pack pairs with `python -m vlp_jax.tools.to_array_record`"
        )
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


class ArrayRecordPairs(grain.sources.RandomAccessDataSource):
    """One pair per caption of the records in a packed directory (a raw source: images stay
    encoded; see `vlp_jax.data.sources.DecodedPairs`)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        manifest = read_manifest(directory)
        paths, counts = [], []
        for shard in manifest["shards"]:
            path = os.path.join(directory, shard["file"])
            size = os.path.getsize(path) if os.path.exists(path) else None
            if size != shard["bytes"]:
                raise ValueError(
                    f"{path}: {size} bytes on disk, the manifest says {shard['bytes']}; the "
                    "directory is incomplete or damaged (rerun the packing tool to finish it)"
                )
            paths.append(path)
            counts.append(np.load(os.path.join(directory, captions_name(shard["file"]))))
        per_record = np.concatenate(counts).astype(np.int64)
        self._records = grain.sources.ArrayRecordDataSource(paths)
        self._pair_ends = np.cumsum(per_record)
        self.num_images = int(manifest["num_images"])

    def __len__(self) -> int:
        return int(self._pair_ends[-1]) if len(self._pair_ends) else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(self, index)
        record = int(np.searchsorted(self._pair_ends, i, side="right"))
        first = int(self._pair_ends[record - 1]) if record else 0
        header, image = decode_record(self._records[record])
        return {
            "image_bytes": image,
            "image_ref": f"{self.directory}[{record}] {header['ref']}",
            "caption": header["captions"][i - first],
            "image_id": int(header["image_id"]),
            "index": i,
        }

    def __repr__(self) -> str:
        return f"ArrayRecordPairs({self.directory!r}, pairs={len(self)})"
