"""kMaX losses on tubes (no TensorFlow at import)."""

# `SingleLossOptions.name` values of the semantic loss (DeepLab2's kMaX uses this one).
SEMANTIC_LOSSES = ('softmax_cross_entropy',)
