"""Distil the teacher into the few-step diagonal student: ODE-pair initialisation, then DMD.

    python run_world.py train student --stage init --teacher T --latents CACHE --out RUN [--pairs 256]
        [--steps N] [--batch 8] [--schedule 4,3,2] [--context-noise 100] [--device auto] [--resume]
        [--max-minutes M]
    python run_world.py train student --stage dmd --teacher T --out RUN [--init RUN/init] [--steps N]
        [--batch 4] [--generator-every 5] [--device auto] [--resume] [--max-minutes M]

RUN/ode_pairs/   the teacher's ODE trajectories under latent-cache actions (model/training/ode_pairs.py),
                 made once by the init stage (resumable per shard) and read by both stages
RUN/init/        checkpoint/ + student_init.csv/png: the student regressed onto the pairs (CausVid)
RUN/dmd/         checkpoint/ + student_dmd.csv/png: the distilled student (pass RUN/dmd to the
                 generated backend; its default sampler is "diagonal")

Both checkpoints are playable kind="world" directories whose WorldConfig records the diagonal
schedule and `context_noise`: the run builds ONE sampler from them (`StudentTrainConfig.sampler`),
its rollouts write context K/V at that level, and inference rebuilds the identical sampler from
the checkpoint (docs/design.md §3: training and inference must use the same context noise).

DMD stage (docs/design.md §3): Self-Forcing rollouts of the generator with the diagonal schedule and
the KV cache, one random exit step per chunk with gradient; DMD + flow DMD on temporal
differences + dx regression onto the teacher's pair (model/training/distill.py); the critic (fake score,
initialised from the teacher) trains every step on detached samples, the generator every
`generator_every`-th; AdamW betas (0, 0.999); "dit" in the checkpoint is the generator's EMA.

All randomness of step s comes from a generator seeded by (seed, s) and the data order from the
step, so `--resume` continues exactly; `--max-minutes` saves and stops (rerun with --resume).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from model.common.checkpoint import (
    TRAIN_STATE_FILE,
    CheckpointError,
    has_train_state,
    load_module,
    module_sha256,
    read_checkpoint_config,
)
from model.common.configs import add_options, given_options, option, replace_config
from model.common.device import resolve_device, torch_threads
from model.common.runlog import RunLog
from model.diffusion.samplers import (
    CONTEXT_NOISE,
    DIAGONAL_SCHEDULE,
    FEW_STEP_GRID,
    Sampler,
    diagonal_grid,
    make_sampler,
    parse_schedule,
)
from model.nets import count_parameters
from model.nets.world_net import WorldNet
from model.runtime.stream import Conditioning
from model.runtime.world_model import KIND, WorldConfig, load_world_model, save_world
from model.training import loop
from model.training.distill import (
    DMDConfig,
    critic_loss,
    generator_losses,
    motion,
    ode_regression_loss,
    sample_exits,
    self_forcing_rollout,
)
from model.training.ode_pairs import (
    OdePairs,
    OdePairsConfig,
    OdePairsError,
    build_ode_pairs,
    pairs_complete,
    pairs_meta,
)

PAIRS_SUBDIR = "ode_pairs"
STAGES = ("init", "dmd")


def _schedule(text: str) -> list[int]:
    """--schedule 4,3,2: the syntax the eval and play options share (model.diffusion.samplers.parse_schedule)."""
    try:
        return parse_schedule(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


PRESET = "(default: the stage's preset)"


@dataclass
class StudentTrainConfig:
    """The run's settings; a field with help is also a `train student` option, given over the stage's
    preset (model/common/configs.py)."""

    stage: str = "dmd"  # "init" (ODE regression) | "dmd" (distribution matching)
    steps: int = option(2000, help=f"total steps of this stage {PRESET}")
    batch: int = option(4, help=f"rollouts/pairs per step {PRESET}")
    lr: float = option(1e-5, help=f"generator (init: student) learning rate {PRESET}")
    critic_lr: float = option(1e-5, help=f"critic learning rate {PRESET}")
    betas: tuple[float, float] = (0.0, 0.999)  # docs/design.md §3 (DMD): AdamW betas (0, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 10.0
    ema_decay: float = option(0.99, help=f"dmd: generator EMA decay (updated on generator steps) {PRESET}")
    generator_every: int = option(5, help=f"dmd: generator update every N critic steps {PRESET}")
    # Self-Forcing rollouts long enough to reach where the teacher breaks (chunk 3) vs shorter ones
    # (the ablation of docs/student-unet.md): the first N chunks of each pair.
    rollout_chunks: int = option(0, help="dmd: chunks per rollout, the first of each pair's (0: all the pairs have)")
    schedule: list[int] = option(default_factory=lambda: list(DIAGONAL_SCHEDULE), parse=_schedule,
                                 help="diagonal steps per chunk, e.g. 4,3,2 (default: the resumed/init "
                                 "checkpoint's, else 4,3,2)")
    # THE context level: rollouts, checkpoint, inference
    context_noise: float = option(CONTEXT_NOISE, help="network time of the context K/V (default: the resumed/init "
                                  f"checkpoint's, else {CONTEXT_NOISE:g})")
    shift: float = 3.0  # the teacher's flow shift (taken from its WorldConfig)
    dmd: DMDConfig = option(default_factory=DMDConfig, nested=True)
    pairs: OdePairsConfig = option(default_factory=OdePairsConfig, nested=True)
    seed: int = option(0, help=f"seed of data order and noise {PRESET}")
    ckpt_every: int = option(100, help=f"steps between checkpoints {PRESET}")
    log_every: int = option(10, help=f"steps between metric rows {PRESET}")
    text_encoder: str = "minilm"  # the teacher's (and the latent cache's) text encoder

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.rollout_chunks < 0:
            raise ValueError(f"rollout_chunks must be >= 0 (0: the pairs' length), got {self.rollout_chunks}")
        if min(self.steps, self.batch, self.generator_every, self.ckpt_every, self.log_every) < 1:
            raise ValueError("steps, batch, generator_every, ckpt_every and log_every must be >= 1")
        self.sampler()  # a schedule that cannot work is refused here, before any work
        if max(self.schedule) > FEW_STEP_GRID:  # the ODE pairs and rollouts live on the 4-level grid
            raise ValueError(f"distillation trains on the {FEW_STEP_GRID}-level diagonal grid; schedule "
                             f"{list(self.schedule)} has more steps per chunk (5-4-3-2 is an inference ablation)")

    def sampler(self) -> Sampler:
        """The run's diagonal sampler: its rollouts use it, its checkpoints record it."""
        return make_sampler("diagonal", schedule=self.schedule, shift=self.shift, context_noise=self.context_noise)


STUDENT_PRESETS: dict[str, StudentTrainConfig] = {
    # CausVid regression: an ordinary supervised problem, ordinary AdamW.
    "init": StudentTrainConfig(stage="init", steps=1000, batch=8, lr=1e-4, betas=(0.9, 0.999), ckpt_every=100),
    "dmd": StudentTrainConfig(stage="dmd", steps=2000, batch=4, lr=1e-5, critic_lr=1e-5, ckpt_every=50),
}


@dataclass
class Teacher:
    dit: WorldNet  # frozen, eval
    autoencoder: torch.nn.Module
    world: WorldConfig
    identity: dict  # {"step", "sha256"} of its weights: ODE pairs belong to exactly one teacher


def load_teacher(path: str | Path, device: torch.device) -> Teacher:
    model = load_world_model(path, device, with_text_encoder=False)
    meta = read_checkpoint_config(model.directory, kind=KIND)
    identity = {"step": model.step, "sha256": module_sha256(model.directory, "dit", meta)}
    return Teacher(model.dit, model.autoencoder, model.config, identity)


def trainable_copy(dit: WorldNet) -> WorldNet:
    return copy.deepcopy(dit).requires_grad_(True).train()


def load_start_weights(directory: Path, dit: WorldNet) -> None:
    """A checkpoint's "dit": fp32 from its train state when it has one, else the fp16 release file."""
    if not has_train_state(directory):
        load_module(directory, "dit", dit)
        return
    prefix = "module/dit/"
    state = {k[len(prefix):]: v for k, v in load_file(str(directory / TRAIN_STATE_FILE)).items()
             if k.startswith(prefix)}
    try:
        dit.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{directory / TRAIN_STATE_FILE}: its dit does not match the teacher's ({e})") from None


def make_optimizer(params, lr: float, cfg: StudentTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------- the loop


class StageTrainer:
    """What every stage shares: teacher, pairs, checkpoints, the run through model/training/loop.py;
    subclasses own one step (`train_step`) and their state (`modules`, `optimizers`)."""

    name = ""
    plot_keys: tuple[str, ...] = ()

    def __init__(self, cfg: StudentTrainConfig, teacher: Teacher, pairs: OdePairs, out: str | Path,
                 device: torch.device):
        self.cfg, self.teacher, self.pairs, self.device = cfg, teacher, pairs, device
        self.out = Path(out)
        self.sampler = cfg.sampler()
        self.step = 0
        self.stopped = False  # True when the deadline ended the run before cfg.steps
        self._log: RunLog | None = None

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint"

    def modules(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One step of this stage at self.step (the training loop counts it)."""
        raise NotImplementedError

    def resume(self) -> None:
        self.step = loop.resume_step(self.checkpoint, self.modules(), self.optimizers())

    def world_config(self) -> WorldConfig:
        t = self.teacher.world
        return WorldConfig(text_encoder=self.cfg.text_encoder, sampler="diagonal", schedule=list(self.cfg.schedule),
                           context_noise=self.cfg.context_noise, shift=self.cfg.shift, fps=t.fps,
                           chunk_frames=t.chunk_frames,
                           notes={"stage": self.name, "trained_steps": self.step, "teacher": self.teacher.identity})

    def save(self, reason: str = "periodic") -> None:
        """A playable world ("dit" = release weights) plus everything resuming needs."""
        modules = self.modules()
        release = modules.pop("dit")
        modules.pop("autoencoder")
        save_world(self.checkpoint, release, self.teacher.autoencoder, self.world_config(), self.step,
                   extra_modules=modules, extra_configs={"train": self.cfg}, optimizers=self.optimizers())
        if self._log is not None:
            self._log.plot(self.plot_keys, title=f"student {self.name}")

    @property
    def frames_per_step(self) -> int:
        return self.cfg.batch * self.pairs.x0.shape[1]

    def train(self, log: RunLog | None = None, deadline: float | None = None) -> dict[str, float]:
        """Run to cfg.steps or the deadline (time.monotonic()) in the training loop; Ctrl-C saves."""
        self._log = log
        run = loop.TrainLoop(self, loop.LoopConfig(steps=self.cfg.steps, desc=f"student {self.name}",
                                                   log_every=self.cfg.log_every, ckpt_every=self.cfg.ckpt_every,
                                                   postfix=(*self.plot_keys[:2], "steps_per_s")),
                             log, budget=loop.Budget(deadline))
        metrics = run.run()
        self.stopped = run.stopped
        return metrics


class InitTrainer(StageTrainer):
    """CausVid: regress the student's few-step outputs onto the teacher's ODE pairs."""

    name = "init"
    plot_keys = ("loss", "grad_norm", "steps_per_s")

    def __init__(self, cfg: StudentTrainConfig, teacher: Teacher, pairs: OdePairs, out: str | Path,
                 device: torch.device):
        super().__init__(cfg, teacher, pairs, out, device)
        self.student = trainable_copy(teacher.dit)  # the student starts as the teacher (CausVid)
        self.optimizer = make_optimizer(self.student.parameters(), cfg.lr, cfg)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"dit": self.student, "autoencoder": self.teacher.autoencoder}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"dit": self.optimizer}

    def train_step(self) -> dict[str, float]:
        gen = loop.step_generator(self.cfg.seed, self.step, 0)
        b = self.pairs.batch(self.step, self.cfg.batch, self.cfg.seed, self.device)
        with loop.autocast_for(self.device):
            loss = ode_regression_loss(self.student, b.states, b.x0, self.pairs.grid, self.sampler, b.actions, b.text,
                                       b.text_mask, gen)
        grad_norm = loop.optimizer_step(self.optimizer, loss, self.student.parameters(), self.cfg.grad_clip)
        return {"loss": float(loss.detach()), "grad_norm": grad_norm}


class DMDTrainer(StageTrainer):
    """Self-Forcing DMD with diagonal forcing and flow distribution matching."""

    name = "dmd"
    plot_keys = ("loss_gen", "loss_critic", "loss_dmd", "loss_flow_dmd", "loss_flow_reg", "grad_norm",
                 "critic_grad_norm", "motion", "motion_teacher", "steps_per_s")

    def __init__(self, cfg: StudentTrainConfig, teacher: Teacher, pairs: OdePairs, out: str | Path,
                 device: torch.device, init: str | Path | None = None):
        super().__init__(cfg, teacher, pairs, out, device)
        self.generator = trainable_copy(teacher.dit)
        if init is not None:  # the init stage's student (or any world checkpoint of this architecture)
            load_start_weights(init, self.generator)
        self.ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.critic = trainable_copy(teacher.dit)  # fake score starts as the real one
        self.gen_opt = make_optimizer(self.generator.parameters(), cfg.lr, cfg)
        self.critic_opt = make_optimizer(self.critic.parameters(), cfg.critic_lr, cfg)
        self._last_gen: dict[str, float] = {}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"dit": self.ema, "dit_online": self.generator, "critic": self.critic,
                "autoencoder": self.teacher.autoencoder}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"dit": self.gen_opt, "critic": self.critic_opt}

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        gen = loop.step_generator(cfg.seed, self.step, 0)
        b = self.pairs.batch(self.step, cfg.batch, cfg.seed, self.device)
        if cfg.rollout_chunks:
            b = b.leading(cfg.rollout_chunks * self.generator.config.chunk_frames)
        update_generator = self.step % cfg.generator_every == 0
        x = self.rollout(b, gen, grad=update_generator)
        if update_generator:
            self._last_gen = self._generator_update(x, b, gen)
        metrics = {**self._last_gen, **self._critic_update(x.detach(), b, gen)}
        metrics.update(motion=motion(x), motion_teacher=motion(b.x0))
        return metrics

    def rollout(self, b, gen: torch.Generator, grad: bool) -> torch.Tensor:
        """Generator samples [B, F, C, h, w] from the pair's noise under its actions and prompt."""
        C = self.generator.config.chunk_frames
        exits = sample_exits(self.sampler, b.x0.shape[1] // C, gen)
        cond = Conditioning.build(b.text, b.text_mask, False)
        noise = lambda shape: torch.randn(shape, generator=gen).to(self.device)  # noqa: E731
        with loop.autocast_for(self.device), torch.set_grad_enabled(grad):
            return self_forcing_rollout(self.generator, self.sampler, cond, b.actions, b.noise, exits,
                                        noise).latents

    def _generator_update(self, x: torch.Tensor, b, gen: torch.Generator) -> dict[str, float]:
        with loop.autocast_for(self.device):
            losses = generator_losses(x, self.teacher.dit, self.critic, b.actions, b.text, b.text_mask, b.x0,
                                      self.cfg.shift, self.cfg.dmd, gen)
        grad_norm = loop.optimizer_step(self.gen_opt, losses.total, self.generator.parameters(), self.cfg.grad_clip)
        self.critic_opt.zero_grad(set_to_none=True)  # the fake score took no part in this update
        loop.update_ema(self.ema, self.generator, self.cfg.ema_decay, self.step // self.cfg.generator_every)
        return {**losses.metrics(), "grad_norm": grad_norm}

    def _critic_update(self, x: torch.Tensor, b, gen: torch.Generator) -> dict[str, float]:
        with loop.autocast_for(self.device):
            loss = critic_loss(self.critic, x, b.actions, b.text, b.text_mask, self.cfg.shift, self.cfg.dmd, gen)
        grad_norm = loop.optimizer_step(self.critic_opt, loss, self.critic.parameters(), self.cfg.grad_clip)
        return {"loss_critic": float(loss.detach()), "critic_grad_norm": grad_norm}


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, choices=STAGES,
                        help="init: make ODE pairs once and regress onto them; dmd: distribution matching")
    parser.add_argument("--teacher", required=True, help="teacher world checkpoint (or its training --out dir)")
    parser.add_argument("--latents", help="latent cache (init stage: source of actions and prompts for the pairs)")
    parser.add_argument("--out", required=True, help="student run directory: ode_pairs/, init/, dmd/")
    parser.add_argument("--init", help="dmd: generator start (default: OUT/init; any world checkpoint works)")
    add_options(parser, StudentTrainConfig)  # default None: the stage's preset (schedule: the checkpoint's)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--resume", action="store_true", help="continue this stage from OUT/STAGE/checkpoint")
    parser.add_argument("--max-minutes", type=float, help="save and stop after this long (rerun with --resume)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 on a busy CPU)")


def _recorded_diagonal(directory: Path) -> dict:
    """schedule / context_noise a world checkpoint records (empty when there is none)."""
    from model.common.checkpoint import checkpoint_dir

    try:
        world = read_checkpoint_config(checkpoint_dir(directory), kind=KIND)["configs"]["world"]
    except CheckpointError:
        return {}
    return {k: world[k] for k in ("schedule", "context_noise") if world.get(k) is not None}


def config_from_args(args: argparse.Namespace, teacher: WorldConfig, sources: list[Path]) -> StudentTrainConfig:
    """The stage preset, overridden by explicit arguments; schedule / context_noise default to the
    first checkpoint in `sources` (resumed stage, then init) that records them."""
    preset = STUDENT_PRESETS[args.stage]
    recorded: dict = {}
    for source in reversed(sources):
        recorded.update(_recorded_diagonal(source))
    given = given_options(args, StudentTrainConfig)
    overrides = {**{k: v for k, v in recorded.items() if k not in given}, **given}
    overrides["pairs"] = {**given.get("pairs", {}), "seed": given.get("seed", preset.seed)}
    overrides.update(shift=teacher.shift, text_encoder=teacher.text_encoder)
    return replace_config(preset, overrides, f"train student --stage {args.stage}")


def ensure_pairs(args: argparse.Namespace, cfg: StudentTrainConfig, teacher: Teacher, directory: Path,
                 device: torch.device, deadline: float | None) -> bool:
    """Make (or finish) the ODE pairs; True when complete. Needs --latents unless already complete."""
    from model.training.encode_latents import LatentClips, read_cache_meta, text_table

    grid = diagonal_grid(cfg.shift, cfg.context_noise)
    if pairs_complete(directory, pairs_meta(cfg.pairs, grid, cfg.shift, teacher.identity)):
        return True
    if args.latents is None:
        raise SystemExit("train student --stage init: --latents is required to make the ODE pairs")
    cache_encoder = read_cache_meta(args.latents).get("text_encoder")
    if cache_encoder != teacher.world.text_encoder:
        raise SystemExit(f"latent cache prompts were encoded with {cache_encoder!r}, the teacher uses "
                         f"{teacher.world.text_encoder!r}")
    clips = LatentClips(args.latents, cfg.pairs.clip_chunks, teacher.dit.config.chunk_frames)
    tokens, mask = text_table(args.latents)
    print(f"ode pairs: {cfg.pairs.shards} shards of {cfg.pairs.shard} teacher rollouts "
          f"({cfg.pairs.teacher_steps} steps, guidance {cfg.pairs.guidance:g}) from {len(clips)} clips", flush=True)
    return build_ode_pairs(teacher.dit, clips, tokens, mask, directory, cfg.pairs, grid, cfg.shift,
                           teacher.identity, device, deadline)


def load_pairs(directory: Path, teacher: Teacher) -> OdePairs:
    pairs = OdePairs(directory)
    if pairs.meta.get("teacher") != teacher.identity:
        raise OdePairsError(f"{directory}: made with teacher {pairs.meta.get('teacher')}, this teacher is "
                            f"{teacher.identity}; delete {directory} (the init stage remakes it) or pass the "
                            f"teacher the pairs came from")
    return pairs


def run(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("train student runs in one process (no DDP): start it without torchrun")
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    out = Path(args.out)
    stage_dir = out / args.stage
    init_dir = Path(args.init) if args.init else out / "init"
    teacher = load_teacher(args.teacher, device)
    sources = [stage_dir] if args.resume else []
    cfg = config_from_args(args, teacher.world, sources + ([init_dir] if args.stage == "dmd" else []))
    if args.stage == "init" and not ensure_pairs(args, cfg, teacher, out / PAIRS_SUBDIR, device, deadline):
        print("student init: --max-minutes reached while making ODE pairs; rerun the same command to continue",
              flush=True)
        return 0
    pairs = load_pairs(out / PAIRS_SUBDIR, teacher)
    trainer = _create(cfg, teacher, pairs, stage_dir, device, init_dir, args.resume)
    log = RunLog(stage_dir, f"student_{args.stage}", resume_step=trainer.step + 1 if args.resume else None)
    print(f"student {args.stage}: {count_parameters(teacher.dit) / 1e6:.2f}M parameters, {len(pairs)} pairs, "
          f"schedule {cfg.schedule}, context noise t={cfg.context_noise:g}, on {device}, from step {trainer.step}",
          flush=True)
    metrics = trainer.train(log, deadline)
    state = "stopped at --max-minutes (rerun with --resume)" if trainer.stopped else "done"
    rate = metrics.get("steps_per_s", 0.0)
    print(f"student {args.stage}: step {trainer.step}/{cfg.steps}, {rate:.3f} steps/s, {state} -> "
          f"{trainer.checkpoint}", flush=True)
    return 0


def _create(cfg: StudentTrainConfig, teacher: Teacher, pairs: OdePairs, stage_dir: Path, device: torch.device,
            init_dir: Path, resume: bool) -> StageTrainer:
    if cfg.stage == "init":
        trainer: StageTrainer = InitTrainer(cfg, teacher, pairs, stage_dir, device)
    else:
        from model.common.checkpoint import checkpoint_dir

        if not (checkpoint_dir(init_dir) / "config.json").exists():
            raise SystemExit(f"train student --stage dmd: no init checkpoint in {init_dir}; run --stage init "
                             f"first (or pass --init DIR, e.g. the teacher)")
        trainer = DMDTrainer(cfg, teacher, pairs, stage_dir, device, checkpoint_dir(init_dir))
    if resume:
        trainer.resume()
    return trainer
