"""Per-epoch scalars for TensorBoard (`run.tensorboard: true`): one event file set under
<out>/tensorboard/, written at each epoch's end with the epoch as the step, so `tensorboard
--logdir <workspace>/tensorboard` (where loop/tracking links every run) shows runs side by side.

The `tensorboard` package is an optional extra: it is imported only when asked for, and its
absence is a ConfigError raised before any training starts."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loop.errors import ConfigError

if TYPE_CHECKING:                  # metrics imports torch; the daemon's CLI imports this module's names
    from loop.journal.metrics import EpochRecord

BOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install -e '.[tracking]' (or pip install 'tensorboard==2.21.0')"


class EpochBoard:
    """A SummaryWriter that takes one EpochRecord per epoch."""

    def __init__(self, writer):
        self.writer = writer

    def epoch(self, record: EpochRecord, images: int) -> None:
        """The epoch's scalars at step = epoch; flushed so a live TensorBoard sees it at once."""
        step = record.epoch
        for tag, value in (("train/loss", record.train_loss), ("train/accuracy", record.train_accuracy),
                           ("val/loss", record.val_loss), ("val/accuracy", record.val_accuracy),
                           ("lr", record.lr), ("images_per_second", images / max(record.seconds, 1e-9))):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(out_dir: Path, enabled: bool) -> EpochBoard | None:
    """The run's board under <out_dir>/tensorboard/, or None when `run.tensorboard` is off."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"run.tensorboard: true needs the tensorboard package ({exc}); {INSTALL_HINT}") from None
    return EpochBoard(SummaryWriter(log_dir=str(Path(out_dir) / BOARD_DIR)))
