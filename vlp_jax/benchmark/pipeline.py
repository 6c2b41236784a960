"""Input-pipeline throughput: `python -m vlp_jax.benchmark.pipeline [--pairs 2000] [--out F]`.

Exports `shapes` pairs as JPEG files at `--source_size` px with an annotation file, packs them
into ArrayRecord shards, then times this process's Grain pipeline (decode, random resized crop,
normalise, tokenise, batch: exactly the trainer's) for each format, model resolution
(`--image_sizes`) and number of reader threads (`--threads`; 0 = every core), in pairs/s per
process. Compare with the train step's consumption (`python -m vlp_jax.benchmark`): a loader
slower than the step starves it. Writes a JSON file and prints a table.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
from absl import app, flags

from vlp_jax import config_lib
from vlp_jax.benchmark.step import time_pipeline
from vlp_jax.data.tokenizer import load_tokenizer
from vlp_jax.tools import export_shapes, to_array_record


def prepare(directory: str, pairs: int, source_size: int) -> dict[str, dict[str, Any]]:
    """The same pairs as JSON + JPEG files and as ArrayRecord shards: source entries."""
    annotations = os.path.join(directory, "annotations.json")
    if not os.path.exists(annotations):
        export_shapes.export("train", pairs, directory, image_size=source_size)
    packed = os.path.join(directory, "packed")
    to_array_record.run(annotations, directory, packed, shards=4, workers=os.cpu_count() or 1)
    return {
        "json+jpeg": config_lib.annotation_source(annotations, directory),
        "array_record": config_lib.array_record_source(packed),
    }


def pipeline_config(entry: dict[str, Any], image_size: int, threads: int, batch_size: int):
    config = config_lib.base_config()
    config.batch_size = batch_size
    config.data.update(name="mixture", image_size=image_size, max_len=30, read_threads=threads)
    config.data.train_sources = {"bench": entry}
    config.data.eval_source = entry
    return config


def run(
    directory: str,
    *,
    pairs: int = 2000,
    source_size: int = 384,
    image_sizes: tuple[int, ...] = (32, 256),
    threads: tuple[int, ...] = (1, 2, 0),
    batch_size: int = 64,
    batches: int = 8,
) -> list[dict[str, Any]]:
    sources = prepare(directory, pairs, source_size)
    tokenizer = load_tokenizer("shapes")
    rows = []
    for name, entry in sources.items():
        for size in image_sizes:
            for n in threads:
                n = n or os.cpu_count() or 1
                config = pipeline_config(entry, size, n, batch_size)
                result = time_pipeline(config, tokenizer, batches)
                rows.append(
                    {
                        "format": name,
                        "image_size": size,
                        "threads": n,
                        "pairs_per_sec": result["pairs_per_sec_this_process"],
                    }
                )
                print(
                    f"{name:<13} {size:>4} px  {n} thread(s)  "
                    f"{rows[-1]['pairs_per_sec']:8.0f} pairs/s per process"
                )
    return rows


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    with tempfile.TemporaryDirectory() as scratch:
        rows = run(
            f.data_dir or scratch,
            pairs=f.pairs,
            source_size=f.source_size,
            image_sizes=tuple(int(s) for s in f.image_sizes.split(",")),
            threads=tuple(int(t) for t in f.threads.split(",")),
            batch_size=f.batch_size,
            batches=f.batches,
        )
    result = {
        "device_cores": os.cpu_count(),
        "processes": jax.process_count(),
        "source_size": f.source_size,
        "pairs": f.pairs,
        "rows": rows,
    }
    with open(f.out, "w") as out:
        json.dump(result, out, indent=1)
    print(f"written to {f.out}")


if __name__ == "__main__":
    flags.DEFINE_integer("pairs", 2000, "Pairs to export (two captions per image).")
    flags.DEFINE_integer("source_size", 384, "Side of the stored JPEGs.")
    flags.DEFINE_string("image_sizes", "32,256", "Model resolutions (the demo's, B/16's).")
    flags.DEFINE_string("threads", "1,2,0", "Reader threads per process; 0 = every core.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("batches", 8, "Timed batches per setting.")
    flags.DEFINE_string("data_dir", "", "Keep the exported data here (default: a temp dir).")
    flags.DEFINE_string("out", "pipeline_benchmark.json", "Result file.")
    app.run(main)
