"""RunLog: curves into dvclive when it is installed; without it (the GPU machine) training still logs its history."""

import json
import sys

from pvkd.train.tracking import RunLog


def test_run_log_writes_dvclive_files(tmp_path):
    log = RunLog(tmp_path / "live")
    log.log(10, {"train/loss": 1.5})
    log.set_summary("best", {"val/miou": 0.25})
    log.close()
    assert log.history == [{"step": 10, "metrics": {"train/loss": 1.5}}]
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["train"]["loss"] == 1.5


def test_run_log_without_dvclive_keeps_history(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dvclive", None)  # `import dvclive` raises ImportError
    log = RunLog(tmp_path / "live")
    log.log(10, {"train/loss": 1.5})
    log.set_summary("best", {"val/miou": 0.25})
    log.close()
    assert log.live is None
    assert log.history == [{"step": 10, "metrics": {"train/loss": 1.5}}]
    assert not (tmp_path / "live").exists()
    assert "dvclive is not installed" in capsys.readouterr().err
