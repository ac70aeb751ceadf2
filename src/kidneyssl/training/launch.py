"""Where a launcher put this process: rank, world size, local rank and how the processes meet.

* ``torchrun`` (or any launcher that sets ``WORLD_SIZE``; this wins when both are present, e.g.
  ``srun torchrun ...``): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``
  (``env://``);
* ``srun`` without torchrun (a job step of N > 1 tasks, ``SLURM_STEP_ID`` set): rank
  ``SLURM_PROCID``, world ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``), local rank
  ``SLURM_LOCALID``; the processes meet at the first host of the step's node list
  (``MASTER_ADDR`` overrides) on ``MASTER_PORT`` or a port derived from ``SLURM_JOB_ID``
  (:func:`slurm_master_port`). A batch script of N tasks that runs the program itself, without
  ``srun``, is refused: it would be one process waiting for N - 1 that never come;
* neither: one process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

__all__ = ["LaunchEnvironment", "launch_environment", "expand_nodelist", "slurm_master_port"]


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where the launcher put this process (read by :func:`launch_environment`).

    Attributes:
        rank, world_size, local_rank: this process's global rank, the number of processes and its
            rank on its node.
        launcher: ``none`` (1 process), ``torchrun`` (``WORLD_SIZE`` in the environment) or ``slurm``.
        init_method: how the processes meet: ``env://`` (torchrun) or ``tcp://HOST:PORT`` (slurm).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"
    init_method: str = "env://"


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets."""
    items, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def _expand_range(spec: str, text: str) -> list[str]:
    """``01-03,07`` -> ``["01", "02", "03", "07"]`` (zero-padded to the first number's width)."""
    values = []
    for token in spec.split(","):
        token = token.strip()
        first, dash, last = token.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"bad range {token!r} in node list {text!r}")
        if not dash:
            values.append(first)
            continue
        if int(last) < int(first):
            raise ValueError(f"descending range {token!r} in node list {text!r}")
        values.extend(str(i).zfill(len(first)) for i in range(int(first), int(last) + 1))
    return values


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a SLURM node list in its compressed form, in order.

    ``gpu[01-04,07],cpu3`` -> ``gpu01 gpu02 gpu03 gpu04 gpu07 cpu3``; several bracket groups in one
    name expand as a product (``r[1-2]n[1-2]`` -> ``r1n1 r1n2 r2n1 r2n2``).

    Raises:
        ValueError: unbalanced brackets, a range that is not ``N`` or ``N-M`` with ``N <= M``, or
            an empty list.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist):
        names = [""]
        for part in re.split(r"(\[[^\]]*\])", item):
            values = _expand_range(part[1:-1], nodelist) if part.startswith("[") else [part]
            names = [name + value for name in names for value in values]
        hosts.extend(names)
    if not hosts:
        raise ValueError(f"empty node list {nodelist!r}")
    return hosts


def slurm_master_port(job_id: str | int) -> int:
    """A rendezvous port derived from a SLURM job id: ``20000 + job_id % 10000`` (below Linux's
    ephemeral range, the same for every task of the job, different for jobs that share a node
    unless their ids differ by a multiple of 10000; ``MASTER_PORT`` overrides it)."""
    return 20000 + int(job_id) % 10000


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        from kidneyssl.errors import KidneySSLError

        raise KidneySSLError(f"environment variable {name}={value!r} is not an integer") from None


def _refuse_slurm(what: str) -> Exception:
    from kidneyssl.errors import KidneySSLError

    return KidneySSLError(f"SLURM runs several tasks but {what}; start one task per GPU with srun, "
                          "or start the processes with torchrun (srun ... torchrun ...)")


def launch_environment(environ: Mapping[str, str] | None = None) -> LaunchEnvironment:
    """This process's place in the job, from the launcher's environment (module docstring).

    Args:
        environ: the environment to read (default ``os.environ``).

    Raises:
        KidneySSLError: a SLURM allocation of several tasks in which this process was not started
            by ``srun``, or a SLURM task that lacks what is needed to meet the others
            (``SLURM_LOCALID``, a node list or ``MASTER_ADDR``, ``SLURM_JOB_ID`` or ``MASTER_PORT``).
    """
    env = os.environ if environ is None else environ
    world = _int_env(env, "WORLD_SIZE")
    if world is not None:
        if world <= 1:
            return LaunchEnvironment()
        return LaunchEnvironment(_int_env(env, "RANK") or 0, world, _int_env(env, "LOCAL_RANK") or 0, "torchrun")
    tasks = _int_env(env, "SLURM_STEP_NUM_TASKS") or _int_env(env, "SLURM_NTASKS") or 1
    rank = _int_env(env, "SLURM_PROCID")
    if tasks <= 1 or rank is None:
        return LaunchEnvironment()
    if not (env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")):
        raise _refuse_slurm(f"this process was not started by srun (no SLURM_STEP_ID; {tasks} tasks "
                            "allocated); set WORLD_SIZE=1 to run one process")
    local_rank = _int_env(env, "SLURM_LOCALID")
    if local_rank is None:
        raise _refuse_slurm("SLURM_LOCALID is not set")
    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        nodelist = next((env[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                         if env.get(k, "").strip()), None)
        if nodelist is None:
            raise _refuse_slurm("neither MASTER_ADDR nor a node list (SLURM_JOB_NODELIST) is set")
        try:
            addr = expand_nodelist(nodelist)[0]
        except ValueError as err:
            raise _refuse_slurm(f"its node list cannot be read ({err})") from None
    port = _int_env(env, "MASTER_PORT")
    if port is None:
        job_id = _int_env(env, "SLURM_JOB_ID") or _int_env(env, "SLURM_JOBID")
        if job_id is None:
            raise _refuse_slurm("neither MASTER_PORT nor SLURM_JOB_ID is set")
        port = slurm_master_port(job_id)
    host = f"[{addr}]" if ":" in addr else addr  # an IPv6 address
    return LaunchEnvironment(rank, tasks, local_rank, "slurm", f"tcp://{host}:{port}")
