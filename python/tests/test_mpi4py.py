"""The mpi4py example (python/examples/mpi4py_train.py) through liblora's
gradient-reducer hook: 2 ranks × batch 2 train the same adapter as one
process × batch 4 (losses and weights within 1e-5), with LoRA dropout on."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fixture
from helpers import read_safetensors

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mpi4py_train.py"
#: Data-parallel vs one process: the same sums in another order (float32).
DATA_PARALLEL_TOLERANCE = 1e-5


def _mpi_ready():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (scripts/bootstrap.sh: pip install mpi4py)"
    if shutil.which("mpirun") is None:
        return "mpirun is not installed (scripts/bootstrap.sh: apt-get install openmpi-bin)"
    return None


def _run(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def test_two_ranks_equal_one_process(tmp_path):
    reason = _mpi_ready()
    if reason:
        pytest.skip(reason)
    data = tmp_path / "data.txt"
    data.write_text("".join(f"Line {i}: the captain says logic is the beginning of wisdom.\n%\n" for i in range(60)))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    env.pop("LORA_TEST_NO_NUMPY", None)
    common = [str(EXAMPLE), str(data), "--model", fixture("gpt2-tok"), "--max-steps", "6", "--dropout", "0.1"]
    _run([sys.executable, *common, "--batch-size", "4", "--output-dir", str(tmp_path / "one")], env)
    r = _run(["mpirun", "-np", "2", sys.executable, *common, "--batch-size", "2",
              "--output-dir", str(tmp_path / "two")], env)
    assert "rank 0 of 2" in r.stdout
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert one["ranks"] == 1 and two["ranks"] == 2 and len(one["losses"]) == len(two["losses"]) == 6
    assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"])) <= DATA_PARALLEL_TOLERANCE
    _, wa = read_safetensors(str(tmp_path / "one" / "adapter_model.safetensors"))
    _, wb = read_safetensors(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert sorted(wa) == sorted(wb)
    for k in wa:
        a, b = wa[k].values(), wb[k].values()
        assert max(abs(x - y) for x, y in zip(a, b)) <= DATA_PARALLEL_TOLERANCE, k


def test_reducer_arguments_are_checked(tok_model):
    with lora.Adapter.create(tok_model, r=2) as adapter, lora.Trainer(tok_model, adapter, max_steps=1,
                                                                     block_size=16) as trainer:
        with pytest.raises(lora.LoraError):
            trainer.set_gradient_reducer(2, 2, lambda b: None)
        with pytest.raises(TypeError):
            trainer.set_gradient_reducer(0, 2, "not callable")
        trainer.set_gradient_reducer(None, None, None)


def test_a_failing_reducer_stops_training_with_its_exception(tok_model, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("Spock: fascinating. " * 40)
    calls = []

    def broken(buffer):
        calls.append(len(buffer))
        raise ConnectionError("the network is gone")

    with lora.Adapter.create(tok_model, r=2) as adapter, lora.Trainer(tok_model, adapter, max_steps=2,
                                                                     block_size=16) as trainer:
        trainer.set_gradient_reducer(0, 2, broken)
        with pytest.raises(ConnectionError):
            trainer.train(str(data))
        assert len(calls) == 1 and trainer.step_count == 0


import lora  # noqa: E402
