"""The shared KD/CNN trainer (torch, timm, albumentations). Entry point: `loop.trainer.train.train`."""
