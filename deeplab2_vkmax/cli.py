"""What every command-line entry point shares: help, quiet start-up, early checks.

Imports no TensorFlow, so `--help` and argument errors answer in well under a
second.
"""

import contextlib
import os
import sys
import tempfile
from typing import Callable, Optional, Sequence

_HELP_FLAGS = ('--help', '-h', '-?', '--helpshort', '--helpfull')
# TensorFlow logs this at ERROR level on every machine without a CUDA driver.
_NO_GPU_LINE = 'failed call to cuInit'
_devices_initialised = False


class UsageError(ValueError):
  """A command-line value the tool refuses; the message names the flag."""


def quiet_tensorflow() -> None:
  """Hides TensorFlow's C++ INFO/WARNING start-up lines (a user's setting wins).

  Call before TensorFlow is imported.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def run_absl(main: Callable[[Sequence[str]], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> None:
  """`absl.app.run(main)`, except for help and flag errors.

  `--help` prints the usage and exits 0 (absl exits 1, which scripts read as a
  failure); a missing or malformed flag is one line, `error: ...`, exit 2
  (absl prints two, the second only pointing at --help).
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  arguments = list(sys.argv if argv is None else argv)
  exit_on_help(arguments)
  parse_flags_or_exit(arguments)
  app.run(main, argv=arguments)


def parse_flags_or_exit(argv: Optional[Sequence[str]] = None) -> None:
  """Parses the absl flags defined so far; a bad one is `error: ...`, exit 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    flags.FLAGS(list(sys.argv if argv is None else argv))
  except flags.Error as e:
    message = '; '.join(line.strip().rstrip('.') for line in str(e).splitlines()
                        if line.strip())
    print(f'error: {message} (see --help)', file=sys.stderr)
    sys.exit(2)


def exit_on_help(argv: Optional[Sequence[str]] = None) -> None:
  """Prints the usage and exits 0 if `argv` asks for help (absl flags defined so far)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  arguments = list(sys.argv if argv is None else argv)
  if any(a in _HELP_FLAGS for a in arguments[1:]):
    app.usage(shorthelp='--helpfull' not in arguments, writeto_stdout=True, exitcode=0)


def initialise_devices() -> None:
  """Initialises TensorFlow's devices without the cuInit line of GPU-less machines.

  TensorFlow probes CUDA the first time it lists or uses a device (under
  absl's app.run, already while it is imported) and, without a driver, prints
  an ERROR line that alarms users of CPU-only machines. The import's and the
  probe's output is captured and replayed minus that line; every other line
  (a real driver problem, for one) still reaches stderr. Once per process.
  """
  global _devices_initialised
  if _devices_initialised:
    return
  _devices_initialised = True
  with tempfile.TemporaryFile() as captured:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.list_physical_devices()
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    captured.seek(0)
    lines = captured.read().decode('utf-8', 'replace').splitlines(keepends=True)
  sys.stderr.write(''.join(line for line in lines if _NO_GPU_LINE not in line))


def check_writable_dir(path: str, flag: str) -> None:
  """Raises UsageError unless `path` is (or can be made) a writable folder.

  Run before any model is loaded, so that a typo costs a second, not a minute.
  Creates the folder if it does not exist.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f'{flag}={path} is a file, not a folder')
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise UsageError(f'{flag}={path} is not writable ({e.strerror})') from None


@contextlib.contextmanager
def one_line_errors(*error_types: type, exit_code: int = 1):
  """Turns `error_types` into `error: <message>` on one line and exit `exit_code`.

  For a user's mistake (bad data, a missing file): the message names the file
  and field, a traceback would only hide it. Set VKMAX_TRACEBACK=1 to get the
  traceback anyway.
  """
  try:
    yield
  except error_types as e:
    if os.environ.get('VKMAX_TRACEBACK'):
      raise
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(exit_code)
