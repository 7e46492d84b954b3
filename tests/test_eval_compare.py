"""model.evaluation.compare: one table row per labelled eval run, a grouped-bar PNG, clear errors."""

from __future__ import annotations

import json

import pytest

from model.evaluation.compare import MISSING, UNDEFINED, CompareError, load_runs, main, parse_run, sampler_text

# Keys as `run_world.py eval` writes them (see runs/eval/*/results.json); nan is written as null.
STUDENT = {
    "backend": "generated", "sampler": "diagonal", "steps": None, "schedule": [5, 4, 3, 2], "context_noise": 250.0,
    "sampler_config": {"name": "diagonal", "steps": [5, 4, 3, 2], "refresh": False, "guidance": 0.0,
                       "update": "renoise", "context_noise": 250.0},
    "quick": True, "seconds": 321.4,
    "action_f1": 0.4123, "action_f1_ceiling": 0.9, "action_ratio_to_ceiling": 0.458, "action_f1_chance": 0.111,
    "prompt_accuracy": 0.625, "prompt_accuracy_heldout": 0.5, "switch_chunks": None,
    "psnr_1chunk": 17.25, "psnr_10chunk": 15.04, "fd_mean": 212.3,
    "drift_saturation_pct": 12.34, "drift_contrast_pct": 4.56, "motion_ratio": 0.731,
}  # fmt: skip
ENGINE = {
    "backend": "engine", "sampler": None, "quick": False, "seconds": 39.7,
    "action_f1": 0.938, "action_ratio_to_ceiling": 1.0, "action_f1_chance": 0.123,
    "prompt_accuracy": 0.92, "prompt_accuracy_heldout": 0.92, "switch_chunks": 1,
}  # fmt: skip
OLD_TEACHER = {"backend": "generated", "sampler": "teacher", "steps": None, "action_f1": 0.094}  # before schedule keys


def write(tmp_path, name: str, results) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results))
    return str(d / "results.json")


def rows(markdown: str) -> dict[str, list[str]]:
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    out = {}
    for line in table[2:]:  # after the header and its --- line
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(header, cells))
    return out


def test_table_and_png(tmp_path):
    student = write(tmp_path, "student", STUDENT)
    engine_dir = write(tmp_path, "engine", ENGINE).removesuffix("/results.json")  # a directory works too
    teacher = write(tmp_path, "teacher", OLD_TEACHER)
    out, png = tmp_path / "reports" / "cmp.md", tmp_path / "images" / "cmp.png"
    rc = main(["--out", str(out), "--png", str(png), "--title", "Schedule ablation",
               f"5-4-3-2 t=250={student}", f"engine={engine_dir}", f"teacher={teacher}"])  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert text.startswith("# Schedule ablation\n") and "![Schedule ablation](../images/cmp.png)" in text
    table = rows(text)
    assert list(table) == ["5-4-3-2 t=250", "engine", "teacher"]  # in the order given; '=' inside a label is fine
    s, e, t = table["5-4-3-2 t=250"], table["engine"], table["teacher"]
    assert (s["action F1"], s["F1 / ceiling"], s["F1 chance"]) == ("0.412", "0.46", "0.111")
    assert (s["prompt acc. train"], s["prompt acc. held-out"]) == ("0.62", "0.50")
    assert s["switch chunks"] == UNDEFINED  # measured, never agreed (null)
    assert (s["PSNR dB 1 / 10 chunks"], s["FD"]) == ("17.2 / 15.0", "212.3")
    assert (s["drift sat. % (max abs)"], s["drift contrast % (max abs)"]) == ("12.3", "4.6")
    assert s["motion / engine"] == "0.73"
    assert (s["sampler"], s["run"], s["eval s"]) == ("diagonal 5-4-3-2, t=250", "quick", "321")
    assert (e["sampler"], e["switch chunks"], e["FD"], e["motion / engine"], e["run"]) == ("engine", "1.0", MISSING,
                                                                                          MISSING, "full")
    assert (t["action F1"], t["sampler"], t["eval s"], t["PSNR dB 1 / 10 chunks"]) == ("0.094", "teacher", MISSING,
                                                                                       MISSING)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_sampler_text_without_the_effective_config():
    cli_only = {"backend": "generated", "sampler": "diagonal", "schedule": [4, 3, 2], "context_noise": 100.0}
    assert sampler_text(cli_only) == "diagonal 4-3-2, t=100"
    assert sampler_text({"backend": "generated", "sampler": None, "steps": None}) == "checkpoint default"
    assert sampler_text({"backend": "generated", "sampler": "uniform", "steps": 2}) == "uniform 2 steps"
    assert sampler_text({"action_f1": 0.5}) == MISSING


def test_without_png_no_image(tmp_path):
    out = tmp_path / "only.md"
    assert main(["--out", str(out), f"a={write(tmp_path, 'a', STUDENT)}"]) == 0
    assert "![" not in out.read_text() and "| a | 0.412 |" in out.read_text()
    assert list(tmp_path.glob("**/*.png")) == []


@pytest.mark.parametrize("arg, message", [
    ("no-equals-sign", "expected LABEL=path"),
    ("=x/results.json", "expected LABEL=path"),
    ("label=", "expected LABEL=path"),
])  # fmt: skip
def test_malformed_arguments(arg, message):
    with pytest.raises(CompareError, match=message):
        parse_run(arg)


def test_bad_files(tmp_path, capsys):
    good = write(tmp_path, "good", STUDENT)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    (tmp_path / "empty-dir").mkdir()  # an eval directory without its results.json
    for args, message in (
        ([f"a={tmp_path / 'missing' / 'results.json'}"], "does not exist"),
        ([f"a={tmp_path / 'empty-dir'}"], "does not exist"),
        ([f"a={broken}"], "not a readable JSON file"),
        ([f"a={listing}"], "holds a list"),
        ([f"a={good}", f"a={good}"], "repeated: a"),
        (["oops"], "expected LABEL=path"),
    ):
        with pytest.raises(CompareError, match=message):
            load_runs(args)
        out = tmp_path / "never.md"
        assert main(["--out", str(out), *args]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):  # argparse: at least one run, --out required
        main(["--out", str(tmp_path / "x.md")])
