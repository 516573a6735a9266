"""Helpers shared by the tests that launch real `okd train` processes (tests/test_reliability.py,
tests/test_scale_*.py): their environment, a free port, the output files they compare."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("student/model.safetensors", "online_module/adapter_model.safetensors")


def launch_env(**extra) -> dict:
    """One thread per process, offline, okd importable; WORLD_SIZE left to the launcher."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_launch_shim(kind: str, distributed_type: str, extra: str = "") -> str:
    """The text of a script that `accelerate launch` runs instead of `okd`: accelerate enables FSDP and
    DeepSpeed only on accelerators, so the shim joins the CPU processes over gloo as `distributed_type`
    when ACCELERATE_USE_<kind> is set, runs `extra` (test hooks), then okd's CLI. With
    OKD_TEST_INTERRUPT_AFTER_STEP=N every process sees a Ctrl-C after step N."""
    return f'''
import os, sys
from accelerate.state import PartialState
from accelerate.utils import DistributedType

_prepare_backend = PartialState._prepare_backend


def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    if os.environ.get("ACCELERATE_USE_{kind}", "false").lower() == "true" and int(os.environ.get("LOCAL_RANK", -1)) != -1:
        return "gloo", DistributedType.{distributed_type}
    return _prepare_backend(self, cpu, sagemaker_dp, backend)


PartialState._prepare_backend = prepare_backend
os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")

''' + INTERRUPT_HOOK + extra + """
from okd.cli import main  # noqa: E402

sys.exit(main())
"""


INTERRUPT_HOOK = '''stop = int(os.environ.get("OKD_TEST_INTERRUPT_AFTER_STEP", "0"))
if stop:  # a Ctrl-C noticed after step `stop` on every process
    import okd.train.trainer as trainer

    calls = {"n": 0}

    def requested(self, accelerator):
        calls["n"] += 1
        return calls["n"] >= stop

    trainer.GracefulInterrupt.requested = requested

'''


EXIT_ABORT = "terminate called without an active exception"


def finished_ok(r, out) -> bool:
    """A launch that succeeded: exit 0, or the known abort of a process at interpreter exit (gloo/DeepSpeed
    threads torn down by C++ destructors, seen in a few percent of 2-process CPU launches, more on a loaded
    machine) after every output was written and no Python error was raised."""
    return exited_ok(r) and (r.returncode == 0 or ((out / "summary.json").is_file()
                                                   and (out / "student" / "config.json").is_file()))


def exited_ok(r) -> bool:
    """Exit 0, or only the known exit-time abort (no Python error raised by any process)."""
    if r.returncode == 0:
        return True
    # (the launcher itself prints a traceback when a process dies; the processes' own would say [rankN]:)
    return EXIT_ABORT in r.stderr and "]: Traceback" not in r.stderr and "okd: error" not in r.stderr


SEED_PER_RANK = r'''
if os.environ.get("OKD_TEST_SEED_PER_RANK"):  # other random streams on each process (samples of other lengths)
    import accelerate.utils

    _set_seed = accelerate.utils.set_seed
    accelerate.utils.set_seed = lambda seed, *a, **k: _set_seed(seed + int(os.environ.get("RANK", "0")), *a, **k)

'''

# DeepSpeed ZeRO-3 on CPU processes (tests/test_scale_deepspeed.py's module doc), with its test hooks
DS_SHIM = cpu_launch_shim("DEEPSPEED", "MULTI_CPU", extra=r'''
import importlib  # noqa: E402
# an inference all-reduce kernel that DeepSpeed compiles on first use (a minute, needs a compiler): not used here
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

if os.environ.get("OKD_TEST_DEEPSPEED_RELEASE"):  # free every gathered weight after its use, as with models larger
    import okd.train.sharding as sharding           # than stage3_max_live_parameters: each forward all-gathers

    _configure = sharding.configure_deepspeed

    def configure_deepspeed(cfg, accelerator):
        ds = _configure(cfg, accelerator)
        ds["zero_optimization"].update(stage3_max_live_parameters=0, stage3_max_reuse_distance=0,
                                       stage3_prefetch_bucket_size=0)
        return ds

    sharding.configure_deepspeed = configure_deepspeed
    import okd.train.strategy
    okd.train.strategy.configure_deepspeed = configure_deepspeed

''' + SEED_PER_RANK)

FSDP_SHIM = cpu_launch_shim("FSDP", "MULTI_GPU", extra=SEED_PER_RANK)
ACCELERATE_CONFIGS = {"ddp": "cpu_ddp.yaml", "fsdp": "cpu_fsdp.yaml", "zero3": "cpu_deepspeed_zero3.yaml"}


def launch_train(tmp_path: Path, strategy: str, args: list[str], out: Path, timeout: int = 600, **env):
    """`okd train` on 2 CPU processes through `accelerate launch` under `strategy` (ddp | fsdp | zero3),
    through the shim of that strategy (DDP through the FSDP one, which then only adds the test hooks)."""
    import subprocess
    import sys

    shim = tmp_path / f"okd_{strategy}_cpu.py"
    shim.write_text(DS_SHIM if strategy == "zero3" else FSDP_SHIM)
    extra = {"ddp": {"ACCELERATE_USE_CPU": "1"}, "zero3": {"DS_ACCELERATOR": "cpu"}}.get(strategy, {})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / ACCELERATE_CONFIGS[strategy]), "--main_process_port",
           str(free_port()), str(shim), "train", "--quiet", *args, f"output_dir={out}"]
    return subprocess.run(cmd, env=launch_env(**extra, **env), capture_output=True, text=True, timeout=timeout)
