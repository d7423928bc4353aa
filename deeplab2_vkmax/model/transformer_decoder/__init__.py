"""kMaX transformer decoder (no TensorFlow at import)."""

# `ClipKMaXOptions.transformer_cross_attention` values: the paper's k-means
# cross-attention and the Table 4 baselines (docs/model.md).
CROSS_ATTENTIONS = ('kmeans', 'standard', 'latent_memory')
