"""Grain input pipeline: source → seeded shuffle → per-process shard → augment → batch → tokenise.

The dataset is a `grain.MapDataset` up to the batch, so every element (a local batch) is a pure
function of (seed, step, process): the iterator state is one integer, saved with each checkpoint.
Process p of P reads blocks p, p+P, ... of (global batch / P) consecutive examples of the
shuffled stream, so the P local batches of one step, in process order, are the global batch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import grain
import ml_collections
import numpy as np
from PIL import Image

from vlp_jax.data import concepts, shapes, sources
from vlp_jax.data.tokenizer import Tokenizer

# Per-channel (mean, std) of `data.normalization`: CLIP's (ALBEF's, the default), ImageNet's
# (DeiT, timm) and 0.5 / 0.5 (Google's ViT checkpoints); match it to the pretrained image tower.
NORMALIZATIONS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def image_stats(kind: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) in 0..255 pixel units for `data.normalization`."""
    if kind not in NORMALIZATIONS:
        raise ValueError(
            f"config.data.normalization={kind!r} is not accepted; use one of {list(NORMALIZATIONS)}"
        )
    mean, std = NORMALIZATIONS[kind]
    return np.asarray(mean, np.float32) * 255.0, np.asarray(std, np.float32) * 255.0


MEAN, STD = image_stats("clip")


def raw_source(entry: Mapping[str, Any], data: ml_collections.ConfigDict):
    """The raw (still encoded) pairs of one `data.train_sources` / `data.eval_source` entry."""
    fmt = entry["format"]
    if fmt == "annotations":
        return sources.AnnotationPairs(
            entry["annotations"], entry["images"], on_bad_record=data.on_bad_record
        )
    if fmt == "array_record":
        from vlp_jax.data.array_record import ArrayRecordPairs

        return ArrayRecordPairs(entry["path"])
    if fmt == "tfds":
        from vlp_jax.data.tfds_source import TfdsPairs

        return TfdsPairs(
            entry["name"],
            entry["split"],
            data_dir=entry.get("data_dir") or None,
            image_key=entry.get("image_key", "image"),
            caption_key=entry.get("caption_key", "captions/text"),
            captions_per_example=int(entry.get("captions_per_example", 0)),
        )
    raise ValueError(f"source format {fmt!r} is not one of ['annotations', 'array_record', 'tfds']")


def decoded(raw, data: ml_collections.ConfigDict) -> sources.DecodedPairs:
    return sources.DecodedPairs(
        raw,
        clean_captions=bool(data.clean_captions),
        max_words=int(data.max_words),
        decode_max_side=int(data.decode_max_side),
    )


def train_parts(data: ml_collections.ConfigDict) -> list[tuple[Any, float]]:
    """(decoded source, weight) per `data.train_sources` entry (by name), in one index space."""
    names = sorted(data.train_sources)
    entries = [data.train_sources[n] for n in names]
    parts = sources.shifted_parts([decoded(raw_source(e, data), data) for e in entries])
    return [(p, float(e.get("weight", 1.0))) for p, e in zip(parts, entries)]


def make_source(data: ml_collections.ConfigDict, split: str, num_examples: int | None = None):
    """The random-access source named by `config.data.name` for one split (for `mixture`: the
    decoded train sources concatenated, or the raw eval source)."""
    if data.name == "shapes":
        return shapes.ShapesSource(
            split, num_examples=num_examples, image_size=int(data.source_image_size)
        )
    if data.name == "mixture":
        if split == "train":
            parts = [p for p, _ in train_parts(data)]
            return parts[0] if len(parts) == 1 else sources.Concatenated(parts)
        return raw_source(data.eval_source, data)
    raise ValueError(
        f"config.data.name={data.name!r} is not accepted; use one of ['shapes', 'mixture']"
    )


def load_concept_targets(config: ml_collections.ConfigDict) -> concepts.ConceptTargets:
    """`config.data.concept_targets`, checked against `config.model.num_concepts`."""
    targets = concepts.ConceptTargets(config.data.concept_targets)
    if targets.num_concepts != config.model.num_concepts:
        raise ValueError(
            f"config.model.num_concepts={config.model.num_concepts} but "
            f"{config.data.concept_targets} holds {targets.num_concepts} concepts"
        )
    return targets


def normalize(image: np.ndarray, kind: str = "clip") -> np.ndarray:
    mean, std = image_stats(kind)
    return (image.astype(np.float32) - mean) / std


def resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception-style crop of a random area fraction and aspect ratio, resized to `size`."""
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw = int(round(np.sqrt(area * aspect)))
        ch = int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            crop = image[top : top + ch, left : left + cw]
            return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
    return resize(image, size)


_HORIZONTAL_WORDS = re.compile(r"\b(left|right)\b")
_VERTICAL_WORDS = re.compile(r"\b(above|below)\b")


def relation_flip_axis(caption: str) -> int:
    """Which mirror image makes `caption` false: 1 horizontal (it says left/right), 2 vertical
    (above/below), 0 none. Used for ITM's relation negatives (`itm.flip_negatives`)."""
    if _HORIZONTAL_WORDS.search(caption):
        return 1
    if _VERTICAL_WORDS.search(caption):
        return 2
    return 0


class TrainAugment(grain.transforms.RandomMap):
    """Random resized crop and a horizontal flip that also swaps "left"/"right" in the caption."""

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float],
        hflip_prob: float,
        normalization: str = "clip",
    ):
        self.normalization = normalization
        self.image_size = image_size
        self.crop_scale = tuple(crop_scale)
        self.hflip_prob = hflip_prob

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = random_resized_crop(element["image"], rng, self.image_size, self.crop_scale)
        caption = element["caption"]
        if rng.uniform() < self.hflip_prob:
            image, caption = shapes.hflip(image, caption)[:2]
        return {
            "image": normalize(image, self.normalization),
            "caption": caption,
            "image_id": np.int32(element["image_id"]),
            "index": np.int32(element["index"]),
            "flip_axis": np.int32(relation_flip_axis(caption)),
            "skipped": np.int32(element.get("skipped", 0)),
        }


class TokenizeBatch(grain.transforms.Map):
    """Turns the batch's caption strings into fixed-length ids and masks (static shapes for jit)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = max_len

    def map(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        ids, mask = self.tokenizer.encode(list(batch.pop("caption")), self.max_len)
        batch["input_ids"], batch["attention_mask"] = ids, mask
        return batch


class Reordered:
    """A random-access source read in a given order (a GRIT epoch's grouped permutation)."""

    def __init__(self, source, order: np.ndarray):
        self.source = source
        self.order = np.asarray(order, np.int64)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[int(self.order[i])]


def train_dataset(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int = 0,
    process_count: int = 1,
    order: np.ndarray | None = None,
    epoch: int = 0,
) -> grain.IterDataset:
    """Infinite stream of this process's local batches (global batch / process count).

    With `order` (source indices, e.g. GRIT's grouped permutation for `epoch`), one pass over the
    examples in exactly that order instead, augmented with a seed of their own for the epoch.
    """
    if config.batch_size % process_count:
        raise ValueError(
            f"config.batch_size={config.batch_size} must divide by the {process_count} processes"
        )
    data = config.data
    local = config.batch_size // process_count
    # Augmentation is seeded by the example's global position and process p takes blocks
    # p, p+P, ... of `local` consecutive examples, so global batch k is the examples
    # [k*G, (k+1)*G) in order, whatever the number of processes.
    if order is None and data.name == "mixture" and len(data.train_sources) > 1:
        parts = train_parts(data)
        ds = grain.MapDataset.mix(
            [
                grain.MapDataset.source(p).shuffle(seed=config.seed + k).repeat(None)
                for k, (p, _) in enumerate(parts)
            ],
            [w for _, w in parts],
        )
    elif order is None:
        source = make_source(data, "train", int(data.train_examples))
        ds = grain.MapDataset.source(source).shuffle(seed=config.seed).repeat(None)
    else:
        source = make_source(data, "train", int(data.train_examples))
        ds = grain.MapDataset.source(Reordered(source, order))
    ds = (
        ds.random_map(
            TrainAugment(
                data.image_size, data.crop_scale, data.hflip_prob, data.get("normalization", "clip")
            ),
            seed=config.seed + 1_000_003 * epoch,
        )
        .batch(local, drop_remainder=True)[process_index::process_count]
        .map(TokenizeBatch(tokenizer, int(data.max_len)))
    )
    if data.get("concept_targets"):
        ds = ds.map(concepts.AttachConceptTargets(load_concept_targets(config)))
    read = grain.ReadOptions(
        num_threads=int(data.read_threads), prefetch_buffer_size=int(data.prefetch_batches)
    )
    return ds.to_iter_dataset(read)


def eval_pairs(config: ml_collections.ConfigDict, split: str) -> tuple[list[dict], int]:
    """The evaluation pairs (image decoded, caption cleaned) and how many were left out because
    their image is missing or corrupt (evaluation never substitutes another image)."""
    data = config.data
    source = make_source(data, split, int(config.eval.num_examples))
    n = min(len(source), int(config.eval.num_examples))
    if data.name == "shapes":
        return [source[i] for i in range(n)], 0
    decoder = decoded(source, data)
    items, bad = [], 0
    for i in range(n):
        raw = source[i]
        image = decoder.decode(raw)
        if image is None:
            bad += 1
            continue
        items.append({**raw, "image": image, "caption": decoder.caption(raw["caption"])})
    if not items:
        raise ValueError(f"no evaluation pair of {data.eval_source} has a readable image")
    return items, bad


def eval_arrays(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, split: str | None = None
) -> dict[str, np.ndarray]:
    """The evaluation split as numpy arrays: each distinct image once (resized, uint8; normalised
    on device), every caption tokenised with `text_image` (its image's row), image ids, and
    where the source has them (`shapes`), the captions' hard-negative twins."""
    items, bad = eval_pairs(config, split or config.eval.split)
    ids = np.asarray([x["image_id"] for x in items], np.int64)
    _, first, text_image = np.unique(ids, return_index=True, return_inverse=True)
    size = int(config.data.image_size)
    max_len = int(config.data.max_len)
    input_ids, mask = tokenizer.encode([x["caption"] for x in items], max_len)
    out = {
        "image": np.stack([resize(items[i]["image"], size) for i in first]),
        "text_image": text_image.astype(np.int64),
        "input_ids": input_ids,
        "attention_mask": mask,
        "image_id": ids,
        "skipped_images": np.int64(bad),
    }
    if "hard_negative" in items[0]:
        out["neg_input_ids"], out["neg_attention_mask"] = tokenizer.encode(
            [x["hard_negative"] for x in items], max_len
        )
        out["hard_negative_kind"] = np.asarray([x["hard_negative_kind"] for x in items])
    return out
