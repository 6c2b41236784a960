"""Fast checks of the ViT/BERT towers, ALBEF, DualEncoder and build_model (micro sizes)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlp_jax.models import (
    ALBEF,
    PARAM_AXES,
    VIT_VARIANTS,
    BertTextEncoder,
    DualEncoder,
    ViT,
    build_model,
    interpolate_pos_embed,
    scale_initial_weights,
)

B, L, VOCAB, EMBED = 2, 8, 50, 16
TXT_WIDTH = 32  # = image width: shared shapes keep eager compilation (the test cost) low
N_TOKENS = 1 + (32 // 8) ** 2
N_VALID = 5  # tokens [0, 5) are real, the rest padding


def model_config(kind: str = "albef", dtype: str = "float32", **image) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.kind = kind
    cfg.embed_dim = EMBED
    cfg.temperature_init = 0.07
    cfg.dtype = dtype
    cfg.image = dict(
        image_size=32,
        patch_size=8,
        width=32,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        variant="",
        remat=False,
        dropout=0.0,
    )
    cfg.image.update(image)
    cfg.text = dict(
        vocab_size=VOCAB,
        width=TXT_WIDTH,
        num_heads=2,
        mlp_dim=128,
        text_layers=2,
        fusion_layers=2,
        max_len=16,
        dropout=0.1,
        remat=False,
    )
    return cfg


def make_batch():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(B, 32, 32, 3)), jnp.float32)
    ids = jnp.asarray(rng.integers(1, VOCAB, size=(B, L)), jnp.int32)
    mask = jnp.asarray(np.arange(L)[None, :] < N_VALID, jnp.int32).repeat(B, axis=0)
    ids = jnp.where(mask > 0, ids, 0)
    return images, ids, mask


def init(model: nn.Module):
    images, ids, mask = make_batch()
    return model.init(jax.random.key(0), images, ids, mask)


@pytest.fixture(scope="module")
def batch():
    return make_batch()


@pytest.fixture(scope="module")
def albef():
    model = build_model(model_config("albef"))
    boxed = init(model)
    return model, boxed, nn.unbox(boxed)


@pytest.fixture(scope="module")
def dual():
    model = build_model(model_config("dual_encoder"))
    boxed = init(model)
    return model, boxed, nn.unbox(boxed)


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


# ---------------------------------------------------------------- parameter trees


@pytest.mark.parametrize(
    "name, keys",
    [
        (
            "albef",
            {"img", "txt", "fusion", "img_proj", "txt_proj", "itm_head", "mlm_head", "temperature"},
        ),
        ("dual", {"img", "txt", "img_proj", "txt_proj", "temperature"}),
    ],
)
def test_param_tree_is_boxed_with_logical_names(request, name, keys):
    _, boxed, params = request.getfixturevalue(name)
    assert set(boxed["params"]) == keys
    leaves = jax.tree.leaves(boxed, is_leaf=_is_box)
    assert leaves and all(_is_box(x) for x in leaves)

    specs = nn.get_partition_spec(boxed)
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_params = jax.tree.leaves(params)
    assert len(flat_specs) == len(flat_params)
    for spec, value in zip(flat_specs, flat_params, strict=True):
        assert isinstance(spec, jax.sharding.PartitionSpec)
        assert len(spec) == value.ndim
        assert set(spec) <= PARAM_AXES | {None}
        assert value.dtype == jnp.float32

    # HF-mirroring names the checkpoint converters rely on.
    p = params["params"]
    assert p["img"]["pos_embed"].shape == (1, N_TOKENS, 32)
    assert p["img"]["blocks_0"]["attn"]["query"]["kernel"].shape == (32, 2, 16)
    assert p["txt"]["embeddings"]["word_embeddings"]["embedding"].shape == (VOCAB, TXT_WIDTH)
    assert p["txt"]["layers_0"]["attention"]["out"]["kernel"].shape == (2, 16, TXT_WIDTH)


def test_fusion_cross_attention_reads_image_width(batch):
    # Abstract evaluation only: checks shapes without compiling anything.
    cfg = model_config("albef")
    cfg.text.width, cfg.text.mlp_dim = 24, 48
    model = build_model(cfg)
    boxed = jax.eval_shape(model.init, jax.random.key(0), *batch)
    p = nn.unbox(boxed)["params"]
    cross = p["fusion"]["layers_0"]["crossattention"]
    assert cross["query"]["kernel"].shape == (24, 2, 12)
    assert cross["key"]["kernel"].shape == cross["value"]["kernel"].shape == (32, 2, 12)
    assert cross["out"]["kernel"].shape == (2, 12, 24)
    assert "crossattention" not in p["txt"]["layers_0"]
    out = jax.eval_shape(model.apply, nn.unbox(boxed), *batch)
    assert out["fused_hidden"].shape == (B, L, 24)
    assert out["mlm_logits"].shape == (B, L, VOCAB)


# ---------------------------------------------------------------- ALBEF methods


def test_albef_method_shapes(albef, batch):
    model, _, params = albef
    images, ids, mask = batch
    img = model.apply(params, images, method=ALBEF.encode_image)
    txt = model.apply(params, ids, mask, method=ALBEF.encode_text)
    fused = model.apply(params, txt, mask, img, method=ALBEF.fuse)
    assert img.shape == (B, N_TOKENS, 32)
    assert txt.shape == fused.shape == (B, L, TXT_WIDTH)

    zi = model.apply(params, img, method=ALBEF.embed_image)
    zt = model.apply(params, txt, method=ALBEF.embed_text)
    itm = model.apply(params, fused, method=ALBEF.itm_logits)
    mlm = model.apply(params, ids, mask, img, method=ALBEF.mlm_logits)
    assert zi.shape == zt.shape == (B, EMBED)
    assert itm.shape == (B, 2) and itm.dtype == jnp.float32
    assert mlm.shape == (B, L, VOCAB) and mlm.dtype == jnp.float32

    out = model.apply(params, images, ids, mask)
    np.testing.assert_allclose(out["mlm_logits"], mlm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["image_embed"], zi, rtol=1e-5, atol=1e-6)


def test_embeddings_are_l2_normalised(albef, batch):
    model, _, params = albef
    out = model.apply(params, *batch)
    for key in ("image_embed", "text_embed"):
        assert out[key].dtype == jnp.float32
        np.testing.assert_allclose(jnp.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)


def test_temperature_is_clamped(albef):
    model, _, params = albef
    assert float(model.apply(params, method=ALBEF.temperature)) == pytest.approx(0.07)
    for raw, expected in [(5.0, 0.5), (-1.0, 0.001)]:
        p = {"params": {**params["params"], "temperature": jnp.float32(raw)}}
        assert float(model.apply(p, method=ALBEF.temperature)) == pytest.approx(expected)

    # Clamped value, straight-through gradient (like ALBEF's in-place clamp).
    def temp(raw):
        p = {"params": {**params["params"], "temperature": raw}}
        return model.apply(p, method=ALBEF.temperature)

    assert float(jax.grad(temp)(jnp.float32(5.0))) == pytest.approx(1.0)


def test_text_padding_is_masked(albef, batch):
    model, _, params = albef
    images, ids, mask = batch
    ids2 = ids.at[:, N_VALID:].set(7)  # change only padded ids
    img = model.apply(params, images, method=ALBEF.encode_image)
    t1 = model.apply(params, ids, mask, method=ALBEF.encode_text)
    t2 = model.apply(params, ids2, mask, method=ALBEF.encode_text)
    assert not np.allclose(t1[:, N_VALID:], t2[:, N_VALID:])  # the pad states do change
    np.testing.assert_allclose(t1[:, :N_VALID], t2[:, :N_VALID], rtol=1e-5, atol=1e-5)

    m1 = model.apply(params, ids, mask, img, method=ALBEF.mlm_logits)
    m2 = model.apply(params, ids2, mask, img, method=ALBEF.mlm_logits)
    np.testing.assert_allclose(m1[:, :N_VALID], m2[:, :N_VALID], rtol=1e-5, atol=1e-5)


def test_mlm_decoder_is_tied(albef, batch):
    model, _, params = albef
    images, ids, mask = batch
    p = params["params"]
    tables = [x for x in jax.tree.leaves(p) if x.shape == (VOCAB, TXT_WIDTH)]
    assert len(tables) == 1
    assert set(p["mlm_head"]) == {"dense", "norm", "bias"}

    # Moving one word vector moves exactly that vocabulary column of the logits.
    img = model.apply(params, images, method=ALBEF.encode_image)
    table = p["txt"]["embeddings"]["word_embeddings"]["embedding"]
    new_table = table.at[VOCAB - 1].add(1.0)  # id VOCAB-1 is absent from the batch
    assert not bool(jnp.any(ids == VOCAB - 1))
    txt = {
        **p["txt"],
        "embeddings": {**p["txt"]["embeddings"], "word_embeddings": {"embedding": new_table}},
    }
    p2 = {"params": {**p, "txt": txt}}
    m1 = model.apply(params, ids, mask, img, method=ALBEF.mlm_logits)
    m2 = model.apply(p2, ids, mask, img, method=ALBEF.mlm_logits)
    np.testing.assert_allclose(m1[..., :-1], m2[..., :-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(m1[..., -1], m2[..., -1])


def test_dropout_only_in_train_and_remat_matches(batch):
    _, ids, mask = batch
    kw = dict(vocab_size=VOCAB, width=32, num_heads=2, mlp_dim=128, num_layers=1, max_len=16)
    plain = BertTextEncoder(**kw, dropout=0.1)
    remat = BertTextEncoder(**kw, dropout=0.1, remat=True)
    params = plain.init(jax.random.key(0), ids, mask)
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(remat.init, jax.random.key(0), ids, mask)
    )

    def loss(p, rngs):
        return jnp.sum(remat.apply(p, ids, mask, True, rngs=rngs) ** 2)

    @jax.jit  # one compilation for the whole check
    def run(params, rng):
        rngs = {"dropout": rng}
        eval_out = plain.apply(params, ids, mask, False)
        train_out = plain.apply(params, ids, mask, True, rngs=rngs)
        return eval_out, train_out, remat.apply(params, ids, mask, True, rngs=rngs)

    params = nn.unbox(params)
    rng = jax.random.key(1)
    eval_out, train_out, remat_train = run(params, rng)
    assert not np.allclose(train_out, eval_out)
    np.testing.assert_allclose(train_out, remat_train, rtol=1e-5, atol=1e-5)
    # The backward pass through the checkpointed layers traces (compiling it is slow on CPU).
    grads = jax.eval_shape(jax.grad(loss), params, {"dropout": rng})
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_remat_vit_traces_in_train_mode(batch):
    images, ids, mask = batch
    cfg = model_config("albef", remat=True, dropout=0.1)
    cfg.text.remat = True
    model = build_model(cfg)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *batch))
    out = jax.eval_shape(
        lambda p, r: model.apply(p, images, ids, mask, True, rngs={"dropout": r}),
        params,
        jax.random.key(1),
    )
    assert out["mlm_logits"].shape == (B, L, VOCAB)


def test_albef_base_parameter_count():
    # ViT-B/16 + BERT-base (6 text + 6 fusion layers): ALBEF reports 209.9M at inference.
    cfg = model_config("albef", variant="B/16", image_size=256)
    cfg.embed_dim = 256
    cfg.text.update(vocab_size=30522, width=768, num_heads=12, mlp_dim=3072, max_len=512)
    cfg.text.update(text_layers=6, fusion_layers=6)
    model = build_model(cfg)
    args = (jnp.zeros((1, 256, 256, 3)), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count == pytest.approx(209.9e6, rel=1e-3)


def test_logical_partitioning_under_a_mesh(batch):
    # The trainer's path: abstract init under mesh + rules, specs, shardings, lowered apply.
    model = build_model(model_config("albef"))
    mesh = jax.sharding.Mesh(
        np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )
    rules = (("batch", "data"), ("embed", "data"), ("vocab", None))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(model.init, jax.random.key(0), *batch)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        emb = shardings["params"]["txt"]["embeddings"]["word_embeddings"]["embedding"]
        assert emb.spec == jax.sharding.PartitionSpec(None, "data")
        params = jax.tree.map(
            lambda box, sh: jax.ShapeDtypeStruct(box.value.shape, box.value.dtype, sharding=sh),
            abstract,
            shardings,
            is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
        )
        jax.jit(model.apply).lower(params, *batch)  # traces every logical constraint


# ---------------------------------------------------------------- DualEncoder, dtypes


def test_dual_encoder(dual, batch):
    model, _, params = dual
    images, ids, mask = batch
    assert isinstance(model, DualEncoder)
    assert "fusion" not in params["params"]
    layers = [k for k in params["params"]["txt"] if k.startswith("layers_")]
    assert len(layers) == 4  # text_layers + fusion_layers
    img = model.apply(params, images, method=DualEncoder.encode_image)
    txt = model.apply(params, ids, mask, method=DualEncoder.encode_text)
    zi = model.apply(params, img, method=DualEncoder.embed_image)
    zt = model.apply(params, txt, method=DualEncoder.embed_text)
    assert img.shape == (B, N_TOKENS, 32) and txt.shape == (B, L, TXT_WIDTH)
    assert zi.shape == zt.shape == (B, EMBED)
    np.testing.assert_allclose(jnp.linalg.norm(zt, axis=-1), 1.0, rtol=1e-5)
    assert float(model.apply(params, method=DualEncoder.temperature)) == pytest.approx(0.07)


def test_bfloat16_compute(albef, batch):
    _, _, params = albef
    model = build_model(model_config("albef", dtype="bfloat16"))
    abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *batch))
    assert jax.tree.structure(abstract) == jax.tree.structure(params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract))

    out = jax.jit(model.apply)(params, *batch)
    assert out["image_tokens"].dtype == jnp.bfloat16
    assert out["fused_hidden"].dtype == jnp.bfloat16
    for key in ("image_embed", "text_embed", "itm_logits", "mlm_logits"):
        assert out[key].dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out[key])))
    np.testing.assert_allclose(jnp.linalg.norm(out["text_embed"], axis=-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- ViT extras, builder


def test_interpolate_pos_embed():
    pe = jax.random.normal(jax.random.key(0), (1, 1 + 16, 8))
    assert interpolate_pos_embed(pe, 4) is pe
    out = interpolate_pos_embed(pe, 6)
    assert out.shape == (1, 1 + 36, 8)
    np.testing.assert_array_equal(out[:, 0], pe[:, 0])
    const = jnp.concatenate([pe[:, :1], jnp.full((1, 16, 8), 0.3)], axis=1)
    np.testing.assert_allclose(interpolate_pos_embed(const, 6)[:, 1:], 0.3, rtol=1e-5)
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(pe[:, :-1], 4)

    # A ViT rebuilt at a new resolution runs with the resampled table.
    vit = ViT(**VIT_VARIANTS["mu"], image_size=32)
    params = nn.unbox(vit.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    with pytest.raises(ValueError, match="interpolate_pos_embed"):
        vit.apply(params, jnp.zeros((1, 48, 48, 3)))
    pos = interpolate_pos_embed(params["params"]["pos_embed"], 6)
    params = {"params": {**params["params"], "pos_embed": pos}}
    big = ViT(**VIT_VARIANTS["mu"], image_size=48)
    out = jax.eval_shape(big.apply, params, jnp.zeros((1, 48, 48, 3)))
    assert out.shape == (1, 37, 32)


def test_sincos2d_pos_embed_starts_the_table_at_unit_scale():
    vit = ViT(**VIT_VARIANTS["mu"], image_size=32, pos_embed_init="sincos2d")
    pos = nn.unbox(vit.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]["pos_embed"]
    assert pos.shape == (1, 17, 32)
    np.testing.assert_array_equal(pos[0, 0], 0.0)  # the CLS slot
    quarter = 8  # width 32: sin x, cos x, sin y, cos y, 8 frequencies each
    grid = np.asarray(pos[0, 1:]).reshape(4, 4, 32)  # [row y, column x, dim]
    np.testing.assert_allclose(grid[2, 3, 0], np.sin(3.0), rtol=1e-6)  # x = 3, ω_0 = 1
    np.testing.assert_allclose(grid[2, 3, 2 * quarter], np.sin(2.0), rtol=1e-6)  # y = 2
    np.testing.assert_allclose(
        grid[..., :quarter] ** 2 + grid[..., quarter : 2 * quarter] ** 2, 1.0, rtol=1e-6
    )
    with pytest.raises(ValueError, match="pos_embed_init='rope' is not one of"):
        ViT(**VIT_VARIANTS["mu"], image_size=32, pos_embed_init="rope").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )


def test_variants_and_build_errors():
    for name in ("mu", "tiny", "S/16", "B/16"):
        assert name in VIT_VARIANTS
    assert VIT_VARIANTS["B/16"] == dict(
        width=768, depth=12, num_heads=12, mlp_ratio=4.0, patch_size=16
    )
    model = build_model(model_config(variant="mu", width=999, depth=7))
    assert (model.img.width, model.img.depth, model.img.patch_size) == (32, 2, 8)

    with pytest.raises(ValueError, match=r"model\.kind.*albef.*dual_encoder"):
        build_model(model_config("blip"))
    with pytest.raises(ValueError, match=r"model\.image\.variant.*B/16"):
        build_model(model_config(variant="H/99"))
    with pytest.raises(ValueError, match=r"model\.dtype"):
        build_model(model_config(dtype="float16"))


def test_init_std_scales_random_weights_and_nothing_else(albef):
    params = albef[2]["params"]
    cfg = model_config("albef")
    cfg.init_std = 0.08
    scaled = scale_initial_weights(params, cfg)
    np.testing.assert_allclose(
        scaled["fusion"]["layers_0"]["crossattention"]["query"]["kernel"],
        4.0 * params["fusion"]["layers_0"]["crossattention"]["query"]["kernel"],
        rtol=1e-6,
    )
    for path in (("txt", "embeddings", "word_embeddings", "embedding"), ("img", "pos_embed")):
        a, b = scaled, params
        for key in path:
            a, b = a[key], b[key]
        np.testing.assert_allclose(a, 4.0 * b, rtol=1e-6)
    np.testing.assert_array_equal(scaled["temperature"], params["temperature"])
    np.testing.assert_array_equal(
        scaled["txt"]["layers_0"]["mlp_norm"]["scale"],
        params["txt"]["layers_0"]["mlp_norm"]["scale"],
    )
    np.testing.assert_array_equal(scaled["itm_head"]["bias"], params["itm_head"]["bias"])
    kernels = [
        np.asarray(x).ravel()
        for path, x in jax.tree_util.tree_leaves_with_path(scaled)
        if path[-1].key == "kernel"
    ]
    assert 0.075 < np.concatenate(kernels).std() < 0.085  # every kernel came from normal(0.02)
    cfg.image.pos_embed_init = "sincos2d"  # a fixed table, not a random draw: left as it is
    assert scale_initial_weights(params, cfg)["img"]["pos_embed"] is params["img"]["pos_embed"]
    cfg.init_std = 0.02
    assert scale_initial_weights(params, cfg) is params
