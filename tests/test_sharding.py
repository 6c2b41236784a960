"""Rule table and meshes: every mesh shape computes the same loss and gradients as one device."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tests.helpers import load_config
from vlp_jax import momentum, objectives, optim, sharding, train
from vlp_jax.data.synthetic import synthetic_batch
from vlp_jax.data.tokenizer import load_tokenizer
from vlp_jax.models import build_model

MESHES = {
    "1 device": (("data", 1),),
    "8 data": (("data", 8),),
    "4 data x 2 fsdp": (("data", 4), ("fsdp", 2)),
    "2 data x 2 fsdp x 2 tensor": (("data", 2), ("fsdp", 2), ("tensor", 2)),
}


def test_rules_keep_only_axes_the_mesh_has_and_that_divide():
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
    rules = sharding.DEFAULT_RULES
    assert sharding.resolve_spec(("embed", "mlp"), (64, 256), mesh, rules) == P("fsdp", "tensor")
    # 3 heads do not divide tensor=2, so that dimension stays whole instead of failing.
    assert sharding.resolve_spec(("embed", "heads", None), (64, 3, 8), mesh, rules) == P(
        "fsdp", None, None
    )
    data_only = sharding.make_mesh((("data", 8),))
    assert sharding.resolve_spec(("embed", "mlp"), (64, 256), data_only, rules) == P(None, None)
    # A mesh axis is used once per array even if two names map to it.
    twice = (("embed", "fsdp"), ("mlp", "fsdp"))
    assert sharding.resolve_spec(("embed", "mlp"), (64, 256), mesh, twice) == P("fsdp", None)


def test_rules_from_config_names_a_bad_rule():
    with pytest.raises(ValueError, match=r"sharding_rules\[1\].*unknown mesh axis 'model'"):
        sharding.rules_from_config((("embed", "fsdp"), ("mlp", "model")))
    with pytest.raises(ValueError, match=r"sharding_rules\[0\]"):
        sharding.rules_from_config((("embed",),))


def _loss_and_grads(config, mesh_axes, batch):
    devices = jax.devices()[: int(np.prod([n for _, n in mesh_axes]))]
    mesh = sharding.make_mesh(mesh_axes, devices)
    rules = sharding.rules_from_config(config.sharding_rules)
    tokens = train.token_info(load_tokenizer(config.data.tokenizer))
    model = build_model(config.model)
    tx, _ = optim.make_optimizer(config.optimizer, config.total_steps)
    state, shardings = train.create_state(model, tx, config, mesh, rules)
    objective = objectives.make_objective(model, config, tokens)
    grad_fn = jax.jit(
        jax.value_and_grad(objective, has_aux=True),
        out_shardings=((sharding.replicated(mesh), sharding.replicated(mesh)), shardings["params"]),
    )
    global_batch = sharding.to_global(batch, mesh)
    if "momentum" in state:  # ALBEF's teacher and queues take part too
        global_batch = momentum.before_step(state, global_batch, config)[1]
    with sharding.activate(mesh, rules):
        (loss, metrics), grads = grad_fn(state["params"], global_batch, jax.random.key(3))
    return float(loss), jax.device_get(metrics), jax.device_get(grads), shardings["params"]


@pytest.fixture(scope="module")
def reference():
    config = load_config("albef", "tiny")
    config.model.text.dropout = 0.1  # dropout masks must not depend on the mesh either
    config.momentum.alpha_ramp_steps = 0  # full distillation weight from step 0
    assert config.momentum.enabled
    tokens = train.token_info(load_tokenizer(config.data.tokenizer))
    batch = synthetic_batch(config, tokens.special_ids, tokens.vocab_size, np.random.default_rng(0))
    return config, batch, _loss_and_grads(config, MESHES["1 device"], batch)


@pytest.mark.parametrize("name", [n for n in MESHES if n != "1 device"])
def test_loss_and_grads_on_a_mesh_equal_one_device(reference, name):
    config, batch, (loss_1, metrics_1, grads_1, _) = reference
    loss, metrics, grads, shardings = _loss_and_grads(config, MESHES[name], batch)
    np.testing.assert_allclose(loss, loss_1, rtol=2e-5)
    for key in ("train/itc", "train/itm", "train/mlm"):
        np.testing.assert_allclose(metrics[key], metrics_1[key], rtol=2e-5, err_msg=key)
    flat_1 = dict(jax.tree_util.tree_flatten_with_path(grads_1)[0])
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        np.testing.assert_allclose(
            g, flat_1[path], rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path)
        )
    if "fsdp" in dict(MESHES[name]):
        kernel = shardings["txt"]["layers_0"]["mlp"]["fc1"]["kernel"]
        expected = P("fsdp", "tensor") if "tensor" in dict(MESHES[name]) else P("fsdp", None)
        assert kernel.spec == expected


def test_remat_gives_the_same_loss_and_grads(reference):
    config, batch, (loss_1, _, grads_1, _) = reference
    config = config.copy_and_resolve_references()
    config.model.image.remat = True
    config.model.text.remat = True
    loss, _, grads, _ = _loss_and_grads(config, MESHES["1 device"], batch)
    np.testing.assert_allclose(loss, loss_1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
