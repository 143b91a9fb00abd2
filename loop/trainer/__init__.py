"""The shared KD/CNN trainer (torch, timm, albumentations). Entry point: `loop.trainer.train.train`,
split as timm's train.py is: `setup.py` (device, model, teachers, data, optimizer), `epoch.py`
(resume state, one epoch, checkpoint state), `train.py` (the epochs, the evaluation, the run folder).
Beside them: config, data, sampling, losses, schedule, budget, metrics, models, checkpoint,
tensorboard, and `command.py` (`python -m loop.trainer`)."""
