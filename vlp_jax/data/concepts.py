"""Stored teacher soft labels over a concept vocabulary (DiHT's concept distillation).

Layout of a targets directory (written by `python -m vlp_jax.tools.concept_targets`):
    manifest.json              vocabulary, teacher, prompt, shard list (file, count, sha256)
    concepts-00000.npz ...     `image_id` [n] int64 and `probs` [n, C] float16 (rows sum to 1)
Targets are keyed by image id, so every caption of an image shares them. The whole table is
held in memory (N × C × 2 bytes: 1M images × 1,000 concepts is 2 GB).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import grain
import numpy as np

MANIFEST = "manifest.json"


def shard_name(index: int) -> str:
    return f"concepts-{index:05d}.npz"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(directory: str, index: int, image_ids: np.ndarray, probs: np.ndarray) -> dict:
    """Writes one shard atomically (a crash never leaves a half shard under the final name)."""
    path = os.path.join(directory, shard_name(index))
    tmp = path + ".tmp.npz"
    np.savez(tmp, image_id=np.asarray(image_ids, np.int64), probs=np.asarray(probs, np.float16))
    os.replace(tmp, path)
    return {"file": shard_name(index), "count": int(len(image_ids)), "sha256": sha256(path)}


class ConceptTargets:
    """Every stored target row, looked up by image id."""

    def __init__(self, directory: str, *, verify: bool = False):
        path = os.path.join(directory, MANIFEST)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: config.data.concept_targets must name a directory written "
                "by `python -m vlp_jax.tools.concept_targets`"
            )
        with open(path) as f:
            self.manifest: dict[str, Any] = json.load(f)
        self.vocabulary: list[str] = self.manifest["vocabulary"]
        ids, probs = [], []
        for shard in self.manifest["shards"]:
            shard_path = os.path.join(directory, shard["file"])
            if verify and sha256(shard_path) != shard["sha256"]:
                raise ValueError(f"{shard_path}: checksum differs from {path}")
            with np.load(shard_path) as data:
                ids.append(data["image_id"])
                probs.append(data["probs"])
        ids_all = np.concatenate(ids) if ids else np.zeros((0,), np.int64)
        order = np.argsort(ids_all, kind="stable")
        self.image_ids = ids_all[order]
        self.probs = (np.concatenate(probs) if probs else np.zeros((0, 0), np.float16))[order]

    @property
    def num_concepts(self) -> int:
        return len(self.vocabulary)

    def lookup(self, image_ids: np.ndarray) -> np.ndarray:
        """float32 [B, C] targets of these images (renormalised after the float16 round trip)."""
        image_ids = np.asarray(image_ids, np.int64)
        if not len(self.image_ids):
            raise KeyError("the concept targets directory holds no rows")
        pos = np.minimum(np.searchsorted(self.image_ids, image_ids), len(self.image_ids) - 1)
        missing = self.image_ids[pos] != image_ids
        if np.any(missing):
            raise KeyError(
                f"no concept targets for image ids {image_ids[missing][:5].tolist()}: the targets "
                "were extracted for other data (rerun tools.concept_targets for this config)"
            )
        rows = self.probs[pos].astype(np.float32)
        return rows / rows.sum(-1, keepdims=True)


class AttachConceptTargets(grain.transforms.Map):
    """Adds `concept_targets` [B, C] to a batch, by its `image_id`s."""

    def __init__(self, targets: ConceptTargets):
        self.targets = targets

    def map(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, "concept_targets": self.targets.lookup(batch["image_id"])}
