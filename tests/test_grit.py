"""GRIT-VLP sampler: grouped epochs from collected embeddings, and a resumed run replays them."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, load_config, train_rows
from vlp_jax import checkpoint, grit, train


def _collect_epoch(sampler: grit.GritSampler, rng: np.random.Generator, dim: int = 8) -> None:
    """Embeddings in 4 tight clusters by dataset index, collected batch by batch."""
    centres = rng.normal(size=(4, dim))
    for b in sampler.order[: sampler.steps_per_epoch * sampler.batch_size].reshape(
        -1, sampler.batch_size
    ):
        x = centres[b % 4] + 0.05 * rng.normal(size=(len(b), dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        sampler.collect(b, x, x)


def test_epochs_are_permutations_and_grouped_batches_share_a_cluster():
    sampler = grit.GritSampler(num_examples=70, batch_size=8, search_space=32, seed=0)
    assert sampler.steps_per_epoch == 8
    assert sorted(sampler.order) == list(range(70))
    _collect_epoch(sampler, np.random.default_rng(0))
    sampler.advance()
    assert sampler.epoch == 1 and sorted(sampler.order) == list(range(70))
    # 64 collected pairs = 2 search spaces of 32, whose chains make 8 batches of one cluster
    # each (apart from where a chain steps from one cluster to the next).
    batches = sampler.order[:64].reshape(-1, 8) % 4
    pure = [len(set(b)) == 1 for b in batches]
    assert sum(pure) >= 5, batches
    random_batches = np.random.default_rng(1).permutation(70)[:64].reshape(-1, 8) % 4
    assert sum(len(set(b)) == 1 for b in random_batches) == 0


def test_regrouping_measures_its_batches_against_random_ones_by_the_same_embeddings():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(12, 5)).astype(np.float32)
    t = rng.normal(size=(12, 5)).astype(np.float32)
    index = np.arange(100, 112)
    order = np.concatenate([rng.permutation(index), [5, 6]])  # 3 whole batches and a remainder
    expected = []
    for batch in order[:12].reshape(3, 4):
        rows = batch - 100
        sims = v[rows] @ t[rows].T
        np.fill_diagonal(sims, -np.inf)
        expected.append(sims.max(axis=1))
    assert grit.order_hardness(order, index, v, t, 4) == pytest.approx(np.mean(expected))
    # A batch holding a pair without embeddings is left out; none left gives NaN.
    holed = order.copy()
    holed[0] = 5
    assert grit.order_hardness(holed, index, v, t, 4) == pytest.approx(np.mean(expected[1:]))
    assert np.isnan(grit.order_hardness(np.arange(4), index, v, t, 4))

    sampler = grit.GritSampler(num_examples=70, batch_size=8, search_space=32, seed=0)
    _collect_epoch(sampler, np.random.default_rng(0))
    sampler.advance()
    hardness = sampler.batch_hardness
    assert set(hardness) == {"hardest_negative_sim_grouped", "hardest_negative_sim_random"}
    assert hardness["hardest_negative_sim_grouped"] > 0.9  # one cluster per batch, mostly
    # Random batches of 8 from 4 clusters mostly hold a same-cluster pair too, but not always.
    assert hardness["hardest_negative_sim_random"] < hardness["hardest_negative_sim_grouped"] - 0.05


def test_sampler_state_round_trips_and_orders_are_deterministic():
    a = grit.GritSampler(num_examples=64, batch_size=8, search_space=32, seed=3)
    _collect_epoch(a, np.random.default_rng(1))
    b = grit.GritSampler(num_examples=64, batch_size=8, search_space=32, seed=3)
    b.load_state(a.state())
    np.testing.assert_array_equal(a.next_order(), b.next_order())


def test_warm_start_groups_epoch_zero_by_saved_embeddings(tmp_path):
    earlier = grit.GritSampler(num_examples=70, batch_size=8, search_space=32, seed=0)
    _collect_epoch(earlier, np.random.default_rng(0))  # 64 of the 70 examples
    path = str(tmp_path / "emb.npz")
    grit.save_embeddings(path, *earlier.collected())
    orders = []
    for _ in range(2):
        sampler = grit.GritSampler(num_examples=70, batch_size=8, search_space=32, seed=5)
        sampler.warm_start(*grit.load_embeddings(path, 70))
        orders.append(sampler.order)
    np.testing.assert_array_equal(orders[0], orders[1])  # deterministic for a seed
    assert sorted(orders[0]) == list(range(70))  # the 6 unsaved examples fill random batches

    def clusters_per_batch(order: np.ndarray) -> float:
        return np.mean([len(set(b)) for b in order[:64].reshape(-1, 8) % 4])

    assert clusters_per_batch(orders[0]) <= 2  # chains step between clusters now and then
    cold = grit.GritSampler(num_examples=70, batch_size=8, search_space=32, seed=5).order
    assert clusters_per_batch(cold) >= 3  # random: 3.6 on average
    # The process scope (one real process here) groups the saved rows into its own groups.
    own = grit.GritSampler(num_examples=70, batch_size=8, search_space=32, seed=5, scope="process")
    own.warm_start(*grit.load_embeddings(path, 70))
    assert sorted(own.order) == list(range(70)) and clusters_per_batch(own.order) <= 2
    own.advance()  # then trains on as usual: nothing collected yet, so a random epoch 1
    assert sorted(own.order) == list(range(70))


def test_warm_start_files_are_checked_and_errors_name_the_fault(tmp_path):
    index, v = np.arange(4), np.eye(4, dtype=np.float32)
    with pytest.raises(FileNotFoundError, match="no such file"):
        grit.load_embeddings(str(tmp_path / "none*.npz"), 10)
    np.savez(tmp_path / "keys.npz", index=index, image_emb=v)
    with pytest.raises(ValueError, match=r"keys.npz has no \['text_emb'\]"):
        grit.load_embeddings(str(tmp_path / "keys.npz"), 10)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz is not a readable .npz"):
        grit.load_embeddings(str(tmp_path / "junk.npz"), 10)
    grit.save_embeddings(str(tmp_path / "a.npz"), index + 7, v, v)
    with pytest.raises(ValueError, match=r"a.npz: 'index'\[3\] = 10 is outside the 10"):
        grit.load_embeddings(str(tmp_path / "a.npz"), 10)
    grit.save_embeddings(str(tmp_path / "b.npz"), index + 5, 2 * v, v)  # 7, 8 are in a.npz too
    index_ab, v_ab, _ = grit.load_embeddings(str(tmp_path / "[ab].npz"), 11)  # a glob
    assert list(index_ab) == [7, 8, 9, 10, 5, 6]  # the first row of each example is kept
    np.testing.assert_array_equal(v_ab, np.concatenate([v, 2 * v[:2]]))
    grit.save_embeddings(str(tmp_path / "c.npz"), index, v, v[:3])
    with pytest.raises(ValueError, match="must both be"):
        grit.load_embeddings(str(tmp_path / "c.npz"), 10)
    grit.save_embeddings(str(tmp_path / "d.npz"), index, v, v)
    index_all, v_all, _ = grit.load_embeddings(str(tmp_path / "[ad].npz"), 12)  # a glob
    assert list(index_all) == [7, 8, 9, 10, 0, 1, 2, 3] and v_all.shape == (8, 4)


def test_search_space_must_split_into_batches():
    with pytest.raises(ValueError, match="search_space=30 must be a multiple"):
        grit.GritSampler(num_examples=64, batch_size=8, search_space=30, seed=0)


def test_resumed_grit_run_replays_the_same_batches(tmp_path, monkeypatch):
    """Stopping mid-epoch and resuming gives the batches (dataset indices) of an uninterrupted
    run, in grouped epochs too."""
    seen: dict[str, list] = {}
    real_collect = grit.GritSampler.collect

    def recording(self, index, image_emb, text_emb):
        seen[self._run].append(np.asarray(index).copy())
        return real_collect(self, index, image_emb, text_emb)

    monkeypatch.setattr(grit.GritSampler, "collect", recording)
    real_init = grit.GritSampler.__init__

    def tagged_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._run = current[0]

    monkeypatch.setattr(grit.GritSampler, "__init__", tagged_init)
    config = load_config("grit_vlp", "tiny")  # 3 steps per epoch, 8 steps
    current = ["whole"]
    seen["whole"] = []
    config.grit.save_embeddings = True
    train.train_and_evaluate(config, str(tmp_path / "whole"))
    config.grit.save_embeddings = False
    current[0] = "resumed"
    seen["resumed"] = []
    train.train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=4)  # mid-epoch 1
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    whole, resumed = np.stack(seen["whole"]), np.stack(seen["resumed"])
    assert whole.shape == (8, 16)
    np.testing.assert_array_equal(resumed, whole)
    # Each epoch (3 steps) covers all 48 pairs; epoch 1 is regrouped, not epoch 0 again.
    assert sorted(whole[3:6].ravel()) == list(range(48))
    assert not np.array_equal(whole[3:6], whole[0:3])
    assert os.path.isdir(tmp_path / "resumed" / "checkpoints" / "4" / "sampler")
    # Each regrouping (after steps 3 and 6) is measured and logged at that or the next log step.
    logged = [
        r
        for r in train_rows(str(tmp_path / "whole")).values()
        if "grit/hardest_negative_sim_grouped" in r
    ]
    assert [r["step"] for r in logged] == [4, 6]
    assert all(-1 <= r["grit/hardest_negative_sim_random"] <= 1 for r in logged)

    # `save_embeddings` wrote epoch 1's pairs (the last whole epoch) as it ended, and a run
    # warm-started from them groups its epoch 0 by them.
    saved = str(tmp_path / "whole" / "grit_embeddings.npz")
    index, v, t = grit.load_embeddings(saved, 48)
    assert sorted(index) == list(range(48)) and v.shape == t.shape == (48, config.model.embed_dim)
    current[0] = "warm"
    seen["warm"] = []
    config.grit.warm_start = saved
    train.train_and_evaluate(config, str(tmp_path / "warm"), stop_at_step=3)
    expected = grit.GritSampler(48, 16, config.grit.search_space, config.seed)
    expected.warm_start(index, v, t)
    np.testing.assert_array_equal(np.stack(seen["warm"]), expected.order.reshape(3, 16))
    assert not np.array_equal(expected.order, np.concatenate(seen["whole"][:3]))


def test_two_processes_group_like_one(tmp_path):
    """2 processes × 4 devices: the same grouped epochs (global grouping) and the same losses as
    1 process × 8 devices."""
    one = str(tmp_path / "one")
    train.train_and_evaluate(load_config("grit_vlp", "tiny"), one)
    two = str(tmp_path / "two")
    out = subprocess.run(
        ["bash", "launch/local.sh", "2", "4", "--"]
        + ["--config", "configs/grit_vlp.py:size=tiny", "--workdir", two],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def sampler_state(workdir):
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=4, keep=3)
        state = ckpt.restore_sampler()
        ckpt.close()
        return state

    a, b = sampler_state(one), sampler_state(two)
    assert int(a["epoch"]) == int(b["epoch"]) == 2
    np.testing.assert_array_equal(a["order"], b["order"])
    np.testing.assert_array_equal(a["index"], b["index"])
    ref, got = train_rows(one), train_rows(two)
    for step in (2, 4, 6, 8):
        np.testing.assert_allclose(got[step]["train/loss"], ref[step]["train/loss"], rtol=1e-5)


def test_refresh_every_k_steps_regroups_by_the_latest_embeddings():
    sampler = grit.GritSampler(
        num_examples=64, batch_size=8, search_space=16, seed=0, refresh_every_steps=2
    )
    assert sampler.steps_per_epoch == 2
    rng = np.random.default_rng(0)
    first = sampler.order[:16]
    sampler.collect(first, np.ones((16, 4)), np.ones((16, 4)))
    sampler.advance()
    assert sorted(sampler.order) == list(range(64))
    seen_again = first[:8]
    sampler.collect(seen_again, np.full((8, 4), 2.0), np.full((8, 4), 2.0))
    index, v, _ = sampler.collected()
    assert sorted(index) == sorted(first)  # 16 examples, each once
    latest = dict(zip(index.tolist(), v[:, 0].tolist()))
    assert all(latest[i] == 2.0 for i in seen_again) and sum(x == 1.0 for x in latest.values()) == 8
    # The 16 seen examples form one search space and are grouped; the rest are random batches.
    x = rng.normal(size=(16, 4))
    sampler.collect(first, x, x)
    sampler.advance()
    assert sorted(sampler.order) == list(range(64)) and sampler.epoch == 2
    with pytest.raises(ValueError, match="refresh_every_steps=-1"):
        grit.GritSampler(64, 8, 16, 0, refresh_every_steps=-1)


def test_sampler_checkpoints_right_after_an_epoch_ends(tmp_path):
    """At an epoch's last step nothing is collected yet for the next one; the checkpoint (which
    cannot hold empty arrays) must still save and restore that state."""
    sampler = grit.GritSampler(num_examples=64, batch_size=8, search_space=32, seed=0)
    _collect_epoch(sampler, np.random.default_rng(0))
    sampler.advance()
    state = sampler.state()
    assert state["collected"] == 0 and all(np.size(v) for v in state.values())
    manager = checkpoint.ocp.CheckpointManager(str(tmp_path), item_names=("sampler",))
    manager.save(
        1, args=checkpoint.ocp.args.Composite(sampler=checkpoint.ocp.args.StandardSave(state))
    )
    manager.wait_until_finished()
    restored = manager.restore(
        1, args=checkpoint.ocp.args.Composite(sampler=checkpoint.ocp.args.StandardRestore())
    )
    fresh = grit.GritSampler(num_examples=64, batch_size=8, search_space=32, seed=0)
    fresh.load_state(dict(restored["sampler"]))
    assert fresh.epoch == 1 and fresh.collected()[0].size == 0
    np.testing.assert_array_equal(fresh.order, sampler.order)


def _simulated_processes(*args, **kwargs) -> list[grit.GritSampler]:
    """The samplers of processes 0 and 1 of 2 in the process scope, in one process."""
    return [
        grit.GritSampler(*args, seed=0, scope="process", process_index=p, process_count=2, **kwargs)
        for p in range(2)
    ]


def _two_process_epoch(
    batch_size: int = 8, search_space: int = 16, num_examples: int = 64, substitute: bool = False
):
    """Samplers of processes 0 and 1 (scope "process") after one epoch, each having collected
    its own block of every global batch; embeddings in 4 tight clusters by dataset index. With
    `substitute`, process 1's first row of the last batch is an example of process 0's block
    (as a bad image's substitute can be)."""
    samplers = _simulated_processes(num_examples, batch_size, search_space)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    half = batch_size // 2
    batches = samplers[0].order.reshape(-1, batch_size).copy()
    if substitute:
        batches[-1, half] = batches[-1, half - 1]
    for batch in batches:
        for p, sampler in enumerate(samplers):
            own = batch[p * half : (p + 1) * half]
            x = centres[own % 4] + 0.05 * rng.normal(size=(half, 8))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            sampler.collect(own, x, x)
    return samplers


def test_process_scope_groups_each_process_rows_and_deals_the_groups():
    samplers = _two_process_epoch()
    first = samplers[0].order.reshape(-1, 8)
    own = [s.own_groups() for s in samplers]
    assert [sorted(o) for o in own] == [sorted(first[:, :4].ravel()), sorted(first[:, 4:].ravel())]
    orders = [s.order_from_groups(np.concatenate(own)) for s in samplers]
    np.testing.assert_array_equal(orders[0], orders[1])  # every process computes the same order
    order = orders[0]
    assert sorted(order) == list(range(64))
    blocks = order.reshape(-1, 2, 4)  # global batch × process × local row
    # Each block is one group: built by one process from its own rows, mostly one cluster.
    groups = {tuple(g) for g in np.concatenate(own).reshape(-1, 4)}
    assert {tuple(b) for b in blocks.reshape(-1, 4)} == groups
    assert sum(len(set(b % 4)) == 1 for b in blocks.reshape(-1, 4)) >= 8  # random: ~0.25
    # Groups are dealt at random, so process 0 now reads rows process 1 trained on: no process
    # is locked to one shard of the data.
    assert set(blocks[:, 0].ravel()) & set(first[:, 4:].ravel())


def test_process_scope_state_round_trips_through_a_checkpoint(tmp_path):
    sampler = grit.GritSampler(64, 8, 16, seed=0, scope="process")  # this one process
    rng = np.random.default_rng(0)
    for batch in sampler.order.reshape(-1, 8)[:5]:
        x = rng.normal(size=(8, 4)).astype(np.float32)
        sampler.collect(batch, x, x)
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1)
    ckpt.manager.save(
        3,
        args=checkpoint.ocp.args.Composite(
            sampler=checkpoint.ocp.args.StandardSave(sampler.state())
        ),
    )
    ckpt.manager.wait_until_finished()
    fresh = grit.GritSampler(64, 8, 16, seed=0, scope="process")
    fresh.load_state(ckpt.restore_sampler(fresh.restore_target))
    np.testing.assert_array_equal(fresh.collected()[1], sampler.collected()[1])
    np.testing.assert_array_equal(fresh.next_order(), sampler.next_order())
    with pytest.raises(ValueError, match="saved with config.grit.scope='process'"):
        ckpt.restore_sampler(grit.GritSampler(64, 8, 16, seed=0).restore_target)
    ckpt.close()


def test_process_scope_refresh_groups_each_example_once_by_its_last_trainer():
    """Refresh periods of 2 steps, 2 simulated processes: an example seen by both (in different
    periods) is grouped only by the one that trained on it last, with that latest embedding."""
    samplers = _simulated_processes(64, 8, 8, refresh_every_steps=2)
    rng = np.random.default_rng(0)
    last_trainer, latest = {}, {}
    for _ in range(6):
        for batch in samplers[0].order[:16].reshape(2, 2, 4):  # step × process × row
            for p, sampler in enumerate(samplers):
                x = rng.normal(size=(4, 8)) + 3.0 * (batch[p] % 4 == 0)[:, None]
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                sampler.collect(batch[p], x, x)
                last_trainer.update({int(i): p for i in batch[p]})
                latest.update({int(i): row for i, row in zip(batch[p], x)})
        # What `advance` does, minus the gather of real processes.
        own = [sampler.own_groups() for sampler in samplers]
        for p, groups in enumerate(own):
            assert all(last_trainer[int(i)] == p for i in groups)
            index, v, _ = samplers[p].collected()  # only owned rows are kept, at their latest
            assert all(last_trainer[int(i)] == p for i in index)
            np.testing.assert_array_equal(v, np.stack([latest[int(i)] for i in index]))
        assert not set(own[0]) & set(own[1])
        orders = [sampler.order_from_groups(np.concatenate(own)) for sampler in samplers]
        np.testing.assert_array_equal(orders[0], orders[1])
        assert sorted(orders[0]) == list(range(64))
        for sampler in samplers:
            sampler.order, sampler.epoch = orders[0], sampler.epoch + 1
    # Every example seen is grouped, but for each process's remainder of a search space.
    assert len(last_trainer) > 32 and len(np.concatenate(own)) > len(last_trainer) - 2 * 8


def test_process_scope_rejects_misfit_search_spaces():
    with pytest.raises(ValueError, match="multiple of the local batch 4"):
        grit.GritSampler(64, 8, 6, 0, scope="process", process_index=0, process_count=2)
    with pytest.raises(ValueError, match="grit.scope='shard' is not one of"):
        grit.GritSampler(64, 8, 16, 0, scope="shard")


@pytest.mark.slow
def test_two_processes_group_their_own_rows_and_resume(tmp_path):
    """2 processes × 4 devices in the process scope: both end with the same grouped order, a
    permutation, and each restores its own rows (a rerun resumes from the final checkpoint)."""
    workdir = str(tmp_path / "two")
    command = ["bash", "launch/local.sh", "2", "4", "--"] + [
        "--config",
        "configs/grit_vlp.py:size=tiny",
        "--workdir",
        workdir,
        "--config.grit.scope=process",
        "--config.grit.search_space=8",
    ]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]}
    for _ in ("fresh", "resumed"):
        out = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resumed from the checkpoint of step 8" in out.stdout + out.stderr
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every=4, keep=3)
    # One process here: the saved [2, ...] rows as numpy.
    state = ckpt.restore_sampler(
        lambda meta: {k: np.zeros(m.shape, m.dtype) for k, m in meta.items()}
    )
    ckpt.close()
    assert int(state["epoch"]) == 2 and sorted(state["order"]) == list(range(48))
    # Epoch 2 so far: 2 steps, each process collected its own 8 rows of each global batch.
    assert state["index"].shape == (2, 16) and list(state["collected"]) == [16, 16]
    rows = state["order"][:32].reshape(2, 2, 8)  # step × process × row (epoch 2's order)
    np.testing.assert_array_equal(
        np.sort(state["index"], axis=1), np.sort(rows.transpose(1, 0, 2).reshape(2, 16), axis=1)
    )


_RAGGED_PROCESS = """
import sys
import numpy as np
from vlp_jax.distributed import initialize_distributed
initialize_distributed()
import jax
from vlp_jax import checkpoint, grit

p = jax.process_index()
# Regrouped every 4 steps: the 4 collected are one whole period.
sampler = grit.GritSampler(64, 8, 8, seed=0, refresh_every_steps=4, scope="process")
rng = np.random.default_rng(p)
batches = sampler.order.reshape(-1, 8)[:4, p * 4 : (p + 1) * 4]
if p == 1:  # a bad image's substitute repeats an example: 15 distinct rows, not 16
    batches = batches.copy()
    batches[3, 3] = batches[3, 2]
for index in batches:
    x = rng.normal(size=(4, 6)).astype(np.float32)
    sampler.collect(index, x, x)
ckpt = checkpoint.Checkpointer(sys.argv[1], every=1, keep=1)
ckpt.manager.save(1, args=checkpoint.ocp.args.Composite(
    sampler=checkpoint.ocp.args.StandardSave(sampler.state())))
ckpt.manager.wait_until_finished()
fresh = grit.GritSampler(64, 8, 8, seed=0, refresh_every_steps=4, scope="process")
fresh.load_state(ckpt.restore_sampler(fresh.restore_target))
ckpt.close()
index, v, _ = fresh.collected()
assert len(index) == (16 if p == 0 else 15), len(index)
np.testing.assert_array_equal(v, sampler.collected()[1])
order = fresh.next_order()
owned = (fresh.owner == p).sum()
assert owned == 16 and (fresh.owner >= 0).sum() == 32, fresh.owner
np.save(f"{sys.argv[1]}/order_{p}.npy", order)
"""


def test_process_scope_with_unequal_rows_saves_restores_and_agrees(tmp_path):
    """2 real processes whose collected row counts differ (16 vs 15): the checkpoint pads and
    restores each process's own rows, and both compute the same grouped order (at the end of a
    refresh period, from the examples each owns)."""
    port = 20000 + os.getpid() % 20000
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RAGGED_PROCESS, str(tmp_path)],
            cwd=ROOT,
            env={
                **os.environ,
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2",
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(p),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in range(2)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), "\n".join(o[-2000:] for o in outputs)
    orders = [np.load(tmp_path / f"order_{p}.npy") for p in range(2)]
    np.testing.assert_array_equal(orders[0], orders[1])
    assert sorted(orders[0]) == list(range(64))


def test_process_scope_leaves_a_substitute_from_another_block_to_its_owner():
    """A bad image's substitute is the next pair in source order, which can sit in another
    process's block: only the process the order gave it to may group it."""
    samplers = _two_process_epoch(substitute=True)
    own = [s.own_groups() for s in samplers]
    order = samplers[0].order_from_groups(np.concatenate(own))
    assert sorted(order) == list(range(64))
    first = samplers[0].order.reshape(-1, 8)
    assert set(own[1]) <= set(first[:, 4:].ravel())


def test_sampler_guards_simulated_processes_old_checkpoints_and_mesh_layout():
    two = grit.GritSampler(64, 8, 16, 0, scope="process", process_index=1, process_count=2)
    with pytest.raises(RuntimeError, match="stands for process 1 of 2"):
        two.next_order()
    old = {k: np.zeros(1) for k in ("epoch", "order", "index", "image_emb", "text_emb")}
    assert set(grit.GritSampler(64, 8, 16, 0).restore_target(old)) == set(old)

    class HalfTheRows:  # a layout whose process holds rows 0-3 of 8, not block 0 = 0-7
        def addressable_devices_indices_map(self, shape):
            return {"cpu0": (slice(0, 4),)}

    with pytest.raises(ValueError, match=r"block \[0, 8\); this mesh gives it 4 rows"):
        grit.check_process_blocks(HalfTheRows(), 8)
