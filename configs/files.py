"""python -m vlp_jax.main --workdir runs/files \
       --config configs/files.py:train=DATA/coco.json,images=DATA/coco,eval=DATA/coco_test.json
   python -m vlp_jax.main --workdir runs/files --config configs/files.py:train=DATA/packed,\
format=array_record,eval=DATA/coco_test.json,eval_images=DATA/coco

ALBEF (configs/albef.py's model and hyperparameters) on your own pairs: ALBEF-style annotation
files over an image folder (`format=annotations`, the default) or a directory packed by
`python -m vlp_jax.tools.to_array_record` (`format=array_record`, recommended at scale).
Evaluation is zero-shot retrieval on `eval` (an annotation file; every caption of each image is a
query, as in ALBEF's COCO/Flickr protocol). More sources, weights and TFDS datasets: set
`config.data.train_sources` in a config of your own (see README, "Real data"). The tokenizer is
`bert-base-uncased` (a hub name or a local path via `--config.data.tokenizer`); start from
pretrained towers with `--config.init.text=... --config.init.image=...`. What it reaches depends
on your data (ALBEF 4M: COCO-5K zero-shot TR@1 ≈ 68.7 with DeiT/BERT initialisation).

`size=tiny` runs the micro model on the `shapes` vocabulary (for tests and smoke runs on files
made by `python -m vlp_jax.tools.export_shapes`).
"""

import ml_collections

from vlp_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = config_lib.parse_arg(
        arg, train="", images="", eval="", eval_images="", format="annotations", size="base"
    )
    c = config_lib.base_config()
    if args.size == "base":
        c.batch_size = 512
        c.total_steps = 100_000
        config_lib.use_base_towers(c, "albef", image_size=256, max_len=30)
    elif args.size == "tiny":
        config_lib.use_tiny_run(c, "albef", steps=6)
    else:
        raise ValueError(f"configs/files.py: size={args.size!r}; accepted: ['base', 'tiny']")
    if args.format == "annotations":
        train = config_lib.annotation_source(args.train, args.images)
    elif args.format == "array_record":
        train = config_lib.array_record_source(args.train)
    else:
        raise ValueError(
            f"configs/files.py: format={args.format!r}; accepted: ['annotations', 'array_record']"
        )
    c.data.name = "mixture"
    c.data.train_sources = {"train": train}
    c.data.eval_source = config_lib.annotation_source(
        args.eval or args.train, args.eval_images or args.images
    )
    c.eval.num_examples = 25_000  # COCO-5K: 5,000 images × 5 captions
    if args.size == "tiny":
        c.eval.num_examples = 64
    return c
