"""User-facing error types and the one error boundary every command runs inside.

Small on purpose: each error carries the offending value and a hint. A :class:`UserError` (or an
``OSError`` about a file the user named) is a mistake the user can fix: the command prints one
line and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

#: Exit status of a command stopped by a user mistake (argparse uses the same).
EXIT_USER_ERROR = 2


class UserError(Exception):
    """Base of the errors a user can fix (bad option, bad file); never a bug."""


class ConfigError(UserError, ValueError):
    """A configuration value (CLI argument or config.json key) is invalid."""


class InputError(UserError, ValueError):
    """Input data cannot be used as given (no videos, unpaired videos, a corrupt index...)."""


class OutputError(UserError, RuntimeError):
    """An output folder holds results of other settings, or files this command did not write."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or weight file cannot be read or does not fit the model."""


class VideoDecodeError(UserError, RuntimeError):
    """A video file cannot be decoded. Carries the path and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable with its two arguments (DataLoader workers, multiprocessing)
        return (type(self), (self.path, self.reason))


class MissingWeightsError(UserError, FileNotFoundError):
    """Pretrained weights (LPIPS backbone, I3D, ...) were asked for but are not on disk."""


class UnsafePathError(InputError):
    """A path taken from data (an index record, a dataset file name) would leave its output folder."""


def user_message(error: BaseException) -> str | None:
    """The one-line message for a user mistake, or None when ``error`` is a bug."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.errno is not None:
        # a file the user named cannot be read or written: permission, missing folder, full disk
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    if isinstance(error, OSError) and error.args and isinstance(error.args[0], str):
        return str(error)  # FileNotFoundError("model config not found: x") raised by our own checks
    return None


def run_command(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``: a user mistake prints ``<prog>: error: <message>`` and returns 2.

    Bugs (any other exception) propagate with their traceback. Ctrl-C returns 130.
    """
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into user mistakes and bugs just below
        message = user_message(e)
        if message is None:
            raise
        logging.getLogger("wfvae").debug("user error", exc_info=True)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
