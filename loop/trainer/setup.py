"""What a training run is made of before its first step (timm's train.py does the same in `main()`
before its epoch loop): the device and precision, the domain and the model, the teachers, the data
and its loader settings, the optimizer and the schedule, held together in one `Session`."""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from loop.domains import SampleSet, SpicaDomain, require_spica, resolve_domain
from loop.domains.split import held_out
from loop.errors import ConfigError
from loop.trainer.config import TrainerConfig
from loop.trainer.data import ImageDataset, Normalizer, auto_workers, build_augment
from loop.trainer.models import ModelFileConfig, create_initial_model, load_model_folder
from loop.trainer.sampling import LossTracker
from loop.trainer.schedule import StepSchedule
from loop.util.progress import ProgressLog


def pick_device(wanted: str) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device: cuda was asked for but torch sees no CUDA device")
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def take_fraction(samples: SampleSet, fraction: float, seed: int) -> SampleSet:
    """A stratified share of the training split (fixed by the domain's split seed)."""
    if fraction >= 1.0:
        return samples
    idx = np.arange(len(samples))
    keep, _ = held_out(idx, train_size=fraction, seed=seed, stratify=samples.labels)
    return samples.subset(np.sort(keep))


@dataclass
class FrozenModel:
    """A teacher or stabilizer: frozen, in eval mode, fed with its own input normalisation."""

    model: torch.nn.Module
    normalize: Normalizer
    image_size: int

    @torch.no_grad()
    def logits(self, batch_u8: torch.Tensor) -> torch.Tensor:
        x = self.normalize(batch_u8)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.model(x)


def load_frozen(folder: str | None, key: str, domain: SpicaDomain, device: torch.device,
                channels_last: bool) -> FrozenModel | None:
    if not folder:
        return None
    model, mcfg = load_model_folder(folder, device)
    if mcfg.num_classes != domain.num_classes or mcfg.in_chans != domain.in_chans:
        raise ConfigError(f"{key}: {folder} has {mcfg.num_classes} classes / {mcfg.in_chans} channels; "
                          f"the domain has {domain.num_classes} / {domain.in_chans}")
    for p in model.parameters():
        p.requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return FrozenModel(model, Normalizer(mcfg.mean, mcfg.std, device, channels_last), mcfg.image_size)


@dataclass
class Session:
    """Everything one training run holds while it trains."""

    cfg: TrainerConfig
    device: torch.device
    on_cuda: bool
    use_amp: bool
    amp_dtype: torch.dtype
    domain: SpicaDomain
    model: torch.nn.Module
    model_cfg: ModelFileConfig
    teacher: FrozenModel | None
    stabilizer: FrozenModel | None
    train_samples: SampleSet
    augment: object
    train_ds: ImageDataset
    val_ds: ImageDataset
    val_images: object
    val_labels: object
    normalize: Normalizer
    batch_size: int
    workers: int
    steps_per_epoch: int
    total_steps: int
    optimizer: torch.optim.Optimizer | None = None
    schedule: StepSchedule | None = None
    scaler: torch.amp.GradScaler | None = None
    tracker: LossTracker | None = None

    @property
    def kd(self):
        return self.cfg.kd if self.teacher is not None else None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.use_amp else contextlib.nullcontext()


def build_session(cfg: TrainerConfig, domain: SpicaDomain | None, log: ProgressLog) -> Session:
    """Device, domain, model and teachers; then the data; then the optimizer and schedule."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = pick_device(cfg.run.device)
    on_cuda = device.type == "cuda"
    use_amp = cfg.run.amp == "on" or (cfg.run.amp == "auto" and on_cuda)
    amp_dtype = torch.bfloat16 if (on_cuda and torch.cuda.is_bf16_supported()) or not on_cuda else torch.float16
    channels_last = cfg.run.channels_last == "on" or (cfg.run.channels_last == "auto" and on_cuda)
    domain = require_spica(domain) if domain is not None else resolve_domain(cfg.data.domain, cfg.data.domain_args)
    splits = domain.splits
    mean, std = domain.norm_stats
    seed_everything(cfg.run.seed)
    model, initial_weights = create_initial_model(cfg.model.name, domain.num_classes, domain.in_chans,
                                                  cfg.model.drop_rate, cfg.model.pretrained, log.line,
                                                  **cfg.model.kwargs)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model_cfg = ModelFileConfig(model_name=cfg.model.name, num_classes=domain.num_classes,
                                in_chans=domain.in_chans, image_size=cfg.data.image_size, mean=mean, std=std,
                                class_names=domain.class_names, domain=cfg.data.domain,
                                domain_args=domain.describe(), model_kwargs=cfg.model.kwargs,
                                pretrained=initial_weights)
    teacher = load_frozen(cfg.kd.teacher, "kd.teacher", domain, device, channels_last)
    stabilizer = load_frozen(cfg.kd.stabilizer, "kd.stabilizer", domain, device, channels_last)

    # ---- data ----
    train_samples = take_fraction(splits.train, cfg.data.train_fraction, domain.split_seed)
    if cfg.data.replay_ids:
        try:
            train_samples = train_samples.concat(splits.train.select_ids(cfg.data.replay_ids))
        except KeyError as exc:
            raise ConfigError(f"data.replay_ids: not in the domain's train split: {exc.args[0]}") from None
    augment = build_augment(cfg.data.augment, cfg.run.seed)
    train_ds = ImageDataset(train_samples, cfg.data.image_size, augment)
    val_ds = ImageDataset(splits.val, cfg.data.image_size)
    batch_size = min(cfg.data.batch_size, len(train_ds))
    workers = cfg.data.num_workers if cfg.data.num_workers is not None else \
        auto_workers(len(train_ds), augment is not None, torch.get_num_threads())
    steps_per_epoch = max(1, len(train_ds) // batch_size)
    session = Session(cfg=cfg, device=device, on_cuda=on_cuda, use_amp=use_amp, amp_dtype=amp_dtype, domain=domain,
                      model=model, model_cfg=model_cfg, teacher=teacher, stabilizer=stabilizer,
                      train_samples=train_samples, augment=augment, train_ds=train_ds, val_ds=val_ds,
                      val_images=val_ds.all_images(), val_labels=val_ds.labels,
                      normalize=Normalizer(mean, std, device, channels_last), batch_size=batch_size, workers=workers,
                      steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * cfg.run.epochs)
    add_optimizer(session)
    return session


def add_optimizer(s: Session) -> None:
    """timm's optimizer factory, the step schedule, the AMP scaler and the per-sample loss tracker."""
    from timm.optim import create_optimizer_v2

    cfg = s.cfg
    opt_name = "adamw" if cfg.optim.name == "adamw" else ("sgd" if cfg.optim.nesterov else "momentum")
    opt_args = {"momentum": cfg.optim.momentum} if cfg.optim.name == "sgd" else {}
    s.optimizer = create_optimizer_v2(s.model, opt=opt_name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                      **opt_args)
    s.schedule = StepSchedule(s.optimizer, cfg.schedule, s.total_steps, s.steps_per_epoch)
    s.scaler = torch.amp.GradScaler(s.device.type, enabled=s.use_amp and s.amp_dtype == torch.float16)
    s.tracker = LossTracker(len(s.train_ds), cfg.data.sampling.hard_momentum)
