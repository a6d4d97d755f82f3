"""CLI contract: user errors are one line on stderr with exit status 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import build_hf_model
from explainers.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_user_error_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["info", "--explainee", str(tmp_path / "nothing-here")], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "explainee directory not found" in err
    assert "Traceback" not in err


def test_info_describes_a_model_directory(tmp_path, capsys):
    build_hf_model("deit-distilled").save_pretrained(tmp_path / "deit")
    code, out, _ = run_cli(["info", "--explainee", str(tmp_path / "deit")], capsys)
    assert code in (0, None)
    desc = json.loads(out)
    assert desc["num_prefix_tokens"] == 2 and desc["grid"] == [4, 4] and desc["num_classes"] == 5


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "explainers", "methods"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "random" in proc.stdout.split()
