"""The accelerate-based training loop shared by every strategy."""

from compresskit.training.trainer import TrainingConfig, TrainResult, default_loss, train

__all__ = ["TrainResult", "TrainingConfig", "default_loss", "train"]
