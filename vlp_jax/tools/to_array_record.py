"""Packs an ALBEF-style annotation file and its images into ArrayRecord shards.

    python -m vlp_jax.tools.to_array_record --input ANN.json --images DIR --output OUT \
        [--shards 64] [--workers N] [--max_side 0]
    python -m vlp_jax.tools.to_array_record --verify OUT      # checks every shard's sha256

Record k of the input goes to shard k mod `--shards`; each shard is packed by one worker
process, written under a temporary name and renamed when complete, with its summary (records,
pairs, bytes, sha256, skipped images) next to it. A rerun skips finished shards, so an
interrupted job resumes. Images that are missing or do not decode are left out and counted.
`--max_side` > 0 re-encodes larger images (JPEG, quality 95) to that longest side. The result
is read by `config_lib.array_record_source(OUT)`; see `vlp_jax.data.array_record` for the layout.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

from vlp_jax.data import annotations, array_record
from vlp_jax.data.concepts import sha256
from vlp_jax.data.sources import decode_image


def numbered_records(input_path: str) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(record number, dense image id, record): ids in order of first appearance, by
    `image_id` if the record has one, else by image path; every worker computes the same ids."""
    ids: dict[Any, int] = {}
    for k, (_, record) in enumerate(annotations.iter_records(input_path)):
        key = record.get("image_id", ("path", record["image"]))
        yield k, ids.setdefault(repr(key), len(ids)), record


def _summary_path(output: str, shard: str) -> str:
    return os.path.join(output, shard.removesuffix(".array_record") + ".json")


def _image_bytes(path: str, max_side: int) -> bytes:
    """The file's bytes, checked to decode fully; re-encoded smaller past `max_side`."""
    with open(path, "rb") as f:
        data = f.read()
    pixels = decode_image(data)  # raises on truncated or corrupt files
    if max_side and max(pixels.shape[:2]) > max_side:
        image = Image.fromarray(pixels)
        image.thumbnail((max_side, max_side), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=95)
        data = buffer.getvalue()
    return data


def pack_shard(job: tuple[str, str, str, int, int, int]) -> dict[str, Any]:
    """Writes shard `index` of `count` (the records k with k mod count == index)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    input_path, image_root, output, index, count, max_side = job
    name = array_record.shard_name(index, count)
    path = os.path.join(output, name)
    tmp = path + ".tmp"
    writer = ArrayRecordWriter(tmp, "group_size:1")
    captions, skipped = [], []
    for k, image_id, record in numbered_records(input_path):
        if k % count != index:
            continue
        image_path = os.path.join(image_root, record["image"])
        try:
            data = _image_bytes(image_path, max_side)
        except Exception as e:  # missing or undecodable: left out, counted
            skipped.append(f"{record['image']}: {type(e).__name__}")
            continue
        texts = annotations.captions_of(record)
        writer.write(array_record.encode_record(data, texts, image_id, record["image"]))
        captions.append(len(texts))
    writer.close()
    np.save(os.path.join(output, array_record.captions_name(name)), np.asarray(captions, np.uint16))
    os.replace(tmp, path)
    summary = {
        "file": name,
        "records": len(captions),
        "pairs": int(sum(captions)),
        "bytes": os.path.getsize(path),
        "sha256": sha256(path),
        "skipped_images": len(skipped),
        "skipped_examples": skipped[:20],
    }
    with open(_summary_path(output, name) + ".tmp", "w") as f:
        json.dump(summary, f)
    os.replace(_summary_path(output, name) + ".tmp", _summary_path(output, name))
    return summary


def _finished(output: str, name: str) -> dict[str, Any] | None:
    summary_path = _summary_path(output, name)
    if not (os.path.exists(summary_path) and os.path.exists(os.path.join(output, name))):
        return None
    with open(summary_path) as f:
        return json.load(f)


def run(
    input_path: str,
    image_root: str,
    output: str,
    *,
    shards: int = 64,
    workers: int = 1,
    max_side: int = 0,
    only_shards: int | None = None,
) -> dict[str, Any]:
    """Packs every unfinished shard, then writes and returns the manifest.

    `only_shards` packs at most that many pending shards and writes no manifest (as an
    interrupted job would leave the directory), for tests and for splitting a job in parts.
    """
    if shards < 1 or workers < 1:
        raise ValueError(f"--shards={shards} and --workers={workers} must be at least 1")
    os.makedirs(output, exist_ok=True)
    names = [array_record.shard_name(i, shards) for i in range(shards)]
    done = {n: s for n in names if (s := _finished(output, n)) is not None}
    pending = [i for i, n in enumerate(names) if n not in done][:only_shards]
    started = time.perf_counter()
    jobs = [(input_path, image_root, output, i, shards, max_side) for i in pending]
    if jobs:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for summary in pool.imap_unordered(pack_shard, jobs):
                done[summary["file"]] = summary
    seconds = time.perf_counter() - started
    if len(done) < shards:
        return {"complete": False, "shards_done": len(done), "shards": shards}
    num_images = max((k for _, k, _ in numbered_records(input_path)), default=-1) + 1
    ordered = [done[n] for n in names]
    manifest = {
        "format": array_record.FORMAT,
        "input": os.path.abspath(input_path),
        "images": os.path.abspath(image_root),
        "max_side": max_side,
        "num_images": num_images,
        "records": sum(s["records"] for s in ordered),
        "pairs": sum(s["pairs"] for s in ordered),
        "skipped_images": sum(s["skipped_images"] for s in ordered),
        "shards": ordered,
        "complete": True,
        "seconds_this_run": seconds,
    }
    tmp = os.path.join(output, array_record.MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(output, array_record.MANIFEST))
    return manifest


def verify(output: str) -> list[str]:
    """The shards whose sha256 differs from the manifest's (empty when all are intact)."""
    manifest = array_record.read_manifest(output)
    return [
        s["file"]
        for s in manifest["shards"]
        if sha256(os.path.join(output, s["file"])) != s["sha256"]
    ]


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    if f.verify:
        bad = verify(f.verify)
        print("all shards intact" if not bad else f"damaged shards: {bad}")
        raise SystemExit(1 if bad else 0)
    if not (f.input and f.images and f.output):
        raise app.UsageError("--input, --images and --output are required (or --verify DIR)")
    manifest = run(
        f.input, f.images, f.output, shards=f.shards, workers=f.workers, max_side=f.max_side
    )
    print(
        f"{manifest['pairs']} pairs from {manifest['records']} images in {f.shards} shards "
        f"({manifest['skipped_images']} images skipped) -> {f.output}"
    )


if __name__ == "__main__":
    flags.DEFINE_string("input", None, "Annotation file: a JSON list or JSON lines.")
    flags.DEFINE_string("images", None, "Root that the records' `image` paths are relative to.")
    flags.DEFINE_string("output", None, "Output directory.")
    flags.DEFINE_integer("shards", 64, "Number of shards.")
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Processes.")
    flags.DEFINE_integer("max_side", 0, "Re-encode images larger than this (0: keep as is).")
    flags.DEFINE_string("verify", None, "Check the shards of this directory against its manifest.")
    app.run(main)
