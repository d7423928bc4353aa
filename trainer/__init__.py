"""The Orbit trainer (no TensorFlow at import)."""

# `SolverOptions.optimizer` and `SolverOptions.learning_policy` values
# (trainer/optimizer_builder.py).
OPTIMIZERS = ('adamw', 'adam', 'sgd')
LEARNING_POLICIES = ('poly', 'cosine')
