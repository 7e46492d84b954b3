"""model.evaluation.history: a long run's scoreboards plotted and tabled against training time."""

from __future__ import annotations

import json

from PIL import Image

from model.evaluation.history import main, read_history, table


def _board(path, acc: float) -> None:
    path.write_text(json.dumps({
        "counterfactual_accuracy": acc, "counterfactual_chance": 0.2, "counterfactual_spread_ratio": 0.5,
        "teacher_forced_psnr_mean": 20.0 + acc, "teacher_forced_psnr_copy_last_mean": 19.0,
        "teacher_forced_gain_min": acc - 1, "teacher_forced_gain_min_class": "forward",
        "psnr_10chunk": 15.0, "psnr_still_10chunk": 16.0,
    }))


def test_history_rows_plot_and_table(tmp_path, capsys):
    (tmp_path / "scoreboard").mkdir()
    _board(tmp_path / "scoreboard" / "a.json", 0.3)
    _board(tmp_path / "scoreboard" / "b.json", 0.5)
    (tmp_path / "history.csv").write_text("step,train_hours,scoreboard\n200,1.0,scoreboard/b.json\n"
                                          "100,0.5,scoreboard/a.json\n300,1.5,scoreboard/missing.json\n")
    rows = read_history(tmp_path)
    assert [r["step"] for r in rows] == [100, 200]  # sorted by time; a missing scoreboard is skipped
    assert "| 200 | 1.00 | 0.500 (0.20) |" in table(rows)
    out = tmp_path / "h.png"
    assert main([str(tmp_path), "--out", str(out), "--table", str(tmp_path / "t.md")]) == 0
    assert Image.open(out).width > 0 and (tmp_path / "t.md").read_text().count("\n") == 4
    assert main([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "no history" in capsys.readouterr().err
