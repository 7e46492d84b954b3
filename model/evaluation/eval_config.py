"""What an evaluation run measures and how much: one dataclass, two presets ("full", "quick")."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class EvalConfig:
    seed: int = 0
    # action accuracy: the probe script (probe.py) rolled out in this many worlds
    probe_worlds: int = 3
    probe_hold: int = 12  # frames each probe segment holds its action (a multiple of 3)
    settle_frames: int = 3  # frames after a change that are not scored (one chunk to react)
    # prompt adherence: prompts of each kind, and frames rolled out per prompt. Frames of one
    # rollout are nearly alike, so many short rollouts estimate accuracy far better than few long.
    train_prompts: int = 48
    heldout_prompts: int = 48
    prompt_frames: int = 12
    # prompt switches: frames before and after the switch; frames the classifier must agree for
    switches: int = 6
    switch_before: int = 12
    switch_after: int = 30
    switch_stable: int = 3
    # fidelity: engine episodes, chunks generated after the start
    fidelity_episodes: int = 4
    fidelity_context: int = 3  # engine frames handed over when the world accepts image context
    fidelity_chunks: int = 10
    # counterfactual accuracy and teacher-forced PSNR: contexts of `context_chunks` engine chunks
    # (reset view + scripted play), then the held actions of measure_counterfactual/teacher_forced
    context_chunks: int = 2
    counterfactual_contexts: int = 16
    counterfactual_chunks: int = 2  # chunks generated under each held action
    teacher_forced_contexts: int = 8
    # drift and Frechet distance over one long stream
    drift_seconds: float = 300.0
    drift_reference_s: float = 10.0  # the paper's baseline window: the first 10 s (also the window)
    drift_script: str = "pan"  # "pan" (content-stationary, engine ~0% drift) or "walk" (scripted play)
    fd_segment_s: float = 60.0  # Frechet distance per minute
    strip_frames: int = 8  # frames per row in the sample-strip PNG
    # long-stream ratios (measure_longstream): each scenario streamed this long from an engine
    # start; world/engine statistics compared per window of `longstream_window_s` seconds
    longstream_seconds: float = 300.0
    longstream_window_s: float = 1.0
    longstream_scenarios: tuple[str, ...] = ("turn", "forward", "mixed")


EVAL_PRESETS: dict[str, EvalConfig] = {
    "full": EvalConfig(),
    # --quick: every measure, on a small sample; finishes in under a minute on the 2-core CPU.
    "quick": replace(
        EvalConfig(),
        probe_worlds=1,
        train_prompts=8,
        heldout_prompts=8,
        prompt_frames=6,
        switches=2,
        switch_after=18,
        fidelity_episodes=1,
        counterfactual_contexts=4,
        teacher_forced_contexts=2,
        drift_seconds=15.0,
        drift_reference_s=5.0,
        fd_segment_s=5.0,
        longstream_seconds=20.0,  # not part of the "< 1 min": longstream is opt-in (eval --measures)
    ),
    # model.evaluation.scoreboard: only the cheap signals (no reading networks), to compare training
    # runs; ~1.5 min on one CPU thread for the bundled 8M-parameter world with the uniform sampler.
    "scoreboard": replace(
        EvalConfig(),
        fidelity_episodes=2,
        counterfactual_contexts=4,
        teacher_forced_contexts=2,
    ),
}
