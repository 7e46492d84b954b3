"""Objectives of the few-step diagonal student (docs/design.md §3), as small functions of the networks.

- `self_forcing_rollout`: the generator's samples. The real streaming loop (`generate_chunk`) with
  the KV cache and the DIAGONAL sampler, one random exit step per chunk carrying gradient, earlier
  steps and context writes no-grad and the cache detached (Self-Forcing). Context K/V are written
  at the sampler's `context_noise`, the same level inference writes (diagonal forcing).
- `dmd_gradient` / `dmd_loss`: distribution matching. x_t = noise(x, t), t per sample (shifted,
  clamped to [20, 980]); real score = teacher with guidance c + g (c - u); fake score = critic;
  grad = (x0_fake - x0_real) / mean|x - x0_real|; loss 0.5 * mse(x, sg(x - grad)).
- `flow_dmd_loss` / `flow_regression_loss`: the same on temporal differences dx = x[:, 1:] - x[:, :-1]
  (flow distribution matching), plus regression of the student's dx to a many-step teacher
  rollout's dx. Unlike the release, both carry gradient to the generator (tests/test_distill.py).
- `critic_loss`: the fake score's ordinary flow loss on detached generator samples.
- `ode_regression_loss`: student initialisation, few-step outputs regressed onto the teacher's ODE
  trajectories (CausVid), with the context chunks at the diagonal context level.

Networks are callables `net(x [B,F,C,h,w], t [B,F], actions [B,F,A], text, text_mask, cache=None,
drop_actions=None) -> v`; nothing here knows their insides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.common.configs import option
from model.diffusion.flow import TIME_SCALE, add_noise, flow_loss, network_time, shift_level, velocity_target
from model.diffusion.guidance import apply_guidance
from model.diffusion.samplers import Sampler
from model.runtime.stream import Conditioning, Noise, generate_chunk


@dataclass
class DMDConfig:
    guidance: float = option(3.0, help="dmd: real-score guidance g (teacher with c + g (c - u))")
    t_min: float = 20.0  # DMD levels are clamped to [20, 980] network time
    t_max: float = 980.0
    spatial_weight: float = option(4.0, help="dmd: DMD loss weight")  # docs/design.md §3: spatial DMD 4
    # ... flow DMD 4 (the w of mean(w (dx - sg(dx - g))^2))
    flow_weight: float = option(4.0, help="dmd: flow DMD weight w")
    flow_regression_weight: float = option(1.0, help="dmd: weight of the dx regression onto the teacher's pair")

    def __post_init__(self) -> None:
        if not 0 <= self.t_min < self.t_max <= TIME_SCALE:
            raise ValueError(f"need 0 <= t_min < t_max <= {TIME_SCALE:g}, got {self.t_min}, {self.t_max}")
        if self.guidance < 0 or min(self.spatial_weight, self.flow_weight, self.flow_regression_weight) < 0:
            raise ValueError("guidance and loss weights must be >= 0")


@dataclass
class Rollout:
    latents: torch.Tensor  # [B, F, C, h, w] each chunk's exit x0 (gradient through its exit forward)
    exits: list[int]  # exit step per chunk
    context_t: torch.Tensor  # [B, F] network time of the input that wrote each chunk's cached K/V
    nfe: int  # network evaluations of the whole rollout


@dataclass
class GeneratorLosses:
    total: torch.Tensor
    dmd: torch.Tensor
    flow_dmd: torch.Tensor
    flow_regression: torch.Tensor

    def metrics(self) -> dict[str, float]:
        return {"loss_gen": float(self.total.detach()), "loss_dmd": float(self.dmd.detach()),
                "loss_flow_dmd": float(self.flow_dmd.detach()),
                "loss_flow_reg": float(self.flow_regression.detach())}


# ----------------------------------------------------------------------------- rollout


def sample_exits(sampler: Sampler, n_chunks: int, gen: torch.Generator) -> list[int]:
    """One random exit step per chunk, uniform over that chunk's own steps (4, 3, 2, ...)."""
    return [int(torch.randint(sampler.steps(i), (1,), generator=gen)) for i in range(n_chunks)]


def self_forcing_rollout(dit, sampler: Sampler, cond: Conditioning, actions: torch.Tensor, initial: torch.Tensor,
                         exits: list[int], noise: Noise) -> Rollout:
    """Generate len(exits) chunks from scratch with a fresh KV cache, exactly as a stream does.

    actions [B, F, A], initial [B, F, C, h, w] (each chunk's pure-noise start). Gradient (when grad
    mode is on) flows only through each chunk's exit forward; context is detached by the cache.
    """
    C = dit.config.chunk_frames
    assert actions.shape[1] == len(exits) * C == initial.shape[1], (actions.shape, initial.shape, exits)
    cache = dit.new_cache()
    chunks, context_t, nfe = [], [], 0
    for i, exit_step in enumerate(exits):
        f = slice(i * C, (i + 1) * C)
        out = generate_chunk(dit, cache, sampler, cond, actions[:, f], noise, exit_step=exit_step,
                             initial=initial[:, f])
        chunks.append(out.latents)
        context_t.append(cache.inputs.t[: actions.shape[0], cache.n_ctx - C : cache.n_ctx].clone())
        nfe += out.nfe
    return Rollout(torch.cat(chunks, 1), exits, torch.cat(context_t, 1), nfe)


# ----------------------------------------------------------------------------- scores


def sample_dmd_levels(batch: int, shift: float, cfg: DMDConfig, gen: torch.Generator) -> torch.Tensor:
    """One level per sample [B]: uniform, shifted, clamped to [t_min, t_max] / 1000."""
    s = shift_level(torch.rand(batch, generator=gen), shift)
    return s.clamp(cfg.t_min / TIME_SCALE, cfg.t_max / TIME_SCALE)


def predict_x0_full(net, x_t: torch.Tensor, s: torch.Tensor, actions: torch.Tensor, text: torch.Tensor,
                    text_mask: torch.Tensor, guidance: float = 0.0) -> torch.Tensor:
    """Full-sequence x0 [B, F, C, h, w] from x_t at per-sample level s [B]; guidance g: c + g (c - u)."""
    B, Fr = x_t.shape[:2]
    s_frames = s[:, None].expand(B, Fr).to(x_t)
    t = network_time(s_frames)
    if guidance > 0:
        cond = Conditioning.build(text, text_mask, True)
        v = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([actions, actions]), cond.text, cond.text_mask,
                drop_actions=cond.drop_actions)
        v = apply_guidance(v.float(), guidance)
    else:
        v = net(x_t, t, actions, text, text_mask).float()
    return x_t.float() - s_frames.float()[..., None, None, None] * v


def _per_sample_mean_abs(x: torch.Tensor) -> torch.Tensor:
    """mean |x| over everything but the batch, shaped to broadcast: [B, 1, 1, 1, 1]."""
    return x.abs().mean(dim=tuple(range(1, x.dim())), keepdim=True).clamp_min(1e-6)


def dmd_gradient(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor) -> torch.Tensor:
    """grad = (x0_fake - x0_real) / mean|x - x0_real| (per sample), no graph."""
    x, x0_fake, x0_real = x.detach().float(), x0_fake.detach().float(), x0_real.detach().float()
    return torch.nan_to_num((x0_fake - x0_real) / _per_sample_mean_abs(x - x0_real))


def dmd_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * mse(x, sg(x - grad)): its gradient w.r.t. x is grad / x.numel()."""
    x = x.float()
    return 0.5 * F.mse_loss(x, (x - grad).detach())


def temporal_diff(x: torch.Tensor) -> torch.Tensor:
    """dx = x[:, 1:] - x[:, :-1]: [B, F, ...] -> [B, F - 1, ...]."""
    return x[:, 1:] - x[:, :-1]


def flow_dmd_loss(x: torch.Tensor, x0_fake: torch.Tensor, x0_real: torch.Tensor, weight: float) -> torch.Tensor:
    """DMD on temporal differences: g = (dx_fake - dx_real) / mean|dx - dx_real|,
    loss = mean(w (dx - sg(dx - g))^2). Differentiable in x (the release's term is not)."""
    dx = temporal_diff(x.float())
    dx_fake, dx_real = temporal_diff(x0_fake.detach().float()), temporal_diff(x0_real.detach().float())
    g = torch.nan_to_num((dx_fake - dx_real) / _per_sample_mean_abs(dx.detach() - dx_real))
    return (weight * (dx - (dx - g).detach()).pow(2)).mean()


def flow_regression_loss(x: torch.Tensor, x_teacher: torch.Tensor) -> torch.Tensor:
    """mse(dx, dx_teacher): anchors the student's motion to a many-step teacher rollout's."""
    return F.mse_loss(temporal_diff(x.float()), temporal_diff(x_teacher.detach().float()))


def motion(x: torch.Tensor) -> float:
    """Motion magnitude: mean |dx| over a batch of clips [B, F, C, h, w]."""
    return float(temporal_diff(x.detach().float()).abs().mean())


# ----------------------------------------------------------------------------- losses


def generator_losses(x: torch.Tensor, teacher, critic, actions: torch.Tensor, text: torch.Tensor,
                     text_mask: torch.Tensor, x_teacher: torch.Tensor, shift: float, cfg: DMDConfig,
                     gen: torch.Generator) -> GeneratorLosses:
    """DMD + flow DMD + flow regression on generator samples x [B, F, C, h, w] (with graph).

    x_teacher [B, F, C, h, w]: a many-step teacher rollout under the same actions/prompt/noise.
    """
    B = x.shape[0]
    s = sample_dmd_levels(B, shift, cfg, gen).to(x.device)
    eps = torch.randn(x.shape, generator=gen).to(x.device)
    with torch.no_grad():
        x_t = add_noise(x.detach().float(), eps, s[:, None].expand(B, x.shape[1]))
        x0_real = predict_x0_full(teacher, x_t, s, actions, text, text_mask, cfg.guidance)
        x0_fake = predict_x0_full(critic, x_t, s, actions, text, text_mask)
    spatial = dmd_loss(x, dmd_gradient(x, x0_fake, x0_real))
    flow = flow_dmd_loss(x, x0_fake, x0_real, cfg.flow_weight)
    regression = flow_regression_loss(x, x_teacher)
    total = cfg.spatial_weight * spatial + flow + cfg.flow_regression_weight * regression
    return GeneratorLosses(total, spatial, flow, regression)


def critic_loss(critic, x: torch.Tensor, actions: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                shift: float, cfg: DMDConfig, gen: torch.Generator) -> torch.Tensor:
    """The fake score's flow loss on detached generator samples, at the levels DMD queries it."""
    x = x.detach().float()
    B, Fr = x.shape[:2]
    s = sample_dmd_levels(B, shift, cfg, gen).to(x.device)[:, None].expand(B, Fr)
    eps = torch.randn(x.shape, generator=gen).to(x.device)
    v = critic(add_noise(x, eps, s), network_time(s), actions, text, text_mask)
    return flow_loss(v, velocity_target(x, eps))


def ode_regression_loss(student, states: torch.Tensor, x0: torch.Tensor, grid: tuple[float, ...],
                        sampler: Sampler, actions: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                        gen: torch.Generator) -> torch.Tensor:
    """CausVid initialisation on a random prefix of the clip, one full-sequence forward.

    states [B, K, F, C, h, w]: the teacher's ODE state entering each level of `grid` (K levels);
    x0 [B, F, C, h, w]: the teacher's output. The prefix's last chunk i starts from the ODE state at
    a random level of the sampler's chunk-i schedule; the chunks before it are the teacher's x0
    re-noised to the context level with fresh noise, the input a diagonal stream's context K/V come
    from (their target, x0, is the final step of every chunk). Loss: mse(student x0, teacher x0).
    """
    B, K, Fr = states.shape[:3]
    C = getattr(student, "module", student).config.chunk_frames
    n = int(torch.randint(1, Fr // C + 1, (1,), generator=gen))  # chunks in the prefix
    options = torch.tensor([_grid_index(grid, s) for s in sampler.levels(n - 1)])
    k = options[torch.randint(len(options), (B,), generator=gen)].to(states.device)  # [B]
    last = states[torch.arange(B, device=states.device), k][:, (n - 1) * C : n * C]  # [B, C, ...]
    s_ctx = sampler.context_level
    eps = torch.randn(x0[:, : (n - 1) * C].shape, generator=gen).to(x0)
    context = (1 - s_ctx) * x0[:, : (n - 1) * C] + s_ctx * eps
    x_in = torch.cat([context, last], 1).float()
    levels = torch.tensor(grid, device=states.device)[k]
    s = torch.cat([torch.full((B, (n - 1) * C), s_ctx, device=x_in.device), levels[:, None].expand(B, C)], 1)
    v = student(x_in, network_time(s), actions[:, : n * C], text, text_mask)
    pred = x_in - s[..., None, None, None] * v.float()
    return F.mse_loss(pred, x0[:, : n * C].float())


def _grid_index(grid: tuple[float, ...], s: float) -> int:
    index = min(range(len(grid)), key=lambda j: abs(grid[j] - s))
    if abs(grid[index] - s) > 1e-6:
        raise ValueError(f"level {s:g} is not on the ODE-pair grid {grid}; the pairs were made for another "
                         f"schedule/context_noise/shift")
    return index
