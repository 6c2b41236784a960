"""Name-and-layout rules between Hugging Face PyTorch state dicts and our Flax parameter trees.

One table of `Rule`s per tower serves both directions, so import and export cannot drift apart.
Our paths are "/"-joined Flax names ("blocks_0/attn/query"), HF names are "."-joined module
names without the ".weight"/".bias" suffix. Arrays are float32 numpy throughout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

Flat = dict[tuple[str, ...], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF module <-> one of our modules.

    kind:
      dense      torch Linear [out, in] (+ bias)  <-> kernel [in, out], bias [out]
      dense_nb   the same without an HF bias: our bias is zero on import, dropped on export
      heads_in   q/k/v Linear [H*hd, D]           <-> kernel [D, H, hd], bias [H, hd]
      heads_out  attention output Linear [D, H*hd] <-> kernel [H, hd, D], bias [D]
      ln         LayerNorm weight, bias           <-> scale, bias
      embed      Embedding weight [N, D]          <-> embedding [N, D]
      patch      Conv2d [D, C, p, p] (+ bias)     <-> kernel [(p, p, C), D] (NHWC patches)
      param      a bare tensor (HF name is the full key) <-> a leaf, reshaped to ours/theirs
    """

    ours: str
    hf: str
    kind: str


def _linear_in(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


def _rule_to_ours(rule: Rule, state: Mapping[str, np.ndarray], heads: int) -> Flat:
    key = tuple(rule.ours.split("/"))
    w = state.get(f"{rule.hf}.weight")
    b = state.get(f"{rule.hf}.bias")
    if rule.kind == "param":
        return {key: state[rule.hf]}
    if rule.kind == "ln":
        return {key + ("scale",): w, key + ("bias",): b}
    if rule.kind == "embed":
        return {key + ("embedding",): w}
    if rule.kind in ("dense", "dense_nb"):
        bias = b if rule.kind == "dense" else np.zeros(w.shape[0], np.float32)
        return {key + ("kernel",): _linear_in(w), key + ("bias",): bias}
    if rule.kind == "heads_in":
        d = w.shape[1]
        return {
            key + ("kernel",): _linear_in(w).reshape(d, heads, -1),
            key + ("bias",): b.reshape(heads, -1),
        }
    if rule.kind == "heads_out":
        d = w.shape[0]
        return {key + ("kernel",): _linear_in(w).reshape(heads, -1, d), key + ("bias",): b}
    if rule.kind == "patch":
        d, c, ph, pw = w.shape
        kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(ph * pw * c, d))
        bias = b if b is not None else np.zeros(d, np.float32)
        return {key + ("kernel",): kernel, key + ("bias",): bias}
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def _rule_to_hf(rule: Rule, flat: Flat, hf_shapes: Mapping[str, tuple[int, ...]]) -> dict:
    key = tuple(rule.ours.split("/"))

    def leaf(name: str) -> np.ndarray:
        return flat[key + (name,)]

    if rule.kind == "param":
        return {rule.hf: flat[key].reshape(hf_shapes[rule.hf])}
    if rule.kind == "ln":
        return {f"{rule.hf}.weight": leaf("scale"), f"{rule.hf}.bias": leaf("bias")}
    if rule.kind == "embed":
        return {f"{rule.hf}.weight": leaf("embedding")}
    if rule.kind in ("heads_in", "heads_out"):
        kernel = leaf("kernel")
        d = kernel.shape[0] if rule.kind == "heads_in" else kernel.shape[-1]
        w = kernel.reshape(d, -1) if rule.kind == "heads_in" else kernel.reshape(-1, d)
        return {f"{rule.hf}.weight": w.T, f"{rule.hf}.bias": leaf("bias").reshape(-1)}
    if rule.kind in ("dense", "dense_nb"):
        out = {f"{rule.hf}.weight": leaf("kernel").T}
        if rule.kind == "dense":
            out[f"{rule.hf}.bias"] = leaf("bias")
        return out
    if rule.kind == "patch":
        d, c, ph, pw = hf_shapes[f"{rule.hf}.weight"]
        w = leaf("kernel").reshape(ph, pw, c, d).transpose(3, 2, 0, 1)
        out = {f"{rule.hf}.weight": w}
        if f"{rule.hf}.bias" in hf_shapes:
            out[f"{rule.hf}.bias"] = leaf("bias")
        return out
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def to_ours(rules: Iterable[Rule], state: Mapping[str, np.ndarray], heads: int) -> Flat:
    """HF state dict -> our flat {path tuple: array}, following `rules`."""
    flat: Flat = {}
    for rule in rules:
        try:
            flat.update(_rule_to_ours(rule, state, heads))
        except (KeyError, AttributeError) as e:
            raise KeyError(f"checkpoint has no {rule.hf!r} (for our {rule.ours})") from e
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def to_hf(
    rules: Iterable[Rule], flat: Flat, hf_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Our flat parameters -> an HF state dict; `hf_shapes` gives the target tensor shapes."""
    state: dict[str, np.ndarray] = {}
    for rule in rules:
        state.update(_rule_to_hf(rule, flat, hf_shapes))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def used_hf_keys(rules: Iterable[Rule], state: Mapping[str, Any]) -> set[str]:
    """The HF keys `rules` read (to report what a checkpoint holds that we drop)."""
    used = set()
    for rule in rules:
        names = [rule.hf] if rule.kind == "param" else [f"{rule.hf}.weight", f"{rule.hf}.bias"]
        used.update(n for n in names if n in state)
    return used


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dict -> {path tuple: leaf}."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """{path tuple: leaf} -> nested dict."""
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def prefixed(flat: Flat, *prefix: str) -> Flat:
    return {tuple(prefix) + k: v for k, v in flat.items()}


def subtree(flat: Mapping[tuple[str, ...], Any], *prefix: str) -> dict[tuple[str, ...], Any]:
    """The entries under `prefix`, with `prefix` removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in flat.items() if k[:n] == tuple(prefix)}
