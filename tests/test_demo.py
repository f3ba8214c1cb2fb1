"""The README's main job, `softorder demo`, at a few iterations."""

import json

from softorder.cli import main


def test_demo_prints_table_and_writes_figure(tmp_path, capsys):
    assert main(["demo", "--iterations", "20", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for task in ("iris", "wine", "breast-cancer", "digits", "mean"):
        assert task in out
    assert "parallel" in out and "soft" in out
    assert (tmp_path / "layer_usage.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["test_error"]) == {"parallel", "soft"}
