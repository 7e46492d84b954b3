"""Turn a training checkpoint into a bundle-sized playable world: release weights only.

    python -m model.tools.release runs/student/dmd assets/default_world [--note key=value ...]
    python -m model.tools.release RUN assets/teacher --steps 8 --guidance 0   # how it plays by default
    python -m model.tools.release RUN assets/default_world --schedule 4,3,1   # a diagonal schedule

Training checkpoints carry what resuming needs (fp32 train state, optimiser moments, the online
generator, the critic): tens of MiB that a player never reads. A release keeps the kind="world"
layout with exactly two modules, "dit" (the checkpoint's release weights, EMA for a student)
and "autoencoder", stored fp16, plus the checkpoint's WorldConfig (sampler, schedule,
context_noise: the values the weights were distilled with) and its step. --steps, --guidance and
--schedule set the sampler's defaults in that WorldConfig: the setting a teacher was measured with, so that
`play --checkpoint` plays what its model card reports. Every file is checked
against the 16 MiB limit for committed files before anything is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from model.common.checkpoint import CheckpointError
from model.runtime.world_model import load_world_model, save_world

MAX_FILE_MIB = 16.0  # committed files stay <= 16 MiB (developers' guide)


def release_world(source: str | Path, target: str | Path, notes: dict | None = None, step_offset: int = 0,
                  sampler: dict | None = None) -> Path:
    """Write source's playable world (dit + autoencoder, fp16) to target, replacing it atomically.
    step_offset: steps the weights had before this run (a run warm-started from a release counts
    from 0), so the release states the network's whole training. sampler: WorldConfig sampler
    defaults to set (steps, guidance, schedule), checked by building that sampler before anything is written."""
    from model.runtime.world_model import world_sampler

    model = load_world_model(source, "cpu", with_text_encoder=False)
    world = replace(model.config, notes={**model.config.notes, "released_from": str(source), **(notes or {})},
                    **(sampler or {}))
    try:
        world_sampler(world)
    except ValueError as e:
        raise CheckpointError(f"the sampler defaults do not make a sampler: {e}") from None
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make the bundled directory private
    try:
        save_world(staging, model.dit, model.autoencoder, world, model.step + step_offset)
        too_big = [(p.name, p.stat().st_size / 2**20) for p in staging.iterdir()
                   if p.stat().st_size / 2**20 > MAX_FILE_MIB]
        if too_big:
            raise CheckpointError(f"release files over {MAX_FILE_MIB:g} MiB: {too_big}")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="world checkpoint (or training run directory holding checkpoint/)")
    parser.add_argument("target", help="release directory to write (replaced), e.g. assets/default_world")
    parser.add_argument("--note", action="append", default=[], help="key=value provenance note (repeatable)")
    parser.add_argument("--step-offset", type=int, default=0, help="steps the weights had before the run (a run "
                        "warm-started from a release of step N: N), added to the recorded step")
    parser.add_argument("--steps", type=int, help="the release's default sampler steps (e.g. 8: what it was measured "
                        "with)")
    parser.add_argument("--guidance", type=float, help="the release's default guidance (0: none)")
    parser.add_argument("--schedule", help="the release's diagonal schedule, e.g. 4,3,1 (what it was measured "
                        "with; default: the one it was distilled with)")
    args = parser.parse_args(argv)
    sampler = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance)) if v is not None}
    if args.schedule is not None:
        from model.diffusion.samplers import parse_schedule

        try:
            sampler["schedule"] = parse_schedule(args.schedule)
        except ValueError as e:
            print(f"release: --schedule: {e}", file=sys.stderr)
            return 2
    try:
        notes = dict(item.split("=", 1) for item in args.note)
    except ValueError:
        print(f"release: --note takes key=value, got {args.note}", file=sys.stderr)
        return 2
    try:
        if args.step_offset < 0:
            raise CheckpointError(f"--step-offset must be >= 0, got {args.step_offset}")
        if args.step_offset:
            notes["step_offset"] = str(args.step_offset)
        out = release_world(args.source, args.target, notes, args.step_offset, sampler)
    except CheckpointError as e:
        print(f"release: {e}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.2f} MiB" for p in sorted(out.iterdir()))
    print(f"release: {out} ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
