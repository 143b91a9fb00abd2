"""The trainer's config file format (config/trainer/*.yaml), grouped as timm's train.py groups it:
data, model, optimizer, schedule, loss, distillation, budget, run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loop.config import BudgetCaps, StrictModel, load_model_file

SamplingName = Literal["uniform", "class_balanced", "hard_example_weighted", "recent_weighted"]


class TransformSpec(StrictModel):
    """One albumentations transform: its class name and keyword arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class SamplingConfig(StrictModel):
    strategy: SamplingName = "uniform"
    recent_boost: float = Field(3.0, ge=0)       # newest sample drawn (1 + boost) x the oldest
    hard_power: float = Field(1.0, gt=0)        # weight ~ (loss + hard_floor) ** hard_power
    hard_floor: float = Field(0.1, gt=0)        # keeps easy samples in play
    hard_momentum: float = Field(0.5, ge=0, lt=1)  # EMA of each sample's loss across epochs


class DataConfig(StrictModel):
    domain: str = "digits"                       # registered name, or "package.module:Class"
    domain_args: dict[str, Any] = Field(default_factory=dict)
    image_size: int = Field(32, ge=8, le=1024)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int | None = Field(None, ge=0)   # None: chosen per run (`trainer.data.auto_workers`)
    train_fraction: float = Field(1.0, gt=0, le=1)  # use a stratified share of the train split
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    augment: list[TransformSpec] = Field(default_factory=list)
    replay_ids: list[str] = Field(default_factory=list)  # train-split ids drawn again (replay buffer)


PRETRAINED_SUFFIXES = (".safetensors", ".pth", ".pt")


class ModelConfig(StrictModel):
    name: str = "resnet10t"
    # false: timm's init; true: timm's pretrained weights, from the Hugging Face cache only (offline);
    # a path (relative to the current directory): a local .safetensors/.pth/.pt state dict
    pretrained: bool | str = False
    drop_rate: float = Field(0.0, ge=0, lt=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pretrained")
    @classmethod
    def _weights_file(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and Path(value.strip()).suffix.lower() not in PRETRAINED_SUFFIXES:
            raise ValueError(f"expected true, false or the path of a {'/'.join(PRETRAINED_SUFFIXES)} "
                             "weights file")
        return value


class OptimConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10)        # above 10 is a typo or a bad decision, never a schedule
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0)


class ScheduleConfig(StrictModel):
    name: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    pct_start: float = Field(0.25, gt=0, lt=1)    # one-cycle only


class LossConfig(StrictModel):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class KDConfig(StrictModel):
    """Logit distillation: loss = alpha*CE(hard) + beta*T^2*KL(blend || student).
    blend = (1 - stabilizer_weight)*softmax(teacher/T) + stabilizer_weight*softmax(stabilizer/T)."""

    teacher: str | None = None                   # a model folder (GEN_HEAD)
    stabilizer: str | None = None                # its parent
    alpha: float = Field(0.1, ge=0)
    beta: float = Field(0.9, ge=0)
    temperature: float = Field(2.0, gt=0)
    stabilizer_weight: float = Field(0.3, ge=0, le=1)

    @model_validator(mode="after")
    def _stabilizer_needs_teacher(self) -> "KDConfig":
        if self.stabilizer and not self.teacher:
            raise ValueError("kd.stabilizer is set but kd.teacher is not")
        return self


class RunConfig(StrictModel):
    label: str | None = None
    seed: int = 42
    epochs: int = Field(10, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = "auto"   # auto: on when CUDA is used
    channels_last: Literal["auto", "on", "off"] = "auto"
    threads: int | None = Field(None, ge=1)
    keep_checkpoint: bool = False                # drop the resume checkpoint after success
    tensorboard: bool = False                    # per-epoch scalars into <out>/tensorboard/ (the tracking extra)
    # multi-fidelity: a screen trains the schedule of `epochs` but stops after `stop_after_epochs`
    # (its checkpoint kept); a continuation resumes such a run's checkpoint (`resume_from`, its
    # folder) and trains on to `epochs`, so a promising screen is never retrained from zero
    stop_after_epochs: int | None = Field(None, ge=1)
    resume_from: str | None = None
    log_every_steps: int = Field(20, ge=1)


class TrainerConfig(StrictModel):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    budget: BudgetCaps = Field(default_factory=BudgetCaps)
    run: RunConfig = Field(default_factory=RunConfig)

    @property
    def stop_epoch(self) -> int:
        """The epoch this run ends at: `epochs`, or earlier for a screen."""
        return min(self.run.epochs, self.run.stop_after_epochs or self.run.epochs)


# what a continuation may change from the screen it resumes; everything else shapes the weights
CONTINUATION_FREE = {"run.label", "run.stop_after_epochs", "run.resume_from", "run.keep_checkpoint",
                     "run.log_every_steps", "run.threads", "run.device", "run.tensorboard", "budget"}


def continuation_mismatch(screen: dict, cont: dict) -> list[str]:
    """The dotted keys where a continuation's config differs from its screen's (train_args.json)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if path in CONTINUATION_FREE or path.split(".")[0] in CONTINUATION_FREE:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        elif a != b:
            out.append(path)

    walk(screen, cont, "")
    return out


def resolved(config: dict) -> dict:
    """A trainer config with every default filled in, as a run writes it (train_args.json): the form
    fingerprints are taken of (loop/journal/fingerprint.py). Raises pydantic's ValidationError."""
    return TrainerConfig.model_validate(config).model_dump(mode="json")


def load_trainer_config(path: str | Path, overrides: list[str] | None = None) -> TrainerConfig:
    """Load a trainer YAML (plus `key=value` overrides) into a validated TrainerConfig."""
    return load_model_file(TrainerConfig, path, overrides)
