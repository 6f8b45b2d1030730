"""Tests for r1jax.checkpoint: round trips, sharding, keys, atomicity, retention, errors."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.checkpoint import Checkpointer


def _mesh():
    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _state():
    params = {"w": jnp.arange(32.0).reshape(4, 8), "b": jnp.ones(8)}
    return {
        "params": params,
        "opt": optax.adam(1e-3).init(params),
        "step": np.int32(5),  # numpy scalar: saved as a 0-d array
        "lr": 0.5,  # python scalar: likewise
        "rng": jax.random.key(7),
    }


META = {"phase": "grpo", "phase_index": 2, "cursor": 123, "seeds": [0, 1],
        "config": {"lr": 1e-3}}


def test_round_trip_onto_target_keeps_structure_values_and_meta(tmp_path):
    state = _state()
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(10, state, META)
        got, meta = ck.restore(target=state)
    assert meta == META
    assert isinstance(got["opt"][0], optax.ScaleByAdamState)
    np.testing.assert_array_equal(got["params"]["w"], state["params"]["w"])
    assert isinstance(got["step"], jax.Array) and got["step"].shape == ()
    assert int(got["step"]) == 5 and float(got["lr"]) == 0.5
    assert jnp.issubdtype(got["rng"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(got["rng"]),
                                  jax.random.key_data(state["rng"]))


def test_restore_without_target_rewraps_prng_keys(tmp_path):
    state = {"rng": jax.random.key(3, impl="rbg"), "x": jnp.zeros(2)}
    with Checkpointer(tmp_path) as ck:
        ck.save(0, state)
        got, meta = ck.restore()
    assert meta == {}
    assert str(jax.random.key_impl(got["rng"])) == "rbg"
    np.testing.assert_array_equal(jax.random.key_data(got["rng"]),
                                  jax.random.key_data(state["rng"]))
    # the restored key draws the same numbers as the original
    np.testing.assert_array_equal(jax.random.normal(got["rng"], (3,)),
                                  jax.random.normal(state["rng"], (3,)))


def test_restore_takes_target_sharding_and_dtype(tmp_path):
    mesh = _mesh()
    sharded = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    w = jax.device_put(jnp.arange(16.0), replicated)
    keys = jax.device_put(jax.random.split(jax.random.key(0), 8), replicated)
    with Checkpointer(tmp_path) as ck:
        ck.save(1, {"w": w, "keys": keys})
        target = {"w": jax.ShapeDtypeStruct((16,), jnp.bfloat16, sharding=sharded),
                  "keys": jax.device_put(jax.random.split(jax.random.key(1), 8), sharded)}
        got, _ = ck.restore(target=target)
    assert got["w"].dtype == jnp.bfloat16
    assert got["w"].sharding == sharded
    assert {s.data.shape for s in got["w"].addressable_shards} == {(2,)}
    np.testing.assert_array_equal(got["w"].astype(jnp.float32), np.arange(16.0))
    assert got["keys"].sharding.spec == P("data")
    np.testing.assert_array_equal(jax.random.key_data(got["keys"]), jax.random.key_data(keys))


def test_keep_last_removes_older_steps(tmp_path):
    with Checkpointer(tmp_path, keep_last=2) as ck:
        for step in range(5):
            ck.save(step, {"x": jnp.full(3, step)}, {"cursor": step})
        ck.wait()
        assert ck.all_steps() == [3, 4]
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_sync_save_is_committed_on_return(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(2, {"x": jnp.ones(2)})
        assert os.listdir(tmp_path) == ["2"]


def test_uncommitted_tmp_dir_is_ignored_and_removed(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, {"x": jnp.ones(4)}, {"cursor": 1})
    # a copy of a complete step, but never renamed: what a crash before commit leaves
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp")
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 1
        _, meta = ck.restore()
        assert meta == {"cursor": 1}
        ck.save(2, {"x": jnp.zeros(4)}, {"cursor": 2})
        ck.wait()
        assert ck.all_steps() == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


_KILLED_SAVER = textwrap.dedent("""
    import sys, time
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from r1jax.checkpoint import Checkpointer

    ck = Checkpointer(sys.argv[1])
    ck.save(1, {"x": jnp.zeros(1 << 20)}, {"cursor": 1})
    ck.wait()

    async def hang(self):  # every byte is written; the commit never comes
        print("FINALIZING", flush=True)
        time.sleep(600)

    atomicity.AtomicRenameTemporaryPath.finalize = hang
    ck.save(2, {"x": jnp.ones(1 << 20)}, {"cursor": 2})
    ck.wait()
""")


def test_save_killed_before_commit_falls_back_to_previous(tmp_path):
    ckdir = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(ckdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "FINALIZING", "saver died before reaching the commit"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert any(name.startswith("2.") for name in os.listdir(ckdir))  # half-done save
    with Checkpointer(ckdir) as ck:
        assert ck.latest_step() == 1
        got, meta = ck.restore(target={"x": jnp.zeros(1 << 20)})
    assert meta == {"cursor": 1}
    assert float(got["x"].sum()) == 0.0


def test_restore_from_empty_directory_names_it(tmp_path):
    with Checkpointer(tmp_path / "nothing") as ck:
        with pytest.raises(FileNotFoundError, match="no committed checkpoint in .*nothing"):
            ck.restore()


def test_restore_missing_step_lists_committed_steps(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(3, {"x": jnp.ones(1)})
        with pytest.raises(FileNotFoundError, match=r"step 4.*\[3\]"):
            ck.restore(4)


def test_structure_mismatch_names_paths(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(0, {"params": {"w": jnp.ones((2, 3))}, "step": jnp.asarray(1)})
        with pytest.raises(ValueError, match=r"not in checkpoint: \['params/v'\]"):
            ck.restore(target={"params": {"w": jnp.ones((2, 3)), "v": jnp.ones(2)},
                               "step": jnp.asarray(1)})
        with pytest.raises(ValueError, match=r"not in target: \['step'\]"):
            ck.restore(target={"params": {"w": jnp.ones((2, 3))}})
        with pytest.raises(ValueError, match=r"'params/w': checkpoint shape \(2, 3\)"):
            ck.restore(target={"params": {"w": jnp.ones((3, 2))}, "step": jnp.asarray(1)})


def test_bad_leaves_and_meta_are_rejected_with_path(tmp_path):
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(TypeError, match="'a/name' has type str"):
            ck.save(0, {"a": {"name": "x"}})
        with pytest.raises(TypeError, match="'big'"):
            ck.save(0, {"big": 2**40})
        with pytest.raises(TypeError, match="not strict JSON"):
            ck.save(0, {"x": jnp.ones(1)}, {"loss": float("nan")})
        assert ck.latest_step() is None


def test_steps_must_increase_unless_forced(tmp_path):
    with Checkpointer(tmp_path) as ck:
        for step in (1, 2, 3):
            ck.save(step, {"x": jnp.full(1, step)}, {"cursor": step})
        with pytest.raises(ValueError, match="step 2 <= latest checkpoint 3"):
            ck.save(2, {"x": jnp.zeros(1)})
        ck.save(2, {"x": jnp.full(1, 20)}, {"cursor": 20}, force=True)
        ck.wait()
        assert ck.all_steps() == [1, 2]
        got, meta = ck.restore()
    assert meta == {"cursor": 20} and int(got["x"][0]) == 20


def test_async_save_survives_deleting_the_arrays_right_after(tmp_path):
    """A jitted step may donate the state buffers as soon as save returns."""
    x = jnp.arange(1 << 16, dtype=jnp.float32)
    expected = np.asarray(x)
    with Checkpointer(tmp_path, async_save=True) as ck:
        ck.save(1, {"x": x})
        x.delete()
        ck.wait()
        got, _ = ck.restore(target={"x": jax.ShapeDtypeStruct(expected.shape, expected.dtype)})
    np.testing.assert_array_equal(got["x"], expected)
