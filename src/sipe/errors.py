"""The two kinds of user-facing error, and so the command line's exit statuses.

:class:`UsageError` (exit 2): the command line or a configuration key is wrong.
:class:`InputError` (exit 1): a file or data set the command names is missing or bad.
Library code raises these (or subclasses: ``ConfigError``, ``DatasetError``, ``ImageReadError``...)
with a one-line message naming the file or key and the fix; ``sipe.cli.main`` maps them to exit
statuses in one place. Both subclass ``ValueError``, so ``except ValueError`` callers keep working.
Kept free of heavy imports: the command line loads it before torch.
"""

from __future__ import annotations

__all__ = ["InputError", "RefusedFileError", "UsageError"]


class UsageError(ValueError):
    """A command-line option or configuration key/value that is wrong (exit status 2)."""


class InputError(ValueError):
    """An input file, folder, checkpoint or data set that is missing or bad (exit status 1)."""


class RefusedFileError(InputError):
    """A checkpoint or pickled file that asks to rebuild something other than tensors, arrays and plain
    values (a pickled function call, such as ``os.system``): refused before anything in it runs. Unlike
    other bad inputs it stops the whole command, even where a bad image is otherwise only listed: the
    folder that holds it is not to be trusted (exit status 1)."""
