"""Samplers: a per-chunk noise schedule plus how one step updates the latents.

A sampler is data, not a loop (docs/design.md §7, habit 3): `model/runtime/stream.py:generate_chunk` is the one
streaming loop and reads from the sampler
  - `levels(i)`: the noise levels (s in (0, 1], descending, 0 excluded) chunk i is denoised through;
  - `update`: "euler" integrates the flow ODE (teacher); "renoise" re-noises the predicted x0 to
    the next level with fresh noise (few-step samplers, docs/design.md §3);
  - `refresh`: after denoising, one forward of the clean chunk at t = 0 writes its K/V; without
    it the cache keeps K/V of the chunk's last noisy input (Diagonal Distillation);
  - `context_noise`: network time of the K/V every committed chunk leaves as context: 0 for a
    refresh sampler; for "diagonal" an explicit level (default t = 100, the paper's best ablation
    point, docs/design.md §3) on which every chunk's LAST denoising forward runs. Inference (the
    checkpoint's WorldConfig.context_noise) and distillation (model/training/student.py) build their
    sampler from the same value, so training's context is written exactly as inference's is;
  - `guidance` g: v = c + g (c - u), cond and uncond rows batched; g = 0 runs the conditional
    network alone;
  - `guide`: what the uncond rows u leave out, i.e. which conditioning guidance amplifies (the
    teacher was trained dropping the prompt and the actions independently, model/training/teacher.py,
    so it has all three modes):
      "all"     (default, every sampler before this option) u = no prompt and the null action;
      "actions" u = the same prompt and the null action: v = c + g (c - u_a) amplifies only the
                response to keys and mouse (the network learnt to under-use them, docs/design.md);
      "text"    u = no prompt and the same actions: amplifies only the prompt.
    A guide other than "all" needs g > 0 (it would otherwise be silently ignored). `describe()`
    always carries "guide"; records written before the option have none, and readers take a missing
    one as "all" (model/runtime/regenerate.py, model/evaluation/compare.py).

NFE per chunk (network evaluations per stream, a batched cond + uncond forward counts 2):
    rows * (len(levels(i)) + context pass),  rows = 2 with guidance else 1
teacher 32 steps, g = 3: 2 * 33 = 66; uniform 4 + refresh: 5; diagonal 4-3-2-2...: 4, 3, 2, 2, ...;
diagonal 4-3-1: 4, 3, 1 + 1, ... (a context pass, refresh or not, is K/V-only: cheaper than a step).

The diagonal grid: max(4, max(schedule)) levels from pure noise down to the context level, evenly
spaced before the shift (s = 1, ..., context_noise / 1000); a chunk of n >= 2 steps takes the first
level and the last n - 1, so it ends on the context level and its last forward writes the context. A
1-step chunk (e.g. 4-3-1) predicts x0 from pure noise in one forward, then a K/V-only pass writes it
re-noised to the context level: the same context a training rollout that exits at its first step
leaves (model/training/distill.py), at about 1.5 forwards a chunk instead of 2, because that pass stops
after the last block's K/V (for the U-Net: without its decoder half). More steps than the teacher's
32-step grid are refused (the student cannot be sampled finer than the trajectories it was distilled
from).

A schedule whose largest count exceeds 4 (e.g. the paper figure's 5-4-3-2) runs on a FINER grid than
the student was distilled on (model/training/ode_pairs.py and model/training/student.py always use the 4-level
`diagonal_grid(shift, context_noise)`): an inference-time ablation. Every intermediate level moves
with the grid, so even its 4-, 3- and 2-step chunks are not the distilled ones (only the first and
the context level are shared); distillation itself must stay on the 4-level grid.

Registry SAMPLERS: "teacher", "uniform", "diagonal"; `make_sampler(name, ...)` validates options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from model.diffusion.flow import TIME_SCALE, level_grid, network_time, shift_level

TEACHER_STEPS = 32
FEW_STEP_GRID = 4  # the distilled student's grid: [1000, 750, 500, 250] warped (Self-Forcing)
DIAGONAL_SCHEDULE = (4, 3, 2)  # Diagonal Distillation release: chunk 0 4 steps, chunk 1 3, then 2
CONTEXT_NOISE = 100.0  # docs/design.md §3: diagonal forcing is best at context noise t = 100 of 1000
TEACHER_GUIDANCE = 3.0
GUIDES = ("all", "actions", "text")  # what the uncond rows of guidance leave out (module docstring)


@dataclass(frozen=True)
class Sampler:
    name: str
    schedules: tuple[tuple[float, ...], ...]  # levels per chunk index; the last one repeats
    update: str  # "euler" | "renoise"
    refresh: bool
    guidance: float = 0.0
    rewarm: bool = False  # restart the schedule after a prompt switch (more steps to establish it)
    context_noise: float = 0.0  # network time of the K/V a committed chunk leaves (0: refresh pass)
    guide: str = "all"  # what guidance's uncond rows leave out: "all" | "actions" | "text" (GUIDES)

    def __post_init__(self) -> None:
        if self.update not in ("euler", "renoise"):
            raise ValueError(f"sampler update must be 'euler' or 'renoise', got {self.update!r}")
        if not self.schedules or any(not levels for levels in self.schedules):
            raise ValueError(f"sampler {self.name!r}: every chunk needs at least one step")
        for levels in self.schedules:
            if any(not 0 < s <= 1 for s in levels) or list(levels) != sorted(levels, reverse=True):
                raise ValueError(f"sampler {self.name!r}: levels must descend within (0, 1], got {levels}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        check_guide(self.guide)
        if self.guide != "all" and self.guidance == 0:
            raise ValueError(f"guide {self.guide!r} says what classifier-free guidance amplifies; it needs "
                             f"guidance > 0 (guidance is 0 for sampler {self.name!r})")
        self._check_context()

    def _check_context(self) -> None:
        """The context level is what the last forward of every chunk writes: state it, never imply it."""
        if self.refresh:
            if self.context_noise != 0.0:
                raise ValueError(f"sampler {self.name!r}: a refresh pass writes clean K/V (context_noise 0), "
                                 f"got {self.context_noise}")
            return
        for levels in self.schedules:
            if levels[-1] < self.context_level - 1e-9:
                raise ValueError(f"sampler {self.name!r}: without a refresh pass no chunk may end below its "
                                 f"context level {self.context_level:g}, got levels {levels}")

    @property
    def context_level(self) -> float:
        """Noise level s of the K/V every committed chunk leaves in the cache."""
        return self.context_noise / TIME_SCALE

    def levels(self, chunk_index: int) -> tuple[float, ...]:
        return self.schedules[min(chunk_index, len(self.schedules) - 1)]

    @property
    def rows(self) -> int:
        """Network rows per stream: cond + uncond with guidance."""
        return 2 if self.guidance > 0 else 1

    def steps(self, chunk_index: int) -> int:
        return len(self.levels(chunk_index))

    def ends_above_context(self, last_level: float) -> bool:
        """Whether a chunk whose last forward ran at `last_level` still needs its K/V written at the
        context level (no refresh sampler: a 1-step diagonal chunk, an early training exit)."""
        return not self.refresh and last_level > self.context_level + 1e-9

    def context_pass(self, chunk_index: int) -> bool:
        """Whether chunk `chunk_index` ends with a K/V-writing pass (refresh, or one at the context level)."""
        return self.refresh or self.ends_above_context(self.levels(chunk_index)[-1])

    def nfe(self, chunk_index: int) -> int:
        """Forwards per stream, the K/V-writing pass counted as one (it stops after the last block's K/V,
        so it costs less than a full forward: model/nets/world_net.py)."""
        return self.rows * (self.steps(chunk_index) + int(self.context_pass(chunk_index)))

    def timesteps(self, chunk_index: int) -> list[int]:
        """Network times of the denoising forwards, then the K/V-writing pass's (0 for a refresh)."""
        ts = [round(float(network_time(s))) for s in self.levels(chunk_index)]
        return ts + [round(self.context_noise)] if self.context_pass(chunk_index) else ts

    def describe(self) -> dict:
        """JSON-able summary for backend info / records."""
        return {
            "name": self.name,
            "steps": [len(s) for s in self.schedules],
            "refresh": self.refresh,
            "guidance": self.guidance,
            "update": self.update,
            "context_noise": self.context_noise,
            "rewarm": self.rewarm,
            "guide": self.guide,
        }


def check_guide(guide: object) -> str:
    """A guide name (GUIDES), else a ValueError naming the options."""
    if not isinstance(guide, str) or guide not in GUIDES:
        raise ValueError(f"guide must be one of {', '.join(GUIDES)} (what guidance's unconditional rows leave out: "
                         f"prompt and actions, the actions only, the prompt only), got {guide!r}")
    return guide


def _check_positive(name: str, value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"sampler {name!r}: {what} must be a positive whole number, got {value!r}")
    return value


def _check_steps(name: str, value: int, most: int, what: str) -> int:
    if _check_positive(name, value, what) > most:
        raise ValueError(f"sampler {name!r}: {what}={value} is more than the {most}-step grid it was trained on")
    return value


def teacher_sampler(steps: int = TEACHER_STEPS, shift: float = 3.0, guidance: float = TEACHER_GUIDANCE) -> Sampler:
    """Undistilled: Euler over `steps` shifted levels, guidance, then a clean pass writes K/V."""
    steps = _check_steps("teacher", steps, 1000, "steps")
    return Sampler("teacher", (level_grid(steps, shift),), "euler", refresh=True, guidance=guidance)


def uniform_sampler(steps: int = FEW_STEP_GRID, shift: float = 3.0, guidance: float = 0.0) -> Sampler:
    """Self-Forcing style: `steps` levels [1000, 750, 500, 250] warped, re-noising, + refresh: 5 NFE."""
    steps = _check_steps("uniform", steps, FEW_STEP_GRID, "steps")
    return Sampler("uniform", (few_step_levels(steps, shift),), "renoise", refresh=True, guidance=guidance)


def diagonal_sampler(
    schedule: Sequence[int] = DIAGONAL_SCHEDULE, shift: float = 3.0, guidance: float = 0.0, rewarm: bool = False,
    context_noise: float = CONTEXT_NOISE,
) -> Sampler:
    """Diagonal Distillation: more steps early, fewer later, no refresh; each chunk's last forward
    runs at `context_noise` (network time), so that is the K/V the next chunks attend to."""
    counts = check_diagonal_schedule(schedule)
    size = max(FEW_STEP_GRID, *counts)  # > 4 only for a finer-than-distilled ablation (module docstring)
    grid = diagonal_grid(shift, _check_context_noise(context_noise), size)
    schedules = tuple((grid[0], *grid[size - n + 1 :]) for n in counts)
    return Sampler("diagonal", schedules, "renoise", refresh=False, guidance=guidance, rewarm=rewarm,
                   context_noise=float(context_noise))


def check_diagonal_schedule(schedule: Sequence[int]) -> list[int]:
    """Per-chunk step counts of a diagonal schedule, each a whole number in [1, TEACHER_STEPS]."""
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence) or len(schedule) == 0:
        raise ValueError(f"sampler 'diagonal': schedule must be a non-empty list of step counts, got {schedule!r}")
    counts = [_check_positive("diagonal", n, f"schedule[{i}]") for i, n in enumerate(schedule)]
    for i, n in enumerate(counts):
        if n > TEACHER_STEPS:
            raise ValueError(f"sampler 'diagonal': schedule[{i}]={n} is more steps than the teacher's grid "
                             f"({TEACHER_STEPS} steps); the student cannot be sampled finer than the trajectories "
                             f"it was distilled from")
    return counts


def parse_schedule(text: str) -> list[int]:
    """Schedule "4,3,2" -> [4, 3, 2]: the schedule as one string, for command lines and session options (the
    protocol carries scalars only). Only the syntax is checked here; check_diagonal_schedule does the rest."""
    pieces = [p.strip() for p in str(text).split(",")]
    if not any(pieces):
        raise ValueError(f"sampler 'diagonal': schedule must be a non-empty list of step counts, got {text!r}")
    try:
        return [int(p) for p in pieces]
    except ValueError:
        raise ValueError(f"sampler 'diagonal': schedule must be comma-separated whole numbers such as 4,3,2, "
                         f"got {text!r}") from None


def _check_context_noise(context_noise: float) -> float:
    if isinstance(context_noise, bool) or not isinstance(context_noise, (int, float)) or not (
        0 < context_noise < TIME_SCALE
    ):
        raise ValueError(f"sampler 'diagonal': context_noise must be a network time strictly between 0 and "
                         f"{TIME_SCALE:g}, got {context_noise!r}")
    return float(context_noise)


def _unshift_level(s: float, k: float) -> float:
    """Inverse of shift_level: s = s' / (k - (k - 1) s')."""
    return s / (k - (k - 1) * s)


def diagonal_grid(shift: float, context_noise: float = CONTEXT_NOISE, size: int = FEW_STEP_GRID) -> tuple[float, ...]:
    """`size` levels from 1 (pure noise) down to context_noise / 1000, even before the shift. The
    default size is the student's distilled 4-level grid (ODE pairs, training, the 4-3-2 schedule)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"diagonal grid size must be a whole number >= 2 (noise and context level), got {size!r}")
    last = context_noise / TIME_SCALE
    u_last = _unshift_level(last, shift)
    n = size - 1
    head = tuple(float(shift_level(1.0 - j * (1.0 - u_last) / n, shift)) for j in range(n))
    return (*head, last)


def few_step_levels(steps: int, shift: float) -> tuple[float, ...]:
    """n levels of the Self-Forcing grid [1000, 750, 500, 250] (warped): the first plus the last n - 1
    (the uniform sampler; its refresh pass, not its last level, writes the context)."""
    grid = level_grid(FEW_STEP_GRID, shift)
    return (grid[0], *grid[FEW_STEP_GRID - steps + 1 :]) if steps > 1 else grid[:1]


SAMPLERS: dict[str, Callable[..., Sampler]] = {
    "teacher": teacher_sampler,
    "uniform": uniform_sampler,
    "diagonal": diagonal_sampler,
}


def make_sampler(
    name: str,
    *,
    steps: int | None = None,
    schedule: Sequence[int] | None = None,
    guidance: float | None = None,
    shift: float = 3.0,
    context_noise: float | None = None,
    rewarm: bool | None = None,
    guide: str | None = None,
) -> Sampler:
    """Build a registered sampler; options it does not take are an error, not silently ignored.
    guide (None: "all") says what guidance's uncond rows leave out (module docstring)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    kwargs: dict = {"shift": shift}
    if guidance is not None:
        kwargs["guidance"] = float(guidance)
    if name == "diagonal":
        if steps is not None:
            raise ValueError("sampler 'diagonal' takes a per-chunk schedule (e.g. [4, 3, 2]), not steps")
        if schedule is not None:
            kwargs["schedule"] = list(schedule)
        if context_noise is not None:
            kwargs["context_noise"] = context_noise
        if rewarm is not None:
            if not isinstance(rewarm, bool):
                raise ValueError(f"sampler 'diagonal': rewarm must be true or false, got {rewarm!r}")
            kwargs["rewarm"] = rewarm
    else:
        if schedule is not None:
            raise ValueError(f"sampler {name!r} takes steps, not a per-chunk schedule (that is 'diagonal')")
        if context_noise is not None:
            raise ValueError(f"sampler {name!r} writes clean context with its refresh pass; context_noise is "
                             f"an option of 'diagonal'")
        if rewarm:
            raise ValueError(f"sampler {name!r} takes the same steps for every chunk; rewarm (restart the "
                             f"schedule after a prompt switch) is an option of 'diagonal'")
        if steps is not None:
            kwargs["steps"] = steps
    sampler = SAMPLERS[name](**kwargs)
    return sampler if guide is None else replace(sampler, guide=guide)  # __post_init__ checks it
