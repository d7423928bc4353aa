"""Main job: train / evaluate / export a Video-kMaX experiment.

  python trainer/train.py --config_file=configs/synthetic/clip_kmax_tiny.textproto \
      --mode=train_and_eval --model_dir=runs

Modes: train, eval, train_and_eval, continuous_eval, export. A bad config or bad
data makes it exit non-zero with one line naming the file and field; no traceback.
With `TF_CONFIG` set, every worker runs the same `--mode=train` command
(MultiWorkerMirroredStrategy). SIGTERM / SIGINT during training saves a checkpoint
after the current loop and exits with 128 + the signal number (143 / 130).
"""

import os
import sys

if __package__ in (None, ''):
  # Run as a script from the repository root: `python trainer/train.py`. The
  # package (installed with pip install -e .) maps this folder to
  # deeplab2_vkmax.trainer; drop the script folder from the path so that the
  # local folder `trainer/` never shadows that name.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging

from deeplab2_vkmax import cli
from deeplab2_vkmax import config as config_lib

_CONFIG_FILE = flags.DEFINE_string('config_file', None, 'ExperimentOptions textproto.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval',
                          ['train', 'eval', 'train_and_eval', 'continuous_eval', 'export'],
                          'What to run.')
_MODEL_DIR = flags.DEFINE_string('model_dir', 'runs',
                                 'Runs are written to <model_dir>/<experiment_name>.')
_NUM_GPUS = flags.DEFINE_integer('num_gpus', 0, '0: CPU, 1: one GPU, >1: MirroredStrategy.',
                                 lower_bound=0)
_MASTER = flags.DEFINE_string('master', '', 'TPU address (TPUStrategy); empty or "local" = none.')


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]} (flags are written --name=value)',
          file=sys.stderr)
    return 2
  # Orbit prints its progress and results itself; its INFO log repeats them.
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  with cli.one_line_errors(config_lib.ConfigError, cli.UsageError, exit_code=2):
    config = config_lib.load_experiment_config(_CONFIG_FILE.value)
    cli.check_writable_dir(_MODEL_DIR.value, '--model_dir')
  # Imported after the config and folders are known good: TensorFlow takes
  # seconds to load. Its C++ start-up chatter would hide the progress lines.
  cli.quiet_tensorflow()
  cli.initialise_devices()
  from deeplab2_vkmax.trainer import train_lib  # pylint: disable=g-import-not-at-top
  try:
    # Bad data, a missing checkpoint, an unmatched file pattern: one line.
    with cli.one_line_errors(ValueError, FileNotFoundError):
      strategy = train_lib.create_strategy(_NUM_GPUS.value, _MASTER.value)
      train_lib.run_experiment(_MODE.value, config, _MODEL_DIR.value, strategy=strategy)
  except train_lib.Preempted as e:
    # The checkpoint is saved and the line printed; a non-zero code makes a
    # scheduler restart the job, which resumes from that checkpoint.
    return e.exit_code
  return 0


if __name__ == '__main__':
  flags.mark_flag_as_required('config_file')
  cli.run_absl(lambda argv: sys.exit(main(argv)))
