"""pLTE pre-training on 2 CPU processes (torchrun, gloo): the ranks end with identical weights, equal to a
single-process run of the same configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import build_hf_model
from explainers import load_explainee
from explainers.learned import LTEConfig
from explainers.learned.lte.pretrain import pretrain_lte
from test_lte_pretrain import TINY, TinyImages, assert_trained, initial_weights

TESTS = Path(__file__).resolve().parent

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from conftest import build_hf_model
    from test_lte_pretrain import TINY, TinyImages
    from explainers import load_explainee
    from explainers.learned import LTEConfig
    from explainers.learned.lte.pretrain import pretrain_lte

    out = sys.argv[1]
    cfg = LTEConfig(**{{**TINY, "epochs": 2, "validate_initial": False}})
    result = pretrain_lte(load_explainee(build_hf_model()), TinyImages(), out, cfg, progress=False)
    rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
    state = {{k: v.tolist() for k, v in result.last.net.state_dict().items()}}
    with open(f"{{out}}/rank{{rank}}.json", "w") as fh:
        json.dump({{"state": state, "log": result.log}}, fh)
    """
)


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.trainer
def test_two_processes_hold_identical_weights(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests=str(TESTS)))
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(worker),
            str(tmp_path / "ddp"),
        ],
        tmp_path,
    )
    r0, r1 = (json.loads((tmp_path / "ddp" / f).read_text()) for f in ("rank0.json", "rank1.json"))
    assert r0["state"] == r1["state"], "DDP ranks diverged"
    # The loss is scaled so that the averaged gradient is the single-process one: same training.
    torch.set_num_threads(1)
    single = pretrain_lte(
        load_explainee(build_hf_model()),
        TinyImages(),
        tmp_path / "single",
        LTEConfig(**{**TINY, "epochs": 2, "validate_initial": False}),
        progress=False,
    )
    for k, v in single.last.net.state_dict().items():
        torch.testing.assert_close(torch.tensor(r0["state"][k]), v, rtol=1e-4, atol=1e-5)
    assert [r["val_pos_auc"] for r in r0["log"]] == [r["val_pos_auc"] for r in single.log]
    meta = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert meta["training"]["processes"] == 2
    cfg = LTEConfig(**{**TINY, "epochs": 2, "validate_initial": False})
    assert_trained(single.last.net.state_dict(), initial_weights(single.last.adapter, cfg))
