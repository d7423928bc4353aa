"""Every dictionary key and TFRecord feature key used across deeplab2_vkmax.

One place for the strings that cross module boundaries: the data pipeline, the
model, the losses, the post-processor, the association and the exporter all read
them from here, and `tests/common_test.py` pins their values (DeepLab2's names where
DeepLab2 has the concept, so its users and its TFRecords carry over).
"""

# --- TFRecord feature keys (DeepLab2 names + video keys). ---
KEY_ENCODED_IMAGE = 'image/encoded'
KEY_IMAGE_FILENAME = 'image/filename'
KEY_IMAGE_FORMAT = 'image/format'
KEY_IMAGE_HEIGHT = 'image/height'
KEY_IMAGE_WIDTH = 'image/width'
KEY_IMAGE_CHANNELS = 'image/channels'
KEY_ENCODED_LABEL = 'image/segmentation/class/encoded'
KEY_LABEL_FORMAT = 'image/segmentation/class/format'
KEY_SEQUENCE_ID = 'video/sequence_id'
KEY_FRAME_ID = 'video/frame_id'

# --- Sample keys produced by the clip reader (`deeplab2_vkmax.data`). ---
# Batched shapes: images [B, T, H, W, 3] float32 in [0, 255]; labels [B, T, H, W].
IMAGE = 'image'
PANOPTIC_LABEL = 'panoptic_label'  # int32, semantic * label_divisor + instance.
SEQUENCE_ID = 'sequence_id'  # string, one per clip.
FRAME_ID = 'frame_id'  # int32 [T], frame index inside the sequence.

# The mean pixel: frames are padded with it, and the model maps it to 0
# (`x / PAD_PIXEL_VALUE - 1`), so padding is neutral after normalisation.
PAD_PIXEL_VALUE = 127.5

# --- Model outputs (`ClipKMaX.call`). ---
# Tubes: the T frames of a clip are stacked along height inside the transformer
# decoder and reshaped back to [B, T, h, w, ...] at the output.
PRED_PIXEL_SPACE_MASK_LOGITS = 'pixel_space_mask_logits'  # [B, T, H/4, W/4, N]
PRED_TRANSFORMER_CLASS_LOGITS = 'transformer_class_logits'  # [B, N, C + 1]
PRED_PIXEL_SPACE_NORMALIZED_FEATURE = 'pixel_space_normalized_feature'  # [B, T, H/4, W/4, D]
PRED_SEMANTIC_LOGITS = 'semantic_logits'  # [B, T, H/4, W/4, C]
PRED_QUERY_EMBEDDINGS = 'query_embeddings'  # [B, N, E], final cluster centres.
PRED_AUX_OUTPUTS = 'aux_outputs'  # tuple of dicts with the mask/class logits keys.

# --- Post-processed outputs (`ClipPostProcessor`, export signature). ---
PANOPTIC_PRED = 'panoptic_pred'  # int32 [B, T, H, W]
SEMANTIC_PRED = 'semantic_pred'  # int32 [B, T, H, W]
SEGMENT_IDS = 'segment_ids'  # int32 [B, N]; panoptic id of slot n, 0 = not kept.
SEGMENT_CLASSES = 'segment_classes'  # int32 [B, N]
SEGMENT_SCORES = 'segment_scores'  # float32 [B, N]
SEGMENT_BOXES = 'segment_boxes'  # float32 [B, T, N, 4] normalised [x0, y0, x1, y1].

# --- Loss names (summaries are `losses/train_<name>`). ---
PQ_STYLE_LOSS = 'pq_style_loss'
MASK_ID_CROSS_ENTROPY_LOSS = 'mask_id_cross_entropy_loss'
INSTANCE_DISCRIMINATION_LOSS = 'instance_discrimination_loss'
SEMANTIC_LOSS = 'semantic_loss'
TOTAL_LOSS = 'total_loss'

# --- Export signature and files. ---
EXPORT_INPUT_NAME = 'input_tensor'
# The experiment config, written into every run directory and SavedModel.
CONFIG_FILENAME = 'config.textproto'

# --- Loss diagnostics (`model/loss/kmax_loss.py`); per-example [B], not in total. ---
PQ_STYLE_LOSS_CLASS_TERM = 'pq_style_loss_class_term'
PQ_STYLE_LOSS_MASK_DICE_TERM = 'pq_style_loss_mask_dice_term'
LOSS_NUM_GT_MASKS = 'num_gt_masks'  # ground-truth masks (tubes + stuff) per clip.
LOSS_MEAN_MATCHED_DICE = 'mean_matched_dice'  # main-output dice over matched masks.
LOSS_MEAN_MATCHED_CLASS_PROB = 'mean_matched_class_prob'  # main-output P(gt class).
