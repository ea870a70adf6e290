import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pfl_cli_writes_the_workdir_contract(tmp_path):
    wd = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.pfl", f"--workdir={wd}",
           "--config=experiments/configs/pfl.py:quick", "--config.rounds=2", "--config.num_clients=4",
           "--config.model=mlp", "--config.dataset=digits8", "--config.algorithm=fedper"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAXLAB_NO_PROGRESS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    for f in ("config.json", "metrics.jsonl", "summary.json", "accuracy.png", "partition.png", "partition.md"):
        assert (wd / f).exists(), f
    summary = json.loads((wd / "summary.json").read_text())
    rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert summary["best_acc"] == max(r["acc"] for r in rows) and summary["last_acc"] == rows[-1]["acc"]
    cfg = json.loads((wd / "config.json").read_text())
    assert cfg["config"]["algorithm"] == "fedper" and cfg["environment"]["jax"]
    assert os.path.isdir(wd / "checkpoints")


def test_pfl_config_presets_and_errors():
    from experiments.configs.pfl import get_config

    assert get_config("paper").dataset == "fashion_mnist" and get_config("paper").lr == 0.005
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("huge")
