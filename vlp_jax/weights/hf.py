"""Loading and saving through transformers' PyTorch classes.

Loading goes through `from_pretrained` (local directory or hub name), so every file layout and
legacy key spelling transformers reads is read here too; the in-memory `state_dict()` names are
the ones our rule tables use. Saving builds the same class, loads our tensors strictly and calls
`save_pretrained` (safetensors + config.json).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HFCheckpoint:
    """A checkpoint read through a transformers class: its config and float32 tensors."""

    path: str
    config: Any  # transformers.PretrainedConfig
    state: dict[str, np.ndarray]
    missing: list[str]  # keys of the class the checkpoint did not hold (randomly initialised)


def read_config(path: str) -> Any:
    """The checkpoint's transformers config (AutoConfig)."""
    import transformers

    return transformers.AutoConfig.from_pretrained(path)


def load(path: str, cls_name: str, **kwargs: Any) -> HFCheckpoint:
    """`transformers.<cls_name>.from_pretrained(path)` as float32 numpy tensors."""
    import torch
    import transformers

    cls = getattr(transformers, cls_name)
    model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True, **kwargs)
    state = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    return HFCheckpoint(path, model.config, state, sorted(info.get("missing_keys", [])))


def save(cls_name: str, config: Any, state: dict[str, np.ndarray], output: str, **kwargs) -> None:
    """Builds `transformers.<cls_name>(config)`, loads `state` strictly, saves to `output`."""
    import torch
    import transformers

    model = getattr(transformers, cls_name)(config, **kwargs)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"export to {cls_name}: missing tensors {missing}, unexpected tensors {unexpected}"
        )
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True)
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    log.info("saved %s (%d tensors) to %s", cls_name, len(state), output)


def hf_shapes(cls_name: str, config: Any, **kwargs: Any) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of `transformers.<cls_name>(config)`, without allocating its weights."""
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, cls_name)(config, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def mismatch(key: str, ours: Any, what: str, path: str, field: str, theirs: Any) -> ValueError:
    """The error for a model config that does not match a checkpoint."""
    return ValueError(
        f"config.{key}={ours!r} but {what} at {path} has {field} {theirs!r}; "
        f"`weights.model_config_from_hf` builds a matching config.model"
    )
