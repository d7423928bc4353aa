"""Tube post-processing: mask slots -> panoptic clips (no TensorFlow at import)."""

# `EvaluatorOptions.transformer_post_processing` values.
POST_PROCESSING_MODES = ('maskwise', 'pixelwise')
