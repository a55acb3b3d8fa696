"""The one trainer: n_critic critic steps with a gradient penalty, one sampler step.

It does not know which method it runs: a method hands it a sampler S(u), a critic, and
which parameters train from which step (``ParamGroup``). Built on Accelerate for device
placement and process groups; with several processes each rank draws its own batch from
a rank-derived random stream and gradients are averaged as one flat all-reduce per
optimizer step (the stylegan3 way: DDP's hooks do not cover ``autograd.grad`` double
backward: pytorch#47562).
"""
from __future__ import annotations

import contextlib
import json
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from . import distributed, zoo
from .augment import build_augment
from .config import register_choices
from .data import DeviceSampler
from .ema import WeightAverage, ema_beta
from .files import atomic_save_safetensors, atomic_torch_save, atomic_write_text, read_file
from .images import save_grid
from .losses import check_critic_for_penalty, clip_weights, get_objective, gradient_penalty, r1_penalty
from .nets import rows_independent
from .regularizers import build_regularizers
from .runfolder import global_batch_problem
from .samplers import Freezable, check_sampler
from .trackers import Trackers

AMP = register_choices("perf.amp", ("none", "bf16"))
COMPILE = register_choices("perf.compile", ("none", "sampler", "first_order"))
JOINT_CRITIC = register_choices("perf.joint_critic", ("auto", "on", "off"))
REG_STEPS = register_choices("loss.reg_step", ("separate", "joined"))
TERMS = ("loss_critic", "loss_sampler", "penalty", "wasserstein", "grad_norm", "regularize")


class NonFiniteLossError(FloatingPointError):
    pass


class RunInterrupted(RuntimeError):
    """SIGINT / SIGTERM stopped the run at a step boundary, after writing a checkpoint."""


class _StopRequests:
    """SIGINT and SIGTERM ask the loop to stop at the next step boundary (the first one only:
    a second Ctrl-C interrupts at once). Installed in the main thread only."""

    def __init__(self):
        self.signal = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class ParamGroup:
    """Parameters of the sampler that train from ``start_step`` on (and are frozen before).

    A :class:`~fastmine.samplers.Freezable` module (a generator adapter) is switched by its own
    ``freeze`` (batch-norm statistics start moving only when the generator trains).
    """

    name: str
    module: nn.Module
    start_step: int = 0
    lr: float | None = None

    def params(self):
        return list(self.module.parameters())

    def activate(self, active: bool):
        if isinstance(self.module, Freezable):
            self.module.freeze(not active)
        else:
            self.module.requires_grad_(active)


@dataclass
class TrainState:
    step: int = 0
    stats: dict = field(default_factory=dict)


class Trainer:
    """``cfg`` is the run's :class:`~fastmine.config.RunConfig`; the trainer reads its
    ``train``, ``loss``, ``perf``, ``log`` and ``dist.streams`` sections and ``seed``."""

    def __init__(self, sampler, critic, data, cfg, groups, critic_params=None, run_dir=None, device="cpu",
                 accelerator=None, callbacks=()):
        self.cfg = cfg
        seed = cfg.seed
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        self.device = torch.device(device)
        self.hooks = check_sampler(sampler)  # the sampler's interface, checked once (fastmine.samplers)
        if cfg.perf.amp not in AMP:
            raise ValueError(f"perf.amp must be one of {', '.join(AMP)}, got {cfg.perf.amp!r}")
        self.sampler = zoo.set_fp16_layers(sampler.to(self.device), cfg.perf.fp16_layers)
        self.critic = zoo.set_fp16_layers(critic.to(self.device), cfg.perf.fp16_layers)
        self.channels_last = _resolve_channels_last(cfg.perf.channels_last, self.device)
        if self.channels_last:  # 4-d weights and images in NHWC: what cuDNN / oneDNN convolutions prefer
            _to_channels_last(self.sampler)
            _to_channels_last(self.critic)
        self.objective = get_objective(cfg.loss.objective)
        if self._penalty_weight() > 0:
            check_critic_for_penalty(self.critic)
        self._sampler_fwd, self._critic_fwd = _compiled(self.sampler, self.critic, cfg.perf.compile,
                                                         selects=self.hooks.bind_critic is not None)
        self.data = DeviceSampler(data, self.device, channels_last=self.channels_last)
        self.groups = list(groups)
        self.critic_params = [p for p in (critic_params if critic_params is not None else critic.parameters())]
        if not self.critic_params:
            raise ValueError("the critic has no trainable parameters")
        trainable = {id(p) for p in self.critic_params}
        for p in self.critic.parameters():
            p.requires_grad_(id(p) in trainable)
        if self.hooks.bind_critic is not None:  # samplers that select with the critic (multi-generator)
            self.hooks.bind_critic(self.critic, distributed.all_reduce_sum_ if self.world > 1 else None)
        self.run_dir = Path(run_dir) if run_dir else None
        self.trackers = Trackers(cfg.log.trackers, self.run_dir, cfg) if self.run_dir and self.is_main else None
        self.callbacks = list(callbacks)
        self.seed = seed
        # one random stream per rank, on the training device: seeds, batches and ε all come
        # from it, so a resumed run replays exactly what an uninterrupted one would draw
        # (several streams per rank when dist.streams > world: the global batch is the same
        # whatever the number of processes, fastmine.distributed explains)
        self.streams, self.stream_batch = distributed.stream_layout(
            cfg.dist.streams, self.world, self.rank, cfg.train.batch_size)
        self.rngs = distributed.make_streams(seed, self.streams, self.device)
        self.rng = self.rngs[0]
        if self.world > 1:  # replicated parts start identical on every rank (what DDP does)
            distributed.broadcast_params_(list(self.critic.parameters()) + [p for g in self.groups for p in g.params()])
        grid_gen = torch.Generator(self.device).manual_seed(seed + 12345)
        self.grid_seeds = sampler.draw_seeds(cfg.log.grid_size, grid_gen, self.device)
        self.joint_critic = _resolve_joint_critic(cfg.perf.joint_critic, self.critic, self.device)
        # lazy regularisation (StyleGAN2 App. B): the penalty every k-th critic step, scaled by k.
        # reg_step=separate takes it as an optimizer step of its own (stylegan2-ada's Dreg phase,
        # which shares the Dmain optimizer), so k minibatches make k + 1 steps: Adam's lr × c and
        # betas ** c, c = k/(k+1) (the official mb_ratio), keep the step size per minibatch.
        # reg_step=joined adds it to the loss of the step it falls on: no extra step, no correction.
        if cfg.loss.reg_step not in REG_STEPS:
            raise ValueError(f"loss.reg_step must be one of {', '.join(REG_STEPS)}, got {cfg.loss.reg_step!r}")
        k = self._penalty_every()
        self.separate_penalty = cfg.loss.reg_step == "separate" and k > 1 and self._penalty_weight() > 0
        c = k / (k + 1) if self.separate_penalty else 1.0
        betas = tuple(float(b) ** c for b in cfg.train.betas)  # float: torch's Adam refuses betas=(0, 0.99)
        fused = {"fused": True} if cfg.perf.fused_adam else {}
        self.opt_critic = torch.optim.Adam(self.critic_params, lr=cfg.train.critic_lr * c, betas=betas, **fused)
        self.opt_sampler = torch.optim.Adam(
            [{"params": g.params(), "lr": g.lr or cfg.train.lr} for g in self.groups], lr=cfg.train.lr,
            betas=tuple(map(float, cfg.train.betas)),
            **fused)
        # augmentation of every critic input, and regularizers of the sampler's loss (fastmine.augment,
        # fastmine.regularizers): their state (ADA's p, EWC's Fisher, CDC's source copy) is checkpointed
        self.augment = build_augment(cfg.augment)
        self.regularizers = nn.ModuleList(build_regularizers(cfg.regularize))
        if len(self.regularizers):
            gen = torch.Generator(self.device).manual_seed(seed + 4243)  # the same estimate on every rank
            for r in self.regularizers:
                r.setup(self.sampler, self.critic, gen, self.device)
        self.parts = nn.ModuleDict({"augment": self.augment} if self.augment is not None else {})
        self.parts.update({f"regularize_{r.name}": r for r in self.regularizers})
        # the moving average of the trained weights (ema section): checkpointed with the other parts
        self.ema = self._weight_average()
        if self.ema is not None:
            self.parts["ema"] = self.ema
        self.parts.to(self.device)
        self.state = TrainState()
        self._step_t = torch.zeros((), dtype=torch.long, device=self.device)
        self._reset_stats()
        self._active = None

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self):
        return self.rank == 0

    def _penalty_weight(self) -> float:
        """λ of WGAN-GP or γ of R1, whichever the objective uses (0: none)."""
        loss = self.cfg.loss
        return {"gp": loss.gp_weight or 0.0, "r1": loss.r1_gamma}.get(self.objective.penalty, 0.0)

    def _penalty_every(self) -> int:
        loss = self.cfg.loss
        return max(1, loss.r1_every if self.objective.penalty == "r1" else loss.gp_every)

    def _weight_average(self) -> WeightAverage | None:
        """The average of every parameter a group trains (ema.kimg > 0), else None."""
        if not self.cfg.ema.kimg:
            return None
        params = {}
        for g in self.groups:
            for name, p in g.module.named_parameters():
                if distributed.is_sharded_param(p):
                    raise ValueError("ema.kimg averages the trained weights on every process, but this generator is "
                                     "sharded (no process holds it whole); set ema.kimg=0 or dist.shard=none")
                if all(p is not q for q in params.values()):
                    params[f"{g.name}.{name}"] = p
        return WeightAverage(params)

    def _averaged(self):
        """The weight average in place (samples, evaluations) inside the block; the raw weights after it."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def _reset_stats(self):
        z = lambda: torch.zeros((), device=self.device)
        self.state.stats = {t: z() for t in TERMS} | {"n_critic": z(), "n_sampler": z(), "n_penalty": z()}
        # first step at which each term was NaN/Inf (-1: never); checked without a host sync
        self.state.stats["first_bad"] = torch.full((len(TERMS),), -1, dtype=torch.long, device=self.device)

    def _track(self, term, value, step):
        v = value.detach()
        self.state.stats[term] += v
        i = TERMS.index(term)
        bad = self.state.stats["first_bad"]
        # self._step_t holds `step` on the device (fill_ in the loop): no host-to-device copy here
        bad[i] = torch.where((bad[i] < 0) & ~torch.isfinite(v), self._step_t, bad[i])

    def _check_finite(self):
        bad = self.state.stats["first_bad"].tolist()
        for term, step in zip(TERMS, bad):
            if step >= 0:
                raise NonFiniteLossError(
                    f"{term} became NaN/Inf at step {step}; stopped without writing a checkpoint after it. "
                    "Lower the learning rates, check the data range ([-1, 1]) or raise loss.gp_weight; "
                    "resume from the last good checkpoint with --resume."
                )

    def _set_phase(self, step):
        active = tuple(step >= g.start_step for g in self.groups)
        if active != self._active:
            for g, a in zip(self.groups, active):
                g.activate(a)
            self._active = active

    def _autocast(self):
        if self.cfg.perf.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _draw(self, draw):
        """``draw(n, generator)`` from every random stream of this rank, concatenated."""
        if len(self.rngs) == 1:
            return draw(self.cfg.train.batch_size, self.rng)
        return torch.cat([draw(self.stream_batch, g) for g in self.rngs])

    def _augmented(self, x):
        """The critic's view of ``x``: augmented from each random stream's share of the batch (as
        the batch was drawn), so any number of processes augments the global batch alike."""
        if self.augment is None:
            return x
        if len(self.rngs) == 1:
            return self.augment(x, self.rng)
        return torch.cat([self.augment(chunk, g) for chunk, g in zip(x.split(self.stream_batch), self.rngs)])

    def _generator_trains(self) -> bool:
        return any(p.requires_grad for p in self.hooks.generator.parameters())

    def _sync_grads(self, params):
        # a trainable parameter that got no gradient (the miner of a generator none of whose
        # candidates was chosen) gets zeros: Adam then moves it on its momentum exactly as the
        # loss over every candidate would (a None gradient would skip it), at any world size,
        # and every rank reduces the same layout
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world == 1 or not params:
            return
        flat = torch.cat([p.grad.flatten() for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            p.grad = flat[offset: offset + p.numel()].view_as(p)
            offset += p.numel()

    # ------------------------------------------------------------------ steps
    def critic_step(self, step, critic_iter):
        cfg = self.cfg
        B = cfg.train.batch_size
        real = self._draw(self.data.batch)
        with torch.no_grad(), self._autocast():
            fake = self._sampler_fwd(self._draw(lambda n, g: self.sampler.draw_seeds(n, g, self.device)))
        fake = fake.to(real.dtype)
        # the critic sees augmented images only, and the penalty is taken where it looks: on the
        # augmented pair (fastmine.augment)
        real, fake = self._augmented(real), self._augmented(fake)
        critic = self._critic_fwd  # the loss passes are first order: compiled with perf.compile=first_order
        with self._autocast():
            d_real, d_fake = critic_scores(critic, real, fake, self.joint_critic)
        loss = self.objective.critic(d_fake, d_real)
        self._track("wasserstein", d_real.mean() - d_fake.mean(), step)
        if self.augment is not None:
            self.augment.observe(d_real)  # ADA's r_t: the mean over every process (same p on each)
            self.augment.adjust(B * self.world, all_reduce=distributed.all_reduce_sum_ if self.world > 1 else None)
        weight, every = self._penalty_weight(), self._penalty_every()
        lazy = weight > 0 and critic_iter % every == 0
        if lazy and not self.separate_penalty:
            loss = loss + self._penalty(real, fake, weight * every, step)
        self._track("loss_critic", loss, step)
        self.state.stats["n_critic"] += 1
        self._critic_update(loss)
        if lazy and self.separate_penalty:  # the Dreg phase: after Dmain, on its updated weights, its own step
            self._critic_update(self._penalty(real, fake, weight * every, step))

    def _penalty(self, real, fake, weight, step):
        cfg = self.cfg
        if self.objective.penalty == "r1":
            penalty, grad_norm = r1_penalty(self.critic, real, gamma=weight, impl=cfg.perf.impl)
        else:
            eps = self._draw(lambda n, g: torch.rand(n, generator=g, device=self.device))
            penalty, grad_norm = gradient_penalty(
                self.critic, real, fake, weight=weight, center=cfg.loss.gp_center,
                one_sided=cfg.loss.gp_one_sided, eps=eps, impl=cfg.perf.impl)
        self._track("penalty", penalty, step)
        self._track("grad_norm", grad_norm, step)
        self.state.stats["n_penalty"] += 1
        return penalty

    def _critic_update(self, loss):
        self.opt_critic.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads(self.critic_params)
        self.opt_critic.step()
        if self.objective.clip:
            clip_weights(self.critic_params, self.cfg.loss.clip)

    def sampler_step(self, step):
        for p in self.critic_params:
            p.requires_grad_(False)  # no critic gradients are needed for the sampler's loss
        try:
            seeds = self._draw(lambda n, g: self.sampler.draw_seeds(n, g, self.device))
            with self._autocast():
                fake = self._sampler_fwd(seeds)
                scores = self._critic_fwd(self._augmented(fake))
            loss = self.objective.sampler(_at_least_fp32(scores))
            if len(self.regularizers) and self._generator_trains():  # they hold a training generator near its source
                term = sum(r.sampler_term(self.sampler, seeds) for r in self.regularizers)
                self._track("regularize", term, step)
                loss = loss + term
            self.opt_sampler.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            for p in self.critic_params:
                p.requires_grad_(True)
        self._sync_grads([p for g in self.groups for p in g.params()])
        self.opt_sampler.step()
        self._track("loss_sampler", loss, step)
        self.state.stats["n_sampler"] += 1

    def train_step(self, step):
        """One generator-side update: n_critic critic steps, then one sampler step."""
        self._step_t.fill_(step)
        self._set_phase(step)
        for i in range(self.cfg.train.n_critic):
            self.critic_step(step, step * self.cfg.train.n_critic + i)
        self.sampler_step(step)
        if self.ema is not None:  # stylegan2-ada's G_ema update, cur_nimg counted before this update
            global_batch = self.cfg.train.batch_size * self.world
            self.ema.update(ema_beta(global_batch, step * global_batch, self.cfg.ema.kimg, self.cfg.ema.rampup or None))
        self.state.step = step + 1

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False):
        cfg = self.cfg
        if resume:
            self.load_checkpoint()
        self.sampler.train()
        self.critic.train()
        start = self.state.step
        progress = None
        if cfg.log.progress and self.is_main:
            progress = tqdm(total=cfg.train.steps, initial=start, desc=self.run_dir.name if self.run_dir else "train",
                            unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        last = {}
        stop = _StopRequests()
        try:
            for step in range(start, cfg.train.steps):
                self.train_step(step)
                done = self.state.step
                logged = done % cfg.log.log_every == 0 or done == cfg.train.steps
                if logged:
                    last = self.log_row(done, time.perf_counter() - t0)
                    if progress:
                        progress.set_postfix(W=f"{last['wasserstein']:.3f}", gp=f"{last['penalty']:.3f}")
                if self.run_dir and (done % cfg.log.sample_every == 0 or done == cfg.train.steps):
                    self.save_samples(done)  # every rank: a sharded generator's forward is a collective
                saved = self.run_dir and (done % cfg.log.checkpoint_every == 0 or done == cfg.train.steps)
                if saved:
                    self.save_checkpoint()
                if progress:
                    progress.update(1)
                if done < cfg.train.steps and self._stop_requested(stop, logged):
                    if self.run_dir and not saved:
                        self.save_checkpoint()
                    where = "checkpoint written: continue with --resume" if self.run_dir else "no run folder"
                    raise RunInterrupted(f"stopped by {stop.signal or 'a peer'} after step {done}; {where}")
        finally:
            stop.restore()
            if progress:
                progress.close()
            if self.trackers is not None:
                self.trackers.finish()
        if self.ema is not None:  # the written model and the returned sampler are the average; the
            self.ema.apply()      # checkpoints keep the raw weights beside it
        if self.channels_last:  # hand the modules back in the default layout: a user's `x.view(n, -1)`
            # on a channels_last sample would fail
            _to_channels_last(self.sampler, torch.contiguous_format)
            _to_channels_last(self.critic, torch.contiguous_format)
        return last

    def _stop_requested(self, stop: _StopRequests, logged: bool) -> bool:
        """One process stops as soon as it is asked; several agree at log steps (the ranks
        must leave the loop at the same step: a collective there costs no extra sync)."""
        if self.world == 1:
            return stop.signal is not None
        if not logged:
            return False
        flag = torch.tensor([1.0 if stop.signal else 0.0], device=self.device)
        return bool(distributed.all_reduce_max_(flag).item())

    def log_row(self, step, elapsed) -> dict:
        """Close the logging window ending at ``step``: the mean of each term since the last row
        (over all ranks), callbacks' numbers added, appended to metrics.jsonl; returns the row."""
        s = self.state.stats
        if self.world > 1:  # the logged numbers are the means over all ranks (one collective)
            terms = [s[t] for t in TERMS] + [s["n_critic"], s["n_sampler"], s["n_penalty"]]
            distributed.all_reduce_mean_(terms)
            distributed.all_reduce_max_(s["first_bad"])
        self._check_finite()
        nc, ns, npen = (max(1.0, s[k].item()) for k in ("n_critic", "n_sampler", "n_penalty"))
        row = {"step": step, "loss_critic": s["loss_critic"].item() / nc, "loss_sampler": s["loss_sampler"].item() / ns,
               "penalty": s["penalty"].item() / npen, "wasserstein": s["wasserstein"].item() / nc,
               "grad_norm": s["grad_norm"].item() / npen, "elapsed_s": round(elapsed, 3)}
        if len(self.regularizers):
            row["regularize"] = s["regularize"].item() / ns
        if self.augment is not None:
            row.update(self.augment.stats())
        with self._averaged():  # evaluations score the average, as the written model will be
            for cb in self.callbacks:
                row.update(cb(self, step) or {})
        self._reset_stats()
        if self.trackers is not None:
            self.trackers.log(row, step)
        if self.run_dir and self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def save_samples(self, step):
        was = self.sampler.training
        self.sampler.eval()
        with torch.no_grad(), self._averaged():
            images = self.sampler(self.grid_seeds)
        self.sampler.train(was)
        images = self.hooks.visible(images)  # without the label channels a labelled critic sees
        if not self.is_main:
            return None
        real = self.data.preview(512) if images.ndim == 2 else None
        path = save_grid(images, self.run_dir / "samples" / f"step_{step:07d}.png", real=real)
        if self.trackers is not None:
            with Image.open(path) as im:
                self.trackers.log_image("samples", np.asarray(im.convert("RGB")), step)
        return path

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_dir(self):
        return self.run_dir / "checkpoints"

    def save_checkpoint(self):
        """weights (safetensors) + optimizer/RNG state (weights-only .pt), then latest.json.

        Each file is written under a temporary name and renamed; latest.json moves last, so a
        kill at any moment leaves it pointing at a complete checkpoint."""
        self._check_finite()  # never save weights that went through a NaN step
        # every stream's state, in stream order, so any world size can resume them
        rngs = [t for per_rank in distributed.all_gather_objects([g.get_state() for g in self.rngs]) for t in per_rank]
        if not self.is_main:
            return
        step = self.state.step
        d = self.ckpt_dir
        d.mkdir(parents=True, exist_ok=True)
        # a sharded generator is frozen and left out: it loads from its own file (as DeepSpeed does
        # with frozen weights, deepspeed#3090)
        tensors = {f"sampler.{k}": v for k, v in distributed.checkpoint_state(self.sampler).items()}
        tensors |= {f"critic.{k}": v for k, v in self.critic.state_dict().items()}
        tensors |= {f"parts.{k}": v for k, v in self.parts.state_dict().items()}
        atomic_save_safetensors(tensors, d / f"ckpt-{step:07d}.safetensors", {"step": str(step)})
        state = {"step": step, "global_batch": self.cfg.train.batch_size * self.world,
                 "opt_critic": self.opt_critic.state_dict(), "opt_sampler": self.opt_sampler.state_dict(),
                 "rng": self.rng.get_state(), "rngs": rngs, "torch_rng": torch.get_rng_state(),
                 "stats": {k: v.cpu() for k, v in self.state.stats.items()}}
        atomic_torch_save(state, d / f"ckpt-{step:07d}.state.pt")
        atomic_write_text(d / "latest.json", json.dumps({"step": step}))
        kept = sorted(d.glob("ckpt-*.safetensors"))
        for old in kept[: -max(1, self.cfg.log.keep_checkpoints)]:
            old.unlink(missing_ok=True)
            old.with_name(old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)

    def _newest_intact_checkpoint(self):
        """(step, tensors, state) of the newest checkpoint that reads whole — latest.json's
        first, then the others on disk, newest first — or None when there is none at all."""
        d = self.ckpt_dir
        steps, damaged = [], []
        try:
            steps.append(int(json.loads((d / "latest.json").read_text())["step"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            damaged.append(f"latest.json ({type(e).__name__})")
        steps += sorted((int(p.name[5:12]) for p in d.glob("ckpt-*.safetensors") if p.name[5:12].isdigit()),
                        reverse=True)
        for step in dict.fromkeys(steps):
            try:
                tensors, _ = read_file(d / f"ckpt-{step:07d}.safetensors")
                state = torch.load(d / f"ckpt-{step:07d}.state.pt", map_location="cpu", weights_only=True)
                self._check_checkpoint(step, tensors, state)
            except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
                reason = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
                damaged.append(f"step {step} ({reason})")
                continue
            if damaged and self.is_main:
                print(f"fastmine: checkpoint {', '.join(damaged)} in {str(d)!r} is damaged; resuming from the "
                      f"newest intact one, step {step}", file=sys.stderr)
            return step, tensors, state
        if damaged:
            raise ValueError(f"no intact checkpoint in {str(d)!r} ({'; '.join(damaged)}); start the run again "
                             "with --restart")
        return None

    def _check_checkpoint(self, step, tensors, state):
        """Refuse (ValueError: the checkpoint is damaged) one that reads but does not fit this run:
        a tensor missing, extra or of another shape, a state of another step or lacking a part."""
        frozen_generator = getattr(getattr(self.sampler, "generator", None), "frozen", False)
        expected = {f"sampler.{k}": v for k, v in distributed.checkpoint_state(self.sampler).items()}
        expected |= {f"critic.{k}": v for k, v in self.critic.state_dict().items()}
        expected |= {f"parts.{k}": v for k, v in self.parts.state_dict().items()}
        optional = "sampler.generator." if frozen_generator else None  # written sharded: loads from its own file
        missing = [k for k in expected if k not in tensors and not (optional and k.startswith(optional))]
        # a generator sharded now takes no weights from a checkpoint, whichever way it was written
        sharded = tuple(f"sampler.{p}" for p in distributed.sharded_prefixes(self.sampler))
        unexpected = [k for k in tensors if k not in expected and not (sharded and k.startswith(sharded))]
        wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise ValueError(f"its tensors do not fit the run: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                             f"other shapes {wrong[:3]}")
        parts = ("step", "opt_critic", "opt_sampler", "torch_rng", "stats")
        if not isinstance(state, dict) or any(k not in state for k in parts):
            raise ValueError(f"its state lacks {[k for k in parts if not isinstance(state, dict) or k not in state]}")
        if state["step"] != step:
            raise ValueError(f"its state is of step {state['step']}")

    def load_checkpoint(self):
        """Resume from the newest intact checkpoint; returns its step (0: none yet, start over)."""
        found = self._newest_intact_checkpoint() if self.run_dir else None
        if found is None:
            if self.run_dir and self.is_main:
                print(f"fastmine: {str(self.run_dir)!r} has no checkpoint yet: starting it from step 0",
                      file=sys.stderr)
                _truncate_metrics(self.run_dir / "metrics.jsonl", 0)
            return 0
        step, tensors, state = found
        problem = global_batch_problem(state.get("global_batch"), self.cfg.train.batch_size, self.world)
        if problem:
            raise ValueError(problem)
        # the generator may be missing (written sharded) or present (written unsharded): a
        # frozen generator comes from its own file either way
        frozen_generator = getattr(self.hooks.generator, "frozen", False)
        sampler_state = {k[8:]: v for k, v in tensors.items() if k.startswith("sampler.")}
        distributed.load_checkpoint_state(self.sampler, sampler_state,
                                          omitted_prefix="generator." if frozen_generator else None)
        self.critic.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("critic.")})
        parts = {k[6:]: v for k, v in tensors.items() if k.startswith("parts.")}
        if self.ema is not None and not any(k.startswith("ema.") for k in parts):
            # a checkpoint written before the average existed: it restarts at the raw weights
            self.ema.reset()
            parts |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
            if self.is_main:
                print("fastmine: the checkpoint holds no weight average (ema): it starts at the resumed weights",
                      file=sys.stderr)
        self.parts.load_state_dict(parts)
        self._set_phase(step)  # the parameters that train at this step must be the optimizer's
        self.opt_critic.load_state_dict(state["opt_critic"])
        self.opt_sampler.load_state_dict(state["opt_sampler"])
        rngs = state.get("rngs") or [state["rng"]]
        if len(rngs) == self.world * len(self.rngs):
            for g, i in zip(self.rngs, self.streams):
                g.set_state(rngs[i])
        else:  # another number of streams: fresh ones, decorrelated from the run's start
            self.rngs = distributed.make_streams(self.seed + 7919 * (step + 1), self.streams, self.device)
            self.rng = self.rngs[0]
            if self.is_main:
                print(f"resuming {len(rngs)} random stream(s) as {self.world * len(self.rngs)}: the run continues "
                      "on fresh streams (set dist.streams to resume on the same numbers)")
        torch.set_rng_state(state["torch_rng"])
        self.state.step = step
        stats = {k: v.to(self.device) for k, v in state["stats"].items()}
        bad = stats["first_bad"]  # a run checkpointed before a term was added tracks it from here on
        stats["first_bad"] = torch.cat([bad, bad.new_full((len(TERMS) - len(bad),), -1)])
        self.state.stats = {**self.state.stats, **stats}
        if self.run_dir and self.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", step)
        return step


def _compiled(sampler, critic, mode, selects=False):
    """(sampler, critic) forwards for the first-order passes, compiled per ``perf.compile``.

    The penalty's pass always runs the eager critic: torch.compile does not support the
    double backward (AOTAutograd raises on it). The compiled wrappers share the modules' parameters, so
    checkpoints, optimizers and phase switches see one set of weights (a switch of
    requires_grad or train/eval is a guard: it recompiles once).
    """
    if mode not in COMPILE:
        raise ValueError(f"perf.compile must be one of {', '.join(COMPILE)}, got {mode!r}")
    if mode == "none":
        return sampler, critic
    if selects:  # the sampler selects candidates with the critic (SamplerHooks.bind_critic)
        raise ValueError("perf.compile compiles a single-generator sampler; the multi-generator sampler picks "
                         "candidates by the critic's scores (data-dependent shapes). Set perf.compile=none.")
    if any(distributed.is_sharded_param(p) for p in sampler.parameters()):
        raise ValueError("perf.compile does not compile a sharded generator (FSDP2 / ZeRO-3 gather its weights "
                         "in hooks). Set perf.compile=none or dist.shard=none.")
    compiled_critic = torch.compile(critic, dynamic=False) if mode == "first_order" else critic
    return torch.compile(sampler, dynamic=False), compiled_critic


def critic_scores(critic, real, fake, joint: bool):
    """(D(real), D(fake)) in at least float32: one pass over cat([real, fake]) when ``joint`` (half the
    launches; only for a critic whose rows are independent), else a pass per kind, as NVIDIA's
    loss.py scores a batch-mixing (minibatch-std) discriminator."""
    if joint:
        scores = _at_least_fp32(critic(torch.cat([real, fake])))
        return scores[: len(real)], scores[len(real):]
    return _at_least_fp32(critic(real)), _at_least_fp32(critic(fake))


def _resolve_joint_critic(setting, critic, device) -> bool:
    """``perf.joint_critic``: score real and fake in one cat([real, fake]) pass. Only a critic
    whose rows are independent may (fastmine.nets.rows_independent): a minibatch-std layer would
    group real with fake images. auto: on for CUDA (half the launches), off on the CPU, where
    oneDNN's convolution backward was slower at 2B than twice at B (benchmarks/RESULTS.md)."""
    if setting not in JOINT_CRITIC:
        raise ValueError(f"perf.joint_critic must be one of {', '.join(JOINT_CRITIC)}, got {setting!r}")
    independent = rows_independent(critic)
    if setting == "on" and not independent:
        raise ValueError(f"perf.joint_critic=on, but the critic {type(critic).__name__} mixes the rows of a batch "
                         "(minibatch std or batch norm): real and fake would score each other. Set "
                         "perf.joint_critic=auto or off.")
    if setting == "auto":
        return independent and device.type == "cuda"
    return setting == "on"


def _resolve_channels_last(setting, device):
    """``perf.channels_last``: true / false, or None for the measured default — on for the
    CPU, where it removed oneDNN's layout copies around the transposed convolutions (1.06x
    per update at batch 64 and 256, benchmarks/RESULTS.md), off on CUDA until measured there."""
    if setting is None:
        return device.type == "cpu"
    if not isinstance(setting, bool):
        raise ValueError(f"perf.channels_last must be true, false or null (auto: on for the CPU), got {setting!r}")
    return setting


def _to_channels_last(module, memory_format=torch.channels_last):
    """4-d weights to NHWC (or back) in place, leaving sharded ones alone (FSDP2 / ZeRO-3 own
    their storage; their gathered weights are used as they come)."""
    for p in module.parameters():
        if p.dim() == 4 and not distributed.is_sharded_param(p):
            p.data = p.data.contiguous(memory_format=memory_format)


def _at_least_fp32(x):
    """bf16 scores (autocast) to fp32 for the losses; fp32 / fp64 untouched."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _truncate_metrics(path, step):
    """Drop lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line torn by a kill mid-write
            continue
        if row["step"] <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
