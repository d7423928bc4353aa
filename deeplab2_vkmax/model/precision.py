"""Mixed precision: the Keras 3 dtype policies a run may use, applied while building."""

import contextlib
from typing import Iterator

# `SolverOptions.mixed_precision` values: Keras 3 dtype policy names.
MIXED_PRECISION_POLICIES = ('float32', 'mixed_float16', 'mixed_bfloat16')


@contextlib.contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
  """Makes `policy` the global Keras dtype policy inside the block only.

  Keras 3 layers take the global policy when they are constructed and keep it,
  so building a model inside this block gives a mixed-precision model while
  code that runs after it (other models, tests in the same process) still
  sees the previous policy.

  Args:
    policy: One of `MIXED_PRECISION_POLICIES`.

  Raises:
    ValueError: If `policy` is not one of them.
  """
  if policy not in MIXED_PRECISION_POLICIES:
    raise ValueError(f'mixed_precision must be one of {", ".join(MIXED_PRECISION_POLICIES)}; '
                     f'got "{policy}"')
  import keras  # pylint: disable=g-import-not-at-top  # Keeps this module TF-free.
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)
