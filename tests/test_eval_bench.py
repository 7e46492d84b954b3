"""`run_world.py bench`: one JSON line with a row per sampler (or the engine) and their ratios."""

import json

import pytest

import run_world

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py



def _bench(capsys, *args):
    assert run_world.main(["bench", "--json", "--matmul-seconds", "0.1", "--warmup", "1", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_engine_row(capsys):
    report = _bench(capsys, "--backend", "engine", "--chunks", "4")
    row = report["samplers"]["engine"]
    assert report["matmul_gflops"] > 0 and report["ratios"] == {}
    assert row["fps"] > 0 and row["nfe_per_chunk"] == 0 and row["peak_mem_mb"] > 0
    assert row["chunk_ms_p95"] >= row["chunk_ms_p50"] > 0
    assert row["matmul_fraction"] is None  # numpy renderer: no torch FLOPs to count
    # No reset view: the user's first frames come from the first step_chunk.
    assert row["first_frames_ms"] == row["reset_plus_step_ms"] == row["first_chunk_ms"] > 0
    assert row["nfe_first_chunks"] == [0, 0, 0]


def test_samplers_on_one_checkpoint(capsys, tmp_path):
    from model.runtime.world_model import make_random_world

    ckpt = make_random_world(tmp_path / "world")
    report = _bench(capsys, "--checkpoint", str(ckpt), "--samplers", "uniform,diagonal", "--chunks", "3")
    uni, diag = report["samplers"]["uniform"], report["samplers"]["diagonal"]
    assert uni["nfe_per_chunk"] == 5  # 4 steps + refresh
    assert diag["nfe_per_chunk"] == 2  # steady state of 4-3-2-2...
    assert report["ratios"]["diagonal/uniform"] == pytest.approx(1 / report["ratios"]["uniform/diagonal"])
    for row in (uni, diag):
        assert row["gflop_per_chunk"] > 0 and 0 < row["matmul_fraction"]
        assert row["first_chunk_ms"] > 0 and row["peak_mem_mb"] > 0
    assert uni["gflop_per_chunk"] > diag["gflop_per_chunk"]  # more network evaluations per chunk
    for row in (uni, diag):  # the reset view is the first chunk: the user waits for the reset only
        assert 0 < row["first_frames_ms"] < row["reset_plus_step_ms"]
        assert row["first_chunk_ms"] == row["first_frames_ms"] and row["cold_first_chunk_ms"] > 0
    assert diag["nfe_first_chunks"] == [4, 3, 2]  # reset view (chunk 0), then chunks 1 and 2


def test_unknown_sampler_is_a_clear_error(capsys, tmp_path):
    from model.runtime.world_model import make_random_world

    ckpt = make_random_world(tmp_path / "world")
    args = ["bench", "--checkpoint", str(ckpt), "--samplers", "nope", "--matmul-seconds", "0.05"]
    assert run_world.main(args) == 2
    assert "nope" in capsys.readouterr().err


def test_sampler_specs_pick_a_schedule_or_a_step_count():
    from model.evaluation.bench import sampler_options

    assert sampler_options("diagonal") == {"sampler": "diagonal"}
    assert sampler_options("diagonal:4-3-1") == {"sampler": "diagonal", "schedule": [4, 3, 1]}
    assert sampler_options("uniform:1") == {"sampler": "uniform", "steps": 1}
    for bad in ("diagonal:4,3", "uniform:2-1", "teacher:x"):
        with pytest.raises(ValueError, match="bench: sampler"):
            sampler_options(bad)
