"""The project's error types for mistakes in what the user gave.

`main()` of every command catches `UserError` and prints its message as one
line (`big_distill.<command>: error: ...`), exit code 2 (`reported`).
Anything else is a bug in the code and keeps its traceback. The message of a
`UserError` says what is wrong, where, and how to fix it.
"""

import contextlib
import sys


class UserError(Exception):
  """A mistake in the config, the data, a checkpoint or the workdir."""


class ConfigError(UserError, ValueError):
  """A config that cannot run; the message says which field to change."""


class DataError(UserError):
  """Training or evaluation data that is missing or does not fit the config."""


class CheckpointError(UserError):
  """A checkpoint or weights file that cannot be read or does not fit the model."""


class CheckpointMismatchError(CheckpointError, ValueError):
  """A weights file named by a config field that does not fit that config's model
  (a ValueError too, as the families' own file errors are)."""


class WorkdirError(UserError):
  """A workdir that cannot be used: unwritable, another config's, or held by another run."""


@contextlib.contextmanager
def reported(command: str, *also: type[Exception]):
  """Inside, a `UserError` (or one of `also`) ends the command as one line on
  stderr, `<command>: error: <message>`, with exit code 2."""
  try:
    yield
  except (UserError, *also) as e:
    print(f"{command}: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
