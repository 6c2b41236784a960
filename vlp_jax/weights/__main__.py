"""Export a run's tower as a Hugging Face checkpoint:

    python -m vlp_jax.weights export --config configs/albef.py --workdir runs/albef \
        --output exported/bert --tower text

`--tower text` writes BertForMaskedLM (ALBEF: text + fusion self-attention layers and the MLM
head) or BertModel, `image` ViTModel, `clip` CLIPModel (model.text.arch='clip'), each as
model.safetensors + config.json, from the latest checkpoint in `{workdir}/checkpoints`.
"""

from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from vlp_jax import config_lib, evaluate, sharding, weights
from vlp_jax.models import build_model


def main(argv) -> None:
    if len(argv) != 2 or argv[1] != "export":
        raise app.UsageError("usage: python -m vlp_jax.weights export --config ... --workdir ...")
    f = flags.FLAGS
    config = f.config
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh)
    step, params = evaluate.restore_params(config, f.workdir, mesh, build_model(config.model))
    eos = None
    if f.tower == "clip":  # HF pools CLIP text at the tokenizer's end token
        from vlp_jax.data.tokenizer import load_tokenizer

        eos = load_tokenizer(config.data.tokenizer).sep_id
    cls_name = weights.export_hf(jax.device_get(params), config.model, f.output, f.tower, eos)
    print(f"step {step} of {f.workdir}: {f.tower} tower saved to {f.output} ({cls_name})")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "A training run's directory (its latest checkpoint).")
    flags.DEFINE_string("output", None, "Directory for model.safetensors and config.json.")
    flags.DEFINE_enum("tower", "text", list(weights.TOWERS), "Which tower to export.")
    flags.mark_flags_as_required(["config", "workdir", "output"])
    app.run(main)
