"""Learning-rate schedules and optimisers from `SolverOptions`.

Poly and cosine decay with linear warm-up (DeepLab2's `learning_policy`), AdamW
with decoupled weight decay on convolution/dense kernels only, Adam and SGD with
an L2 term on kernels, and DeepLab2's backbone learning-rate multiplier as a second
optimiser over the pixel encoder's variables. Under `mixed_float16` every
optimiser is wrapped in a `keras.optimizers.LossScaleOptimizer`.
"""

from typing import Sequence

import keras
import tensorflow as tf

from deeplab2_vkmax import trainer
from deeplab2_vkmax.model import precision
from deeplab2_vkmax.protos import trainer_pb2

MIXED_PRECISION_POLICIES = precision.MIXED_PRECISION_POLICIES

# DeepLab2's AdamW (`trainer/trainer.py _create_optimizer`) decays the variables
# whose name matches `.*(kernel|weight):0$`: conv, dense, depthwise and qkv
# kernels; not BN/LayerNorm, biases, cluster centres, layer scales or
# positional embeddings.
_DECAYED_NAME_SUFFIXES = ('kernel', 'weight')


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class WarmUpDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `base_learning_rate`, then poly or cosine decay (DeepLab2).

  As DeepLab2's `trainer/trainer.py _create_optimizer` (Keras `PolynomialDecay` /
  `CosineDecay` over all `training_number_of_steps`, wrapped in
  `trainer_utils.WarmUp`): the decay is a function of the global step from 0,
  and the warm-up replaces it for the first `warmup_steps` steps only.

  lr(step) = base * step / warmup_steps                   (step < warmup)
  poly:   end + (base - end) * (1 - p) ** power,  p = min(step, total) / total
  cosine: end + (base - end) * 0.5 * (1 + cos(pi * p))
  """

  def __init__(self, *, base_learning_rate: float, training_number_of_steps: int,
               learning_policy: str = 'poly', warmup_steps: int = 0,
               poly_learning_power: float = 0.9, end_learning_rate: float = 0.0):
    if learning_policy not in trainer.LEARNING_POLICIES:
      raise ValueError(f'learning_policy must be one of {", ".join(trainer.LEARNING_POLICIES)}, '
                       f'got "{learning_policy}"')
    self.base_learning_rate = base_learning_rate
    self.training_number_of_steps = training_number_of_steps
    self.learning_policy = learning_policy
    self.warmup_steps = warmup_steps
    self.poly_learning_power = poly_learning_power
    self.end_learning_rate = end_learning_rate

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    base = tf.constant(self.base_learning_rate, tf.float32)
    end = tf.constant(self.end_learning_rate, tf.float32)
    warmup = float(self.warmup_steps)
    total = max(float(self.training_number_of_steps), 1.0)
    progress = tf.minimum(step, total) / total
    if self.learning_policy == 'poly':
      decayed = end + (base - end) * tf.pow(1.0 - progress, self.poly_learning_power)
    else:
      decayed = end + (base - end) * 0.5 * (1.0 + tf.cos(3.141592653589793 * progress))
    if self.warmup_steps > 0:
      warm = base * step / warmup
      return tf.where(step < warmup, warm, decayed)
    return decayed

  def get_config(self):
    return {
        'base_learning_rate': self.base_learning_rate,
        'training_number_of_steps': self.training_number_of_steps,
        'learning_policy': self.learning_policy,
        'warmup_steps': self.warmup_steps,
        'poly_learning_power': self.poly_learning_power,
        'end_learning_rate': self.end_learning_rate,
    }


def build_learning_rate(solver: trainer_pb2.SolverOptions, multiplier: float = 1.0) -> WarmUpDecay:
  """Returns the schedule of `solver`, scaled by `multiplier`."""
  return WarmUpDecay(
      base_learning_rate=solver.base_learning_rate * multiplier,
      training_number_of_steps=solver.training_number_of_steps,
      learning_policy=solver.learning_policy,
      warmup_steps=solver.warmup_steps,
      poly_learning_power=solver.poly_learning_power,
      end_learning_rate=solver.poly_end_learning_rate * multiplier)


def is_decayed(variable) -> bool:
  """Whether weight decay applies to `variable` (DeepLab2's rule: kernels)."""
  return variable.name.split('/')[-1].split(':')[0].endswith(_DECAYED_NAME_SUFFIXES)


def build_optimizer(solver: trainer_pb2.SolverOptions, variables: Sequence[tf.Variable],
                    multiplier: float = 1.0) -> keras.optimizers.Optimizer:
  """Builds (and builds the slots of) the optimiser for `variables`.

  The optimiser is built eagerly so that it can be used inside
  `strategy.run` (a lazily built Keras 3 optimiser fails there).

  Args:
    solver: The solver options.
    variables: The variables this optimiser updates.
    multiplier: Learning-rate multiplier (the backbone's, or 1.0).

  Returns:
    A built Keras 3 optimiser; under `mixed_precision: "mixed_float16"` a
    `keras.optimizers.LossScaleOptimizer` around it (dynamic loss scale,
    initial 2**15, doubled after 2000 finite steps, halved and the step
    skipped on non-finite gradients).
  """
  learning_rate = build_learning_rate(solver, multiplier)
  if solver.optimizer == 'adamw':
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=solver.adamw_weight_decay,
        beta_1=solver.adam_beta_1, beta_2=solver.adam_beta_2)
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if not is_decayed(v)])
  elif solver.optimizer == 'adam':
    optimizer = keras.optimizers.Adam(
        learning_rate=learning_rate, beta_1=solver.adam_beta_1, beta_2=solver.adam_beta_2)
  elif solver.optimizer == 'sgd':
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
  else:
    raise ValueError(f'optimizer must be one of {", ".join(trainer.OPTIMIZERS)}; got '
                     f'"{solver.optimizer}"')
  if uses_loss_scaling(solver):
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  optimizer.build(list(variables))
  return optimizer


def uses_loss_scaling(solver: trainer_pb2.SolverOptions) -> bool:
  """Whether the optimisers are wrapped for dynamic loss scaling.

  Only `mixed_float16` needs it: float16's 5 exponent bits underflow small
  gradients, bfloat16 has float32's exponent range.

  Raises:
    ValueError: If `solver.mixed_precision` is not a known policy.
  """
  if solver.mixed_precision not in MIXED_PRECISION_POLICIES:
    raise ValueError(f'mixed_precision must be one of {", ".join(MIXED_PRECISION_POLICIES)}; '
                     f'got "{solver.mixed_precision}"')
  return solver.mixed_precision == 'mixed_float16'


def l2_regularization(solver: trainer_pb2.SolverOptions, variables: Sequence[tf.Variable]):
  """The L2 term of Adam/SGD `weight_decay` (0 for AdamW, which decouples it)."""
  if solver.optimizer == 'adamw' or solver.weight_decay <= 0:
    return tf.constant(0.0)
  return solver.weight_decay * tf.add_n(
      [tf.nn.l2_loss(v) for v in variables if is_decayed(v)] or [tf.constant(0.0)])
