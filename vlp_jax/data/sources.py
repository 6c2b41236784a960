"""Random-access sources of real image–caption pairs, and decoding that survives bad images.

A *raw* source returns pairs with the image still encoded: `{"image_bytes": bytes | None,
"image_ref": str (a path or key, for messages), "caption": str, "image_id": int, "index": int}`.
Formats: ALBEF-style annotation files over an image folder (`AnnotationPairs`, here), ArrayRecord
shards (`vlp_jax.data.array_record`) and prepared TFDS datasets (`vlp_jax.data.tfds_source`).
`Shifted` and `Concatenated` give several sources one index space and disjoint image ids.

`DecodedPairs` decodes images for training. A missing, truncated or undecodable image is replaced
by the next decodable pair in source order, so every batch stays full and each element is still a
pure function of its index (the pipeline's state stays one integer); the element's `skipped` field
counts the bad images passed over, which the trainer logs as `data/skipped`.
"""

from __future__ import annotations

import io
import os
import re
import threading
from typing import Any

import grain
import numpy as np
from absl import logging
from PIL import Image

from vlp_jax.data import annotations

_STRIPPED = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s+")


def check_index(source, index: int) -> int:
    """`index` as an int, or IndexError (which also ends iteration over a source)."""
    i = int(index)
    if not 0 <= i < len(source):
        raise IndexError(f"index {index} out of range for {source!r} of {len(source)} pairs")
    return i


def clean_caption(caption: str, max_words: int = 30) -> str:
    """ALBEF's `pre_caption`: lower case; strip ,.'!?"()*#:;~; '-' and '/' become spaces;
    `<person>` becomes `person`; whitespace collapsed; at most `max_words` words."""
    text = _STRIPPED.sub("", caption.lower()).replace("-", " ").replace("/", " ")
    text = text.replace("<person>", "person")
    words = _SPACES.sub(" ", text).strip().split(" ")
    return " ".join(words[:max_words]) if max_words > 0 else " ".join(words)


def decode_image(data: bytes, max_side: int = 0) -> np.ndarray:
    """Encoded bytes → RGB uint8 [H, W, 3]; raises on anything PIL cannot fully decode.

    With `max_side`, JPEGs decode at the smallest power-of-two reduction still at least that
    large (libjpeg's draft mode), which is several times faster for big photos."""
    with Image.open(io.BytesIO(data)) as image:
        if max_side and image.format == "JPEG":
            image.draft("RGB", (max_side, max_side))
        return np.asarray(image.convert("RGB"))


class AnnotationPairs(grain.sources.RandomAccessDataSource):
    """One pair per caption of an ALBEF-style annotation file; images read from `images`.

    Records: `image` (path relative to `images`), `caption` (string or list), optional
    `image_id` (any JSON scalar; pairs sharing it share an image). Image ids are renumbered
    0..num_images-1 in order of first appearance (by `image_id`, else by path).
    `on_bad_record="skip"` drops malformed records (counted in `bad_records`) instead of
    raising `AnnotationError` with the file and line; a file that is not valid JSON as a whole
    (a broken JSON list) always raises.
    """

    def __init__(
        self, annotation_file: str, image_root: str, *, on_bad_record: str = "raise"
    ) -> None:
        if on_bad_record not in ("raise", "skip"):
            raise ValueError(f"on_bad_record={on_bad_record!r}; use 'raise' or 'skip'")
        if not os.path.isfile(annotation_file):
            raise FileNotFoundError(f"annotation file {annotation_file!r} not found")
        if not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"image folder {image_root!r} (for {annotation_file}) not found"
            )
        self.annotation_file = annotation_file
        self.image_root = image_root
        paths: dict[str, int] = {}
        ids: dict[Any, int] = {}
        pair_path: list[int] = []
        pair_image: list[int] = []
        self._captions: list[str] = []
        self.bad_records = 0
        for line, record in annotations.iter_records(annotation_file, on_error=on_bad_record):
            if record is None:
                self.bad_records += 1
                if self.bad_records <= 10:
                    logging.warning("skipped the malformed record at %s:%d", annotation_file, line)
                continue
            path = paths.setdefault(record["image"], len(paths))
            key = record.get("image_id", ("path", record["image"]))
            if isinstance(key, list | dict):
                key = repr(key)
            image = ids.setdefault(key, len(ids))
            for caption in annotations.captions_of(record):
                pair_path.append(path)
                pair_image.append(image)
                self._captions.append(caption)
        if self.bad_records:
            logging.warning(
                "%s: skipped %d malformed records (data.on_bad_record='skip')",
                annotation_file,
                self.bad_records,
            )
        if not self._captions:
            raise ValueError(f"{annotation_file} holds no usable image-caption pair")
        self._paths = list(paths)
        self._pair_path = np.asarray(pair_path, np.int64)
        self._pair_image = np.asarray(pair_image, np.int64)
        self.num_images = len(ids)

    def __len__(self) -> int:
        return len(self._captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = check_index(self, index)
        path = os.path.join(self.image_root, self._paths[self._pair_path[i]])
        try:
            with open(path, "rb") as f:
                data: bytes | None = f.read()
        except OSError:
            data = None  # DecodedPairs counts it with the other bad images
        return {
            "image_bytes": data,
            "image_ref": path,
            "caption": self._captions[i],
            "image_id": int(self._pair_image[i]),
            "index": i,
        }

    def __repr__(self) -> str:
        return f"AnnotationPairs({self.annotation_file!r}, {self.image_root!r}, pairs={len(self)})"


class Shifted(grain.sources.RandomAccessDataSource):
    """A source seen with its indices and image ids moved up, to share one space with others."""

    def __init__(self, source, index_offset: int, image_id_offset: int) -> None:
        self.source = source
        self.index_offset = index_offset
        self.image_id_offset = image_id_offset
        self.num_images = source.num_images

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.source[index])
        item["index"] = int(item["index"]) + self.index_offset
        item["image_id"] = int(item["image_id"]) + self.image_id_offset
        return item


def shifted_parts(parts: list) -> list[Shifted]:
    """`parts` moved into consecutive index ranges with disjoint image ids."""
    out, index, image = [], 0, 0
    for part in parts:
        out.append(Shifted(part, index, image))
        index += len(part)
        image += part.num_images
    return out


class Concatenated(grain.sources.RandomAccessDataSource):
    """Several sources as one: indices [0, len(a)) are `a`'s, then `b`'s, and so on."""

    def __init__(self, parts: list) -> None:
        self.parts = shifted_parts(parts)
        self._ends = np.cumsum([len(p) for p in self.parts])
        self.num_images = sum(p.num_images for p in self.parts)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        k = int(np.searchsorted(self._ends, int(index), side="right"))
        start = int(self._ends[k - 1]) if k else 0
        return self.parts[k][int(index) - start]


class DecodedPairs(grain.sources.RandomAccessDataSource):
    """Raw pairs → `{"image": uint8 [H, W, 3], "caption", "image_id", "index", "skipped"}`.

    A pair whose image is missing or fails to decode is replaced by the next pair in source
    order whose image decodes; `skipped` counts how many were passed over. Each bad image is
    logged once per process. More than `max_consecutive` bad images in a row is an error (the
    image folder is probably wrong).
    """

    def __init__(
        self,
        raw,
        *,
        clean_captions: bool = True,
        max_words: int = 30,
        decode_max_side: int = 0,
        max_consecutive: int = 64,
    ) -> None:
        self.raw = raw
        self.clean_captions = clean_captions
        self.max_words = max_words
        self.decode_max_side = decode_max_side
        self.max_consecutive = max_consecutive
        self.num_images = raw.num_images
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.raw)

    def decode(self, item: dict[str, Any]) -> np.ndarray | None:
        """The item's image, or None (logged once) when it is missing or undecodable."""
        error = "missing or unreadable file"
        if item["image_bytes"] is not None:
            try:
                return decode_image(item["image_bytes"], self.decode_max_side)
            except Exception as e:  # PIL raises many types for corrupt files
                error = f"{type(e).__name__}: {e}"
        with self._lock:
            first = item["image_ref"] not in self._reported
            self._reported.add(item["image_ref"])
        if first:
            logging.warning("skipping image %s: %s", item["image_ref"], error)
        return None

    def caption(self, text: str) -> str:
        return clean_caption(text, self.max_words) if self.clean_captions else text

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.raw)
        for skipped in range(min(self.max_consecutive, n)):
            item = self.raw[(int(index) + skipped) % n]
            image = self.decode(item)
            if image is not None:
                return {
                    "image": image,
                    "caption": self.caption(item["caption"]),
                    "image_id": np.int64(item["image_id"]),
                    "index": np.int64(item["index"]),
                    "skipped": np.int32(skipped),
                }
        raise RuntimeError(
            f"{min(self.max_consecutive, n)} images in a row from index {index} failed to decode "
            f"(last: {item['image_ref']}); is the image folder right?"
        )
