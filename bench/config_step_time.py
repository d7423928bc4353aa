r"""Training-step time of several configs, side by side on the same batch.

Each config (a file, or `REF:path` for the file as it is at git commit REF) builds
its model and loss with seeded weights; all are fed the first batch of the first
config's training data and timed in alternating rounds of `--steps` steps
(forward, loss, backward, AdamW), so machine noise hits them alike. The configs
must share the training crop, clip length and batch size.

The demo recipe before and after session 10's wider OS4 / OS2 decoder stages:
  python bench/config_step_time.py --rounds=6 \
      --configs=2961b1b~1:configs/synthetic/clip_kmax_tiny.textproto,configs/synthetic/clip_kmax_tiny.textproto

Each config is built as the trainer builds it, under its own
`solver_options.mixed_precision`; `--policies` times every config under each
listed policy instead, and `--xla` adds an XLA-compiled twin of every variant:
  python bench/config_step_time.py --rounds=4 --xla \
      --policies=float32,mixed_bfloat16 --configs=configs/synthetic/clip_kmax_tiny.textproto

Prints `uptime` before and after, the trainable parameters of each config and a
markdown row per config.
"""

import argparse
import subprocess
import sys

import numpy as np

import git_ref  # bench/git_ref.py
import step_timing  # bench/step_timing.py

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.trainer import data_lib


def _load(spec: str):
  """A config from a path or from `REF:path` at a git commit; one line on error."""
  try:
    if ':' in spec:
      ref, path = spec.split(':', 1)
      return config_lib.load_experiment_config(git_ref.file_at(ref, path))
    return config_lib.load_experiment_config(spec)
  except subprocess.CalledProcessError as e:
    sys.exit(f'error: --configs: {spec}: {e.stderr.strip()}')
  except (OSError, ValueError) as e:
    sys.exit(f'error: --configs: {spec}: {e}')


def _variants(configs, policies, xla):
  """{name: (config, jit_compile)}: each config under each policy, with XLA twins."""
  variants = {}
  for spec, config in configs.items():
    for policy in policies or [config.trainer_options.solver_options.mixed_precision]:
      if policy not in ('float32', 'mixed_bfloat16'):
        sys.exit(f'error: {spec}: policy {policy}: expected float32 or mixed_bfloat16 '
                 '(mixed_float16 needs loss scaling: bench/train_step.py --compare_precision)')
      variant = type(config)()
      variant.CopyFrom(config)
      variant.trainer_options.solver_options.mixed_precision = policy
      name = f'{spec} [{policy}]' if policies else spec
      variants[name] = (variant, False)
      if xla:
        variants[f'{name} [XLA]'] = (variant, True)
  return variants


def _input_shape(config):
  options = config.train_dataset_options
  return (options.batch_size, options.clip_length, tuple(options.crop_size))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', required=True,
                      help='comma-separated config files or REF:path')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10, help='training steps per round')
  parser.add_argument('--policies', default='',
                      help='comma-separated float32 / mixed_bfloat16: time every config '
                      'under each (default: its own solver_options.mixed_precision)')
  parser.add_argument('--xla', action='store_true',
                      help='also time every variant with the step compiled by XLA')
  args = parser.parse_args()
  specs = args.configs.split(',')
  configs = _variants({spec: _load(spec) for spec in specs},
                      [p for p in args.policies.split(',') if p], args.xla)
  shapes = {name: _input_shape(config) for name, (config, _) in configs.items()}
  if len(set(shapes.values())) != 1:
    sys.exit(f'error: the configs differ in (batch, clip length, crop): {shapes}')
  print(step_timing.uptime())
  first = next(iter(configs.values()))[0].train_dataset_options
  descriptor = data_lib.dataset_descriptor(first)
  batch = next(iter(data_lib.build_train_dataset(first, descriptor, first.batch_size)))
  steps = {}
  for name, (config, jit_compile) in configs.items():
    steps[name] = step_timing.train_step_fn(config, descriptor, batch, jit_compile)
    loss = float(steps[name]())
    variables = steps[name].model.trainable_variables
    print(f'{name}: {sum(int(np.prod(v.shape)) for v in variables):,} trainable '
          f'parameters, first loss {loss:.6f}')
  times = step_timing.time_alternating(steps, args.rounds, args.steps)
  print(step_timing.uptime())
  step_timing.print_table(times)


if __name__ == '__main__':
  main()
