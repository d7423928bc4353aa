r"""Training step of a config with and without dropping the dilated-conv taps that
only ever meet padding (`ConvBNAct._conv_without_padding_taps`).

DeepLab2's ASPP rates (6, 12, 18) on a small OS32 map (3 x 5 for the demo's
65 x 129 crops) make TensorFlow pad every map to rate x rate blocks
(SpaceToBatchND) for taps that all land on zeros. Both variants are built with
the same seed in one process, checked to give the same first loss, and timed in
alternating rounds of `--steps` training steps (forward, loss, backward, AdamW),
so machine noise hits both alike.

  python bench/dilated_conv_shortcut.py \
      --config_file=configs/synthetic/clip_kmax_tiny.textproto --rounds=5

Prints `uptime` before and after and a markdown row per variant.
"""

import argparse

import step_timing

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.trainer import data_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config_file', default='configs/synthetic/clip_kmax_tiny.textproto')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10, help='training steps per round')
  args = parser.parse_args()
  print(step_timing.uptime())
  config = config_lib.load_experiment_config(args.config_file)
  options = config.train_dataset_options
  descriptor = data_lib.dataset_descriptor(options)
  batch = next(iter(data_lib.build_train_dataset(options, descriptor, options.batch_size)))
  shortcut = conv_bn_act.ConvBNAct._conv_without_padding_taps
  steps = {}
  for name, method in (('padding taps dropped (shipped)', shortcut),
                       ('Keras dilated conv', lambda self, x: None)):
    conv_bn_act.ConvBNAct._conv_without_padding_taps = method
    steps[name] = step_timing.train_step_fn(config, descriptor, batch)
    print(f'{name}: first loss {float(steps[name]()):.6f}')
  conv_bn_act.ConvBNAct._conv_without_padding_taps = shortcut
  times = step_timing.time_alternating(steps, args.rounds, args.steps)
  print(step_timing.uptime())
  step_timing.print_table(times)


if __name__ == '__main__':
  main()
