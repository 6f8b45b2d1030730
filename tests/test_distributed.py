"""Multi-process: two processes × 4 CPU devices train like one process × 8; the launch environment is read right."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import conftest
import distributed_worker
from r1jax import distributed

TIMEOUT_S = 360  # both workers together; ~70 s measured alone on 2 cores, ~130 s for half of it under a load of 11


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(tmp_path, reference):
    """Run distributed_worker.py as 2 processes × 4 CPU devices while `reference()` runs here (1 × 8);
    returns (the reference's result, each process's result)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R1JAX_", "JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4", XLA_FLAGS="--xla_force_host_platform_device_count=4 " + conftest.FAST_COMPILE_XLA_FLAGS,
               R1JAX_COORDINATOR=f"127.0.0.1:{port}", R1JAX_NUM_PROCESSES="2",
               JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # jax binds [::] by default: IPv4-only hosts
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(distributed.__file__)),
                                           env.get("PYTHONPATH", "")]))
    worker = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    procs, logs = [], [tmp_path / f"output_{i}.txt" for i in range(2)]
    try:
        for i, path in enumerate(logs):
            with open(path, "w") as log:  # the child keeps its own copy of the descriptor
                procs.append(subprocess.Popen([sys.executable, worker, str(tmp_path)], stdout=log,
                                              stderr=subprocess.STDOUT, env={**env, "R1JAX_PROCESS_ID": str(i)}))
        deadline = time.monotonic() + TIMEOUT_S
        want = reference()  # one process, 8 devices, meanwhile
        while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
            if time.monotonic() > deadline:
                pytest.fail(f"workers did not finish in {TIMEOUT_S} s:\n" + _tails(logs))
            time.sleep(0.2)
    finally:
        for p in procs:  # only the processes this test started
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        pytest.fail(f"worker exit codes {[p.returncode for p in procs]}:\n" + _tails(logs))
    results = [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(2)]
    assert [r.pop("main") for r in results] == [True, False]
    return want, results


def test_two_processes_of_four_devices_train_like_one_process_of_eight(tmp_path):
    """An expert-parallel SFT step (loss, gradient norm, MoE aux loss), two GRPO steps (rollouts,
    rewards, sharded updates) and an engine rollout give the same numbers in 2 processes × 4
    devices as in 1 × 8."""
    import random

    from r1jax.tokenizer import Tokenizer

    rng = random.Random(0)
    texts = (" ".join("".join(rng.choices("abcdefgh", k=rng.randint(1, 5))) for _ in range(8)) for _ in range(300))
    Tokenizer.train(texts, vocab_size=300).save(str(tmp_path / "tokenizer.model"))
    want, results = _launch_two(
        tmp_path, lambda: {**distributed_worker.run(), **distributed_worker.run_grpo(str(tmp_path / "tokenizer.model"))})
    sft = [k for k in want if k in ("forward_loss", "step_loss", "grad_norm", "aux_loss", "loss_after")]
    assert len(sft) == 5 and len(want) > len(sft)
    for got in results:  # the same rollouts, rewards and updates: sampling is sharding-invariant
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in sft], [want[k] for k in sft], rtol=2e-5, err_msg=str(got))
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-4, err_msg=str(got))
    assert want["loss_after"] < want["forward_loss"]  # the SFT step did something
    assert want["grad_norm_0"] > 0 and want["kl_1"] > 0  # the first update moved the policy away from the reference
    assert want["engine_length_sum"] > 0 and "engine_logp_sum" in want


def _tails(paths) -> str:
    """The last lines each worker printed (stdout and stderr)."""
    return "\n".join(f"--- process {i} ---\n" + path.read_text()[-6000:] for i, path in enumerate(paths))


# ---------------------------------------------------------------- the launch environment


@pytest.mark.parametrize("env, expected", [
    ({}, distributed.Launch("single")),
    ({"R1JAX_COORDINATOR": "10.0.0.1:1234", "R1JAX_NUM_PROCESSES": "4", "R1JAX_PROCESS_ID": "3"},
     distributed.Launch("explicit", "10.0.0.1:1234", 4, 3)),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     distributed.Launch("explicit", "h:1", 2, 0)),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
      "SLURM_LOCALID": "0"}, distributed.Launch("slurm")),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
      "SLURM_LOCALID": "0"}, distributed.Launch("single")),
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "8"}, distributed.Launch("mpi")),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, distributed.Launch("tpu")),
    ({"R1JAX_DISTRIBUTED": "1"}, distributed.Launch("forced")),
    ({"R1JAX_DISTRIBUTED": "0", "TPU_WORKER_HOSTNAMES": "w0,w1"}, distributed.Launch("single")),
])
def test_the_launch_is_read_from_the_environment(env, expected):
    assert distributed.detect(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"R1JAX_COORDINATOR": "10.0.0.1:1234"}, "also set R1JAX_NUM_PROCESSES and R1JAX_PROCESS_ID"),
    ({"R1JAX_COORDINATOR": "10.0.0.1", "R1JAX_NUM_PROCESSES": "2", "R1JAX_PROCESS_ID": "0"}, "must be host:port"),
    ({"R1JAX_COORDINATOR": "h:1", "R1JAX_NUM_PROCESSES": "two", "R1JAX_PROCESS_ID": "0"},
     "R1JAX_NUM_PROCESSES='two' must be an integer"),
    ({"R1JAX_COORDINATOR": "h:1", "R1JAX_NUM_PROCESSES": "2", "R1JAX_PROCESS_ID": "2"}, "R1JAX_PROCESS_ID=2"),
    ({"R1JAX_PROCESS_ID": "0"}, "need R1JAX_COORDINATOR"),
    ({"R1JAX_DISTRIBUTED": "yes"}, "R1JAX_DISTRIBUTED='yes' must be 0 or 1"),
])
def test_a_bad_launch_environment_is_an_error_naming_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        distributed.detect(env)


def test_single_process_is_a_no_op_and_the_main_process():
    assert distributed.initialize({}) == distributed.Launch("single")
    assert distributed.is_main_process()
    import jax
    from r1jax import sharding
    assert distributed.local_rows(8, sharding.make_mesh("data=2,expert=4", jax.devices()[:8])) == slice(0, 8)
    distributed.barrier("one process: returns at once")
