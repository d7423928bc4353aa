"""Side-by-side timing of training steps, shared by the benches that compare them.

Variants are timed in alternating rounds (A, B, A, B, ...) in one process, so the
noise of this shared machine hits every variant alike; the table reports the
median round and the ratio to the first variant.
"""

import statistics
import subprocess
import time
from typing import Callable, Dict, List

import keras
import tensorflow as tf

from deeplab2_vkmax import builder
from deeplab2_vkmax import common
from deeplab2_vkmax.model import precision
from deeplab2_vkmax.trainer import train_lib


def uptime() -> str:
  """The machine's load, printed before and after every timing."""
  return subprocess.run(['uptime'], capture_output=True, text=True,
                        check=False).stdout.strip()


def train_step_fn(config, descriptor, batch,
                  jit_compile: bool = False) -> Callable[[], tf.Tensor]:
  """One training step (forward, loss, backward, AdamW) of `config` on `batch`.

  The weights are seeded (0), so two variants of one architecture start equal.
  The model is built as the trainer builds it: under the config's
  `solver_options.mixed_precision` policy, variables created inside it.
  `jit_compile` compiles the step with XLA. The returned function's `model`
  attribute is the model it trains.
  """
  keras.utils.set_random_seed(0)
  with precision.dtype_policy_scope(config.trainer_options.solver_options.mixed_precision):
    model = builder.build_model(config, descriptor)
    train_lib.build_model_variables(model, config)
  loss_fn = builder.build_loss(config, descriptor)
  optimizer = keras.optimizers.AdamW(1e-3)

  @tf.function(jit_compile=jit_compile)
  def step():
    with tf.GradientTape() as tape:
      outputs = model(batch[common.IMAGE], training=True)
      loss = tf.reduce_sum(loss_fn(batch, outputs)[common.TOTAL_LOSS])
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    optimizer.apply_gradients(
        [(tf.zeros_like(v) if g is None else g, v) for g, v in zip(gradients, variables)])
    return loss

  step.model = model
  return step


def time_alternating(steps: Dict[str, Callable[[], tf.Tensor]], rounds: int,
                     steps_per_round: int) -> Dict[str, List[float]]:
  """Seconds per step of each variant, one entry per round, rounds interleaved.

  Every variant first runs one untimed round (warm-up after its trace).
  """
  for step in steps.values():
    for _ in range(steps_per_round):
      loss = step()
    float(loss)
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      start = time.perf_counter()
      for _ in range(steps_per_round):
        loss = step()
      float(loss)
      times[name].append((time.perf_counter() - start) / steps_per_round)
  return times


def print_table(times: Dict[str, List[float]]) -> None:
  """Markdown rows: median ms per step and the ratio to the first variant."""
  base = statistics.median(next(iter(times.values())))
  print('| variant | ms per step (median of rounds) | ratio |')
  print('| --- | --- | --- |')
  for name, values in times.items():
    median = statistics.median(values)
    print(f'| {name} | {1000 * median:.0f} | {median / base:.2f} |')
  print('rounds (ms):', {k: [round(1000 * v) for v in vs] for k, vs in times.items()})
