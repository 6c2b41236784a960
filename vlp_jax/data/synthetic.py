"""Random batches with a config's shapes: for benchmarks and sharding tests, no data source."""

from __future__ import annotations

import ml_collections
import numpy as np


def synthetic_batch(
    config: ml_collections.ConfigDict,
    special_ids: tuple[int, ...],
    vocab_size: int,
    rng: np.random.Generator,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """A batch as the pipeline makes it: images, token ids with padding, mask and image ids.

    Texts have random lengths (at least 4 tokens) and never contain special tokens; pairs 2k and
    2k+1 share an image id, as when an image has two captions.
    """
    b = config.batch_size if batch_size is None else batch_size
    length, size = config.data.max_len, config.data.image_size
    ids = rng.integers(max(special_ids) + 1, vocab_size, (b, length))
    lengths = rng.integers(min(4, length), length + 1, b)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return {
        "image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
        "input_ids": np.where(mask > 0, ids, 0).astype(np.int32),
        "attention_mask": mask,
        "image_id": (np.arange(b) // 2).astype(np.int32),
        "flip_axis": rng.integers(0, 3, b).astype(np.int32),  # see pipeline.relation_flip_axis
    }
