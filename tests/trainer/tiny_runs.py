"""Short runs of the tiny synthetic config, shared by the trainer tests.

Imported as `tiny_runs` (pytest puts this directory on sys.path: the test
directories are not packages).
"""

import os
import pathlib
import sys
from typing import List, Optional

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.protos import config_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = REPO / 'configs' / 'synthetic' / 'clip_kmax_tiny.textproto'


def tiny_config(tmp_path: pathlib.Path, *, steps: int, steps_per_loop: int,
                save_checkpoints_steps: Optional[int] = None,
                batch_size: Optional[int] = 2, warmup_steps: Optional[int] = None,
                **trainer_options) -> config_pb2.ExperimentOptions:
  """The tiny demo config, shortened, DeepLab2's loss weights, data under tmp_path.

  Args:
    tmp_path: the test's directory (the synthetic data set goes there).
    steps: training_number_of_steps, also the eval interval.
    steps_per_loop: Orbit loop length, also the summary interval.
    save_checkpoints_steps: checkpoint interval (default: steps_per_loop).
    batch_size: global batch (None: the config's own).
    warmup_steps: solver warm-up (None: the config's own).
    **trainer_options: further TrainerOptions fields.

  Returns:
    The validated config.
  """
  config = config_lib.load_experiment_config(str(TINY))
  for options in (config.train_dataset_options, config.eval_dataset_options):
    options.synthetic.root_dir = str(tmp_path / 'synthetic')
    # The generator's default splits (4 x 20 train, 2 x 12 val frames), not the
    # demo's larger ones: faster data generation and evaluation.
    for name in ('num_train_sequences', 'num_val_sequences', 'val_frames_per_sequence'):
      options.synthetic.ClearField(name)
  if batch_size is not None:
    config.train_dataset_options.batch_size = batch_size
  trainer = config.trainer_options
  # DeepLab2's loss weights: the demo's mask-ID weight (1.0) is a choice for its
  # 1,500-step recipe; these short runs test the trainer, their learning margin
  # was set with DeepLab2's weights.
  trainer.ClearField('loss_options')
  trainer.steps_per_loop = steps_per_loop
  trainer.save_summaries_steps = steps_per_loop
  trainer.save_checkpoints_steps = save_checkpoints_steps or steps_per_loop
  for name, value in trainer_options.items():
    setattr(trainer, name, value)
  solver = trainer.solver_options
  solver.training_number_of_steps = steps
  if warmup_steps is not None:
    solver.warmup_steps = warmup_steps
  config.evaluator_options.eval_interval = steps
  config_lib.validate_experiment_config(config)
  return config


def write_config(config: config_pb2.ExperimentOptions, path: pathlib.Path) -> pathlib.Path:
  path.write_text(str(config))
  return path


def train_command(config_path, model_dir, mode: str = 'train') -> List[str]:
  """`python trainer/train.py ...` (run with cwd=REPO)."""
  return [sys.executable, 'trainer/train.py', f'--config_file={config_path}',
          f'--mode={mode}', f'--model_dir={model_dir}']


def subprocess_env() -> dict:
  """Environment for a training subprocess: CPU only, quiet C++ logs, unbuffered."""
  return dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2',
              PYTHONUNBUFFERED='1')
