"""The errors a user can cause, apart from our own bugs.

Every problem with what a user hands us (a file, a flag, a config, the environment) is raised as a
:class:`UserError` whose message names the problem and the fix. The CLI prints it as one line and exits with 2;
anything else is a bug of ours and keeps its traceback, with a line asking to report it. Inside ``nnUNetv2_train``
the search trainer installs :func:`install_excepthook`, so nnU-Net's traceback may stand above it but the last line
of the output is the one-line message.

The subclasses keep :class:`ValueError` as a base, so code that caught ``ValueError`` before keeps working.
"""

import sys

REPORT_URL_HINT = "this is a bug in nnunet_nas, not in your input: please report it with the traceback above"


class UserError(Exception):
    """A problem with the user's input; the message names it and the fix."""


class ConfigError(UserError, ValueError):
    """A search config field out of its range, of the wrong type, or unknown."""


class InputFileError(UserError, ValueError):
    """A file we were handed that is missing, unreadable, or not what it should be."""


class PlansError(UserError, ValueError):
    """An nnU-Net plans file, or a configuration in it, that cannot be used or must not be changed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the input names does not exist."""


class EnvironmentSetupError(UserError, ValueError):
    """nnU-Net's environment (``nnUNet_preprocessed``, ``nnUNet_results``, ...) is not set up for the command."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line."""
    return " ".join(str(error).split())


def install_excepthook(prefix: str = "nnunet_nas") -> None:
    """Print a :class:`UserError` that ends the process as the last line of the output, after Python's traceback
    (nnU-Net's entry points do not catch it). Installed once; other exceptions are left as they are."""
    if getattr(sys.excepthook, "_nnunet_nas", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        if isinstance(value, UserError):
            print(f"{prefix}: error: {one_line(value)}", file=sys.stderr, flush=True)

    hook._nnunet_nas = True
    sys.excepthook = hook
