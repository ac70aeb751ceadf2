"""Reading the launcher's environment (issue 19, item 5): torchrun, srun without torchrun, SLURM's
compressed node lists, and the one-line refusals."""

from __future__ import annotations

import pytest

from kidneyssl.errors import KidneySSLError
from kidneyssl.training.launch import expand_nodelist, launch_environment, slurm_master_port


def _slurm_env(rank: int, tasks: int = 2, **extra: str) -> dict[str, str]:
    env = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks),
           "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_STEP_ID": "0",
           "SLURM_JOB_NODELIST": "gpu[01-04,07],cpu3"}
    env.update(extra)
    return env


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu[01-04,07],cpu3", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"]),
    ("node[8-10]", ["node8", "node9", "node10"]),
    ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ("a1,b[3],c-x[001-002].site", ["a1", "b3", "c-x001.site", "c-x002.site"]),
    ("127.0.0.1", ["127.0.0.1"]),
])
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[01-04", "gpu01]", "gpu[a-b]", "gpu[4-2]", "", "gpu[1-]"])
def test_expand_nodelist_refuses_what_it_cannot_read(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_launch_environment_reads_torchrun_then_slurm() -> None:
    torchrun = launch_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", **_slurm_env(0)})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.launcher) == (3, 4, 1, "torchrun")
    assert torchrun.init_method == "env://"
    slurm = launch_environment(_slurm_env(1, tasks=6, SLURM_LOCALID="0"))
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.launcher) == (1, 6, 0, "slurm")
    assert slurm.init_method == f"tcp://gpu01:{slurm_master_port(4242)}" == "tcp://gpu01:24242"
    step = launch_environment(_slurm_env(0, SLURM_STEP_NODELIST="cpu[7-8]", MASTER_PORT="1234"))
    assert step.init_method == "tcp://cpu7:1234"  # the step's first node; MASTER_PORT wins
    assert launch_environment(_slurm_env(0, MASTER_ADDR="10.0.0.5")).init_method.startswith("tcp://10.0.0.5:")
    assert launch_environment({}).launcher == "none"
    assert launch_environment(_slurm_env(0, tasks=1)).world_size == 1
    assert launch_environment({**_slurm_env(0), "WORLD_SIZE": "1"}).world_size == 1  # one process asked for


@pytest.mark.parametrize("drop, words", [
    ("SLURM_LOCALID", "SLURM_LOCALID"),
    ("SLURM_STEP_ID", "not started by srun"),  # a batch script of 2 tasks running the program itself
    ("SLURM_JOB_NODELIST", "node list"),
    ("SLURM_JOB_ID", "MASTER_PORT"),
])
def test_slurm_without_what_it_needs_is_refused_naming_torchrun(drop: str, words: str) -> None:
    env = _slurm_env(0)
    del env[drop]
    with pytest.raises(KidneySSLError, match=words) as err:
        launch_environment(env)
    assert "torchrun" in str(err.value) and "\n" not in str(err.value)
