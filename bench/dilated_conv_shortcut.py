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
import statistics
import subprocess
import time

import keras
import tensorflow as tf

from deeplab2_vkmax import builder
from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.trainer import data_lib


def _uptime():
  return subprocess.run(['uptime'], capture_output=True, text=True,
                        check=False).stdout.strip()


def _train_step(config, descriptor, batch):
  keras.utils.set_random_seed(0)
  model = builder.build_model(config, descriptor)
  loss_fn = builder.build_loss(config, descriptor)
  optimizer = keras.optimizers.AdamW(1e-3)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      outputs = model(batch[common.IMAGE], training=True)
      loss = tf.reduce_sum(loss_fn(batch, outputs)[common.TOTAL_LOSS])
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    optimizer.apply_gradients(
        [(tf.zeros_like(v) if g is None else g, v) for g, v in zip(gradients, variables)])
    return loss

  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config_file', default='configs/synthetic/clip_kmax_tiny.textproto')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10, help='training steps per round')
  args = parser.parse_args()
  print(_uptime())
  config = config_lib.load_experiment_config(args.config_file)
  options = config.train_dataset_options
  descriptor = data_lib.dataset_descriptor(options)
  batch = next(iter(data_lib.build_train_dataset(options, descriptor, options.batch_size)))
  shortcut = conv_bn_act.ConvBNAct._conv_without_padding_taps
  steps = {}
  for name, method in (('padding taps dropped (shipped)', shortcut),
                       ('Keras dilated conv', lambda self, x: None)):
    conv_bn_act.ConvBNAct._conv_without_padding_taps = method
    steps[name] = _train_step(config, descriptor, batch)
    print(f'{name}: first loss {float(steps[name]()):.6f}')
  conv_bn_act.ConvBNAct._conv_without_padding_taps = shortcut
  times = {name: [] for name in steps}
  for _ in range(args.rounds):
    for name, step in steps.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        loss = step()
      float(loss)
      times[name].append((time.perf_counter() - start) / args.steps)
  print(_uptime())
  base = statistics.median(times['padding taps dropped (shipped)'])
  print('| variant | ms per step (median of rounds) | ratio |')
  print('| --- | --- | --- |')
  for name, values in times.items():
    median = statistics.median(values)
    print(f'| {name} | {1000 * median:.0f} | {median / base:.2f} |')
  print('rounds (ms):', {k: [round(1000 * v) for v in vs] for k, vs in times.items()})


if __name__ == '__main__':
  main()
