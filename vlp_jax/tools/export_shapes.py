"""Writes `shapes` pairs as an ALBEF-style dataset: JPEG files plus a JSON annotation list.

    python -m vlp_jax.tools.export_shapes --split train --num_examples 1000 --output DIR \
        [--image_size 256]

gives `DIR/images/<image_id>.jpg` and `DIR/annotations.json` (records with `image`, `caption`
(all captions of the image) and `image_id`): a small real-format dataset for the file-based
loaders, the CAT filter and their benchmarks, made without any download.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from PIL import Image

from vlp_jax.data import shapes


def export(split: str, num_examples: int, output: str, image_size: int = 256) -> str:
    """Exports the split's first `num_examples` pairs; returns the annotation file's path."""
    source = shapes.ShapesSource(split, num_examples=num_examples, image_size=image_size)
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    records: dict[int, dict] = {}
    for i in range(len(source)):
        example = source[i]
        image_id = int(example["image_id"])
        if image_id not in records:
            name = f"images/{image_id:08d}.jpg"
            Image.fromarray(example["image"]).save(os.path.join(output, name), quality=95)
            records[image_id] = {"image": name, "caption": [], "image_id": image_id}
        records[image_id]["caption"].append(example["caption"])
    path = os.path.join(output, "annotations.json")
    with open(path, "w") as f:
        json.dump(list(records.values()), f, indent=0)
    return path


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    path = export(f.split, f.num_examples, f.output, f.image_size)
    print(f"wrote {path}")


if __name__ == "__main__":
    flags.DEFINE_enum("split", "train", list(shapes.SPLITS), "Which split.")
    flags.DEFINE_integer("num_examples", 1000, "Pairs to export.")
    flags.DEFINE_string("output", None, "Output directory.")
    flags.DEFINE_integer("image_size", 256, "Rendered image side in pixels.")
    flags.mark_flags_as_required(["output"])
    app.run(main)
