"""Image–caption pairs from any prepared TFDS dataset, read with `tfds.data_source` (random access
over its ArrayRecord files; TensorFlow is not needed to read).

Feature keys are configurable: `image_key` (an Image feature; read undecoded, so bad images are
skipped like any other source's) and `caption_key` (a Text feature or a sequence of them; a "/"
walks into nested features, e.g. `captions/text` for `coco_captions`). Each example is one image,
so the image id is the example's index. `captions_per_example`: 0 indexes every caption of every
example (one pass over the split at start-up to count them; images are not decoded); k > 0
makes example e give pairs e*k .. e*k+k-1 (caption j mod its count) with no start-up pass, for
large training splits whose examples hold about k captions.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from vlp_jax.data.sources import check_index


def _lookup(example: dict[str, Any], key: str) -> Any:
    if key in example:
        return example[key]
    value: Any = example
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(
                f"TFDS feature {key!r} not found; the example has features {sorted(example)}"
            )
        value = value[part]
    return value


def _texts(value: Any) -> list[str]:
    values = [value] if isinstance(value, bytes | str | np.bytes_) else list(np.ravel(value))
    return [v.decode("utf-8") if isinstance(v, bytes | np.bytes_) else str(v) for v in values]


class TfdsPairs(grain.sources.RandomAccessDataSource):
    """A raw source (images stay encoded) over one split of a prepared TFDS dataset."""

    def __init__(
        self,
        name: str,
        split: str,
        *,
        data_dir: str | None = None,
        image_key: str = "image",
        caption_key: str = "captions/text",
        captions_per_example: int = 0,
    ) -> None:
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        self.image_key, self.caption_key = image_key, caption_key
        try:
            self._examples = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir or None,
                decoders={image_key: tfds.decode.SkipDecoding()},
            )
        except Exception as e:
            raise ValueError(
                f"cannot open TFDS dataset {name!r} split {split!r} in data_dir {data_dir!r} "
                f"({type(e).__name__}: {e}); prepare it first, in ArrayRecord format "
                "(`tfds build --file_format=array_record`)"
            ) from e
        self.num_images = len(self._examples)
        self.captions_per_example = int(captions_per_example)
        if self.captions_per_example > 0:
            self._pairs = None
        else:
            counts = [len(self._captions(e)) for e in range(self.num_images)]
            self._pairs = np.cumsum(counts)

    def _captions(self, example_index: int, example: dict[str, Any] | None = None) -> list[str]:
        example = self._examples[example_index] if example is None else example
        texts = _texts(_lookup(example, self.caption_key))
        if not texts:
            raise ValueError(f"{self.name}[{self.split}] example {example_index} has no caption")
        return texts

    def __len__(self) -> int:
        if self._pairs is None:
            return self.num_images * self.captions_per_example
        return int(self._pairs[-1]) if len(self._pairs) else 0

    def _locate(self, index: int) -> tuple[int, int]:
        if self._pairs is None:
            return divmod(index, self.captions_per_example)
        e = int(np.searchsorted(self._pairs, index, side="right"))
        return e, index - (int(self._pairs[e - 1]) if e else 0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(self, index)
        e, j = self._locate(i)
        example = self._examples[e]
        texts = self._captions(e, example)
        image = _lookup(example, self.image_key)
        return {
            "image_bytes": bytes(image) if image is not None else None,
            "image_ref": f"{self.name}[{self.split}][{e}]",
            "caption": texts[j % len(texts)],
            "image_id": e,
            "index": i,
        }

    def __repr__(self) -> str:
        return f"TfdsPairs({self.name!r}, {self.split!r}, pairs={len(self)})"
