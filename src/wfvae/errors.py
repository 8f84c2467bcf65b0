"""User-facing error types. Small on purpose: each carries the offending value and a hint."""


class ConfigError(ValueError):
    """A configuration value (CLI argument or config.json key) is invalid."""


class CheckpointError(RuntimeError):
    """A checkpoint or weight file cannot be read or does not fit the model."""


class VideoDecodeError(RuntimeError):
    """A video file cannot be decoded. Carries the path and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights (LPIPS backbone, I3D, ...) were asked for but are not on disk."""


class UnsafePathError(ValueError):
    """A path taken from data (an index record, a dataset file name) would leave its output folder."""
