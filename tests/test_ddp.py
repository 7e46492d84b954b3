"""DDP: two CPU processes (gloo) train the teacher for 3 steps and end with identical replicas."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from model.training.teacher import ClipBatches, Trainer
from tests.helpers import SyntheticClips, text_table, tiny_config

WORLD = 2


def _worker(rank: int, tmp: str, budget: bool = False) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        from model.nets.autoencoder import Autoencoder, autoencoder_config

        cfg = tiny_config(steps=3, batch=4, ckpt_every=3)
        if budget:  # only rank 0's clock runs out: both ranks must still stop at the same step
            cfg = tiny_config(steps=50, batch=4, ckpt_every=50, max_minutes=1e-9 if rank == 0 else 0.0)
        trainer = Trainer.create(cfg, Autoencoder(autoencoder_config("tiny")), f"{tmp}/ckpt",
                                 torch.device("cpu"), rank, WORLD)
        tokens, mask = text_table()
        batches = ClipBatches(SyntheticClips(), tokens, mask, cfg.batch, rank, WORLD, cfg.seed)
        first = batches(0, torch.device("cpu")).latents
        trainer.train(batches)
        state = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
        state.update({f"ema/{k}": v for k, v in trainer.ema.state_dict().items()})
        state["first_batch"] = first
        state["steps"] = torch.tensor(trainer.step)
        save_file({k: v.contiguous() for k, v in state.items()}, f"{tmp}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_replicas_stay_identical(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    assert not torch.equal(r0.pop("first_batch"), r1.pop("first_batch"))  # each rank saw its own shard
    assert int(r0["steps"]) == int(r1["steps"]) == 3
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    initial = Trainer.create(tiny_config(), _tiny_ae(), tmp_path / "unused", torch.device("cpu"))
    assert not torch.equal(r0["model/final.weight"], initial.model.state_dict()["final.weight"])  # it trained
    assert (tmp_path / "ckpt" / "config.json").exists()  # rank 0 saved


def _tiny_ae():
    from model.nets.autoencoder import Autoencoder, autoencoder_config

    return Autoencoder(autoencoder_config("tiny"))


def test_a_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path), True), nprocs=WORLD, join=True)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    assert int(r0["steps"]) == int(r1["steps"]) == 1
    for key in r0.keys() - {"first_batch"}:
        assert torch.equal(r0[key], r1[key]), key
    assert (tmp_path / "ckpt" / "config.json").exists()  # saved when the budget ran out
