"""Streaming video panoptic segmentation with video-level track ids.

`Predictor` runs an exported SavedModel (or a checkpoint + config, exported in
memory) clip by clip over a stream of frames and associates the clips with the
library's cross-clip associater (video stitching + HiLA-MB, paper Sec. 3.2):

  near-online (T >= 2): clips of T frames that share one frame (stride T - 1);
      the first clip emits T frames, every later clip its last T - 1.
  online (T = 1): one frame per clip (the SavedModel's `serving_frame`).

A TFLite model written by `export_model --format=tflite` runs the same way on
the LiteRT interpreter (XNNPACK); its clip length and frame size are fixed at
export, so T (and online vs near-online) follows from the model.

Only the current clip's frames are held, so memory stays flat on videos of any
length. A last, short clip is padded by repeating its last frame; the padded
frames are never emitted.

  predictor = deeplab2_vkmax.Predictor('export/')          # a SavedModel dir
  for result in predictor.predict_video(frames):           # uint8 [H, W, 3] each
    result.panoptic  # int32 [H, W], semantic * label_divisor + track id
"""

import copy
import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np

from deeplab2_vkmax import common
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import clips
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.protos import config_pb2

MODES = ('near_online', 'online')
CONFIG_FILENAME = common.CONFIG_FILENAME  # Written into the SavedModel by export_model.
_REQUIRED_OUTPUTS = (common.PANOPTIC_PRED, common.SEMANTIC_PRED, common.SEGMENT_IDS,
                     common.SEGMENT_SCORES, common.PRED_QUERY_EMBEDDINGS)


class PredictorError(ValueError):
  """A model path, config or input the predictor cannot use; the message is one
  line that names the offending file or value."""


@dataclasses.dataclass
class FrameResult:
  """The prediction for one frame.

  Attributes:
    frame_index: 0-based index of the frame in the input stream.
    panoptic: int32 [H, W], `semantic * label_divisor + instance`; thing
      instance ids are video-level track ids (stable across clips).
    semantic: int32 [H, W] semantic ids (`ignore_label` on void pixels).
    segments: One dict per non-void segment of the frame, in increasing id
      order: 'id' (panoptic id), 'class' (semantic id), 'class_name',
      'track_id' (instance id, 0 for stuff and crowd), 'score' (the slot's
      confidence, None if unknown), 'box' ([x0, y0, x1, y1] pixel edges, x1 / y1
      exclusive) and 'area' (pixels).
  """

  frame_index: int
  panoptic: np.ndarray
  semantic: np.ndarray
  segments: List[Dict[str, Any]]


def is_saved_model_dir(path: str) -> bool:
  """Whether `path` is a directory holding a SavedModel."""
  return os.path.isfile(os.path.join(path, 'saved_model.pb'))


def is_tflite_file(path: str) -> bool:
  """Whether `path` is a TFLite flatbuffer file (by its extension)."""
  return path.endswith('.tflite') and os.path.isfile(path)


def _load_config(path: str) -> config_pb2.ExperimentOptions:
  try:
    return config_lib.load_experiment_config(path)
  except config_lib.ConfigError as e:
    raise PredictorError(str(e)) from None


def _tflite_description(path: str) -> Dict[str, Any]:
  """The `<path>.json` export_model writes beside a TFLite model."""
  try:
    with open(path + '.json', encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    raise PredictorError(f'{path}: no {os.path.basename(path)}.json beside the TFLite model '
                         '(export_model --format=tflite writes it)') from None
  except (OSError, ValueError) as e:
    raise PredictorError(f'{path}.json: cannot read: {e}') from None


def _tflite_config(path: str) -> config_pb2.ExperimentOptions:
  text = _tflite_description(path).get('config')
  if text is None:
    raise PredictorError(f'{path}.json: holds no config; pass a config file')
  try:
    return config_lib.parse_experiment_config(text, path + '.json')
  except config_lib.ConfigError as e:
    raise PredictorError(str(e)) from None


class Predictor:
  """Segments and tracks videos with a clip-kMaX SavedModel or checkpoint."""

  def __init__(self, saved_model_or_checkpoint: str, *, config_file: Optional[str] = None,
               mode: Optional[str] = None, clip_length: Optional[int] = None,
               queue_depth: int = 2):
    """Loads the model.

    Args:
      saved_model_or_checkpoint: An exported SavedModel directory (its
        `config.textproto` supplies data set, clip length and association
        options), a `.tflite` file from `export_model --format=tflite` (its
        `.tflite.json` description holds the config), or a checkpoint
        (`ckpt-N` prefix or a run directory; then `config_file` is required).
      config_file: ExperimentOptions textproto; overrides the export's own.
      mode: 'near_online' (clips of T >= 2 sharing one frame) or 'online' (T = 1);
        default online if T is 1, near-online otherwise.
      clip_length: T for near-online; default the config's
        `eval_dataset_options.clip_length` (at least 2); a TFLite model's T is
        fixed at export.
      queue_depth: clips the model stage may run ahead of association and of
        the caller (a background thread); 0 runs them one after the other.

    Raises:
      PredictorError: unknown mode, bad clip length, a path that is neither a
        SavedModel nor a checkpoint, a SavedModel without the clip-kMaX
        signatures, or a bad config.
    """
    if mode not in MODES + (None,):  # Checked again below; fail before a slow load.
      raise PredictorError(f'mode must be one of {MODES}; received {mode!r}')
    path = saved_model_or_checkpoint
    self.input_size = None  # (H, W) the model requires; None: any.
    if path.endswith('.tflite') and not os.path.isfile(path):
      raise PredictorError(f'{path}: no such TFLite file')
    if is_tflite_file(path):
      self.config = _load_config(config_file) if config_file else _tflite_config(path)
      self._descriptor_from_config()
      self._signatures, (frames, height, width) = self._load_tflite(path)
      self.input_size, self._fixed_clip_length = (height, width), frames
    elif is_saved_model_dir(path):
      config_path = config_file or os.path.join(path, CONFIG_FILENAME)
      if not os.path.isfile(config_path):
        raise PredictorError(f'{path}: SavedModel has no {CONFIG_FILENAME}; pass a config file')
      self.config = _load_config(config_path)
      self._descriptor_from_config()
      self._signatures = self._load_saved_model(path)
    else:
      if config_file is None:
        raise PredictorError(f'{path}: not a SavedModel directory (no saved_model.pb); '
                             'a checkpoint needs a config file')
      self.config = _load_config(config_file)
      self._descriptor_from_config()
      self._signatures = self._build_from_checkpoint(path)
    self.label_divisor = self.descriptor.panoptic_label_divisor
    self._set_clip_options(mode, clip_length)
    self.queue_depth = queue_depth

  @classmethod
  def from_export_module(cls, module, config: config_pb2.ExperimentOptions, *,
                         mode: Optional[str] = None, clip_length: Optional[int] = None,
                         use_tf_function: bool = True, queue_depth: int = 2) -> 'Predictor':
    """A predictor on an in-memory model, e.g. right after training.

    Args:
      module: A `deeplab2_vkmax.export_model.ClipKMaXExportModule` (model + post-processor).
      config: The ExperimentOptions the model was built from.
      mode: As in `__init__`.
      clip_length: As in `__init__`.
      use_tf_function: Run the module's traced `serve` (fast once traced); False
        runs it eagerly (no tracing; for tiny models and tests).
      queue_depth: As in `__init__`.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    predictor = cls.__new__(cls)
    predictor.config = config
    predictor._descriptor_from_config()  # pylint: disable=protected-access
    segment_clip = module.serve if use_tf_function else module.segment_clip

    def segment(clip: np.ndarray) -> Dict[str, Any]:
      return {k: v.numpy() for k, v in segment_clip(tf.constant(clip)).items()}
    predictor._module = module  # pylint: disable=protected-access
    predictor.input_size = None
    predictor._signatures = {'clip': segment, 'frame': segment}  # pylint: disable=protected-access
    predictor.label_divisor = predictor.descriptor.panoptic_label_divisor
    predictor._set_clip_options(mode, clip_length)  # pylint: disable=protected-access
    predictor.queue_depth = queue_depth
    return predictor

  def with_options(self, *, mode: Optional[str] = None, clip_length: Optional[int] = None,
                   queue_depth: Optional[int] = None) -> 'Predictor':
    """A predictor sharing this one's loaded model, with other clip options
    (loading a SavedModel takes seconds; this takes none).

    Args:
      mode: As in `__init__`.
      clip_length: As in `__init__`.
      queue_depth: As in `__init__`; None keeps this predictor's.

    Raises:
      PredictorError: unknown mode or bad clip length.
    """
    other = copy.copy(self)
    other._set_clip_options(mode, clip_length)  # pylint: disable=protected-access
    if queue_depth is not None:
      other.queue_depth = queue_depth
    return other

  def _set_clip_options(self, mode: Optional[str], clip_length: Optional[int]) -> None:
    fixed = getattr(self, '_fixed_clip_length', None)  # A TFLite model's T.
    if fixed is not None:
      if clip_length not in (None, fixed):
        raise PredictorError(f'the TFLite model takes clips of {fixed} frames (fixed at '
                             f'export); received clip_length={clip_length}')
      clip_length = fixed
    if mode is None:
      mode = 'online' if clip_length == 1 else 'near_online'
    if mode not in MODES:
      raise PredictorError(f'mode must be one of {MODES}; received {mode!r}')
    if mode == 'online':
      if clip_length not in (None, 1):
        raise PredictorError(f'online mode runs clips of 1 frame; received clip_length={clip_length}')
      self.clip_length = 1
    else:
      self.clip_length = int(clip_length or max(self.config.eval_dataset_options.clip_length, 2))
      if self.clip_length < 2:
        raise PredictorError(f'near_online mode needs clip_length >= 2; received {clip_length}')
    self.mode = mode

  def _descriptor_from_config(self) -> None:
    name = self.config.eval_dataset_options.dataset or self.config.train_dataset_options.dataset
    try:
      self.descriptor = dataset_lib.get_dataset_descriptor(name)
    except ValueError as e:
      raise PredictorError(str(e)) from None

  def _load_saved_model(self, path: str) -> Dict[str, Callable[[np.ndarray], Dict[str, Any]]]:
    """Loads the SavedModel; returns {'clip': fn([T, H, W, 3]), 'frame': fn([1, H, W, 3])}."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise PredictorError(f'{path}: cannot load SavedModel: {first_line}') from None
    self._loaded = loaded  # Keeps the signatures' variables alive.
    functions = {}
    for key, name in (('clip', 'serving_default'), ('frame', 'serving_frame')):
      signature = loaded.signatures.get(name)
      if signature is None:
        raise PredictorError(f'{path}: not a clip-kMaX SavedModel: no {name!r} signature '
                             f'(has {sorted(loaded.signatures.keys())})')
      inputs = signature.structured_input_signature[1]
      missing = sorted(set(_REQUIRED_OUTPUTS) - set(signature.structured_outputs))
      if common.EXPORT_INPUT_NAME not in inputs or missing:
        raise PredictorError(f'{path}: not a clip-kMaX SavedModel: signature {name!r} takes '
                             f'{sorted(inputs)} and lacks outputs {missing}')
      functions[key] = self._numpy_signature(signature, single_frame=key == 'frame')
    return functions

  @staticmethod
  def _numpy_signature(signature, single_frame: bool):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def segment(clip: np.ndarray) -> Dict[str, Any]:
      tensor = tf.constant(clip[0] if single_frame else clip)
      return {k: v.numpy() for k, v in signature(**{common.EXPORT_INPUT_NAME: tensor}).items()}
    return segment

  def _load_tflite(self, path: str):
    """({'clip': fn([T, H, W, 3])}, (T, H, W)) of a TFLite clip model."""
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    try:
      interpreter = litert.Interpreter(model_path=path, num_threads=os.cpu_count())
      interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise PredictorError(f'{path}: cannot load TFLite model: {first_line}') from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    names = _tflite_description(path).get('outputs', [])
    shape = tuple(int(d) for d in inputs[0]['shape']) if len(inputs) == 1 else ()
    if (len(shape) != 4 or shape[-1] != 3 or len(outputs) != len(names)
        or set(_REQUIRED_OUTPUTS) - set(names)):
      raise PredictorError(f'{path}: not a clip-kMaX TFLite model (input {list(shape)}, '
                           f'outputs {names}); export one with export_model --format=tflite')
    input_index = inputs[0]['index']
    output_indices = [detail['index'] for detail in outputs]

    def segment(clip: np.ndarray) -> Dict[str, Any]:
      interpreter.set_tensor(input_index, clip)
      interpreter.invoke()
      return {name: interpreter.get_tensor(index) for name, index in zip(names, output_indices)}
    self._interpreter = interpreter
    return {'clip': segment, 'frame': segment}, shape[:3]

  def _build_from_checkpoint(self, path: str) -> Dict[str, Callable[[np.ndarray], Dict[str, Any]]]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from deeplab2_vkmax import export_model  # pylint: disable=g-import-not-at-top
    from deeplab2_vkmax import builder  # pylint: disable=g-import-not-at-top

    resolved = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
    if not resolved or not tf.io.gfile.exists(resolved + '.index'):
      raise PredictorError(f'{path}: no checkpoint found (expected a ckpt-N prefix or a '
                           'run directory with checkpoints)')
    train_options = self.config.train_dataset_options
    model = builder.build_model(self.config, dataset_lib.get_dataset_descriptor(
        train_options.dataset))
    model(tf.zeros([1, max(train_options.clip_length, 1), *train_options.crop_size, 3]),
          training=False)
    try:
      status = tf.train.Checkpoint(**model.checkpoint_items).read(resolved)
      status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      first_line = str(e).strip().splitlines()[0]
      raise PredictorError(f'{resolved}: checkpoint does not match the config: '
                           f'{first_line}') from None
    module = export_model.ClipKMaXExportModule(
        model, builder.build_post_processor(self.config, self.descriptor))
    self._module = module

    def segment(clip: np.ndarray) -> Dict[str, Any]:
      return {k: v.numpy() for k, v in module.serve(tf.constant(clip)).items()}
    return {'clip': segment, 'frame': segment}

  def new_associater(self):
    """A fresh cross-clip associater for one video (the config's association
    options; it takes T from the clips it receives)."""
    from deeplab2_vkmax import builder  # pylint: disable=g-import-not-at-top
    return builder.build_associater(self.config, self.descriptor)

  def segment_clip(self, clip: np.ndarray) -> Dict[str, np.ndarray]:
    """Runs the model on one uint8 clip [T, H, W, 3] (no association).

    Returns:
      The SavedModel's outputs as numpy (see `deeplab2_vkmax.export_model`).
    """
    clip = np.asarray(clip, np.uint8)
    return self._signatures['frame' if len(clip) == 1 else 'clip'](clip)

  def predict_video(self, frames: Iterable[np.ndarray]) -> Iterator[FrameResult]:
    """Segments and tracks one video, yielding frames as soon as they are final.

    The model stage (reading `frames`, running the model) works in a background
    thread up to `queue_depth` clips ahead of association and of whatever the
    caller does with the results (see `deeplab2_vkmax.overlap`); `clock` holds
    both stages' frames/s.

    Args:
      frames: uint8 [H, W, 3] RGB frames of one video, in order, all one size.

    Yields:
      `FrameResult`s in frame order, one per input frame.

    Raises:
      PredictorError: a frame that is not uint8 [H, W, 3] or changes size.
    """
    from deeplab2_vkmax import overlap as overlap_lib  # pylint: disable=g-import-not-at-top
    associater = self.new_associater()
    self.clock = overlap_lib.StageClock()
    clips = self.clock.timed('model', self._segmented_clips(frames), lambda item: item[2])
    for frame_ids, outputs, _ in overlap_lib.run_ahead(clips, self.queue_depth):
      start = time.perf_counter()
      results = list(self._associate_clip(associater, frame_ids, outputs))
      self.clock.add('host', time.perf_counter() - start, len(results))
      yield from results

  def _segmented_clips(self, frames: Iterable[np.ndarray]):
    """(frame ids (-1: padding), model outputs, frames new in this clip) per clip."""
    for frame_ids, clip, num_new in clips.stream_clips(self._checked_frames(frames),
                                                       self.clip_length):
      yield frame_ids, self.segment_clip(clip), num_new

  def _checked_frames(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """`frames` as arrays, refusing any that is not uint8 [H, W, 3] of one size."""
    shape = None
    for index, frame in enumerate(frames):
      frame = np.asarray(frame)
      if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise PredictorError(f'frame {index}: expected uint8 [H, W, 3]; received '
                             f'{frame.dtype} {list(frame.shape)}')
      if shape is not None and frame.shape != shape:
        raise PredictorError(f'frame {index}: size {frame.shape[:2]} differs from the '
                             f'first frame {shape[:2]}')
      if shape is None and self.input_size and frame.shape[:2] != self.input_size:
        height, width = frame.shape[:2]
        raise PredictorError(
            f'frame {index}: size {height}x{width}, but the TFLite model takes '
            f'{self.input_size[0]}x{self.input_size[1]} frames (fixed at export; export '
            f'one with --format=tflite --tflite_input_size={height},{width})')
      shape = frame.shape
      yield frame

  def _associate_clip(self, associater, frame_ids: List[int],
                      outputs: Dict[str, np.ndarray]) -> Iterator[FrameResult]:
    clip_panoptic = outputs[common.PANOPTIC_PRED]  # [T, H, W], clip-local ids.
    segment_ids = outputs[common.SEGMENT_IDS].reshape(-1).astype(np.int64)  # [N]
    segment_scores = outputs[common.SEGMENT_SCORES].reshape(-1)  # [N]
    scores: Dict[int, float] = {}
    for segment_id, score in zip(segment_ids, segment_scores):
      if score > 0:  # Kept slots only; stuff class 0 has id 0.
        scores[int(segment_id)] = max(scores.get(int(segment_id), 0.0), float(score))
    emitted = associater.update_from_slots(clip_panoptic, segment_ids,
                                           outputs[common.PRED_QUERY_EMBEDDINGS])
    # The associater emits the clip's last len(emitted) frames; padding has id -1.
    first = len(frame_ids) - len(emitted)
    for clip_index, panoptic in enumerate(emitted, start=first):
      if frame_ids[clip_index] < 0:
        continue
      yield FrameResult(
          frame_index=frame_ids[clip_index],
          panoptic=np.asarray(panoptic, np.int32),
          semantic=np.asarray(outputs[common.SEMANTIC_PRED][clip_index], np.int32),
          segments=self.frame_segments(panoptic, clip_panoptic[clip_index], scores))

  def frame_segments(self, panoptic: np.ndarray, clip_local: np.ndarray,
                     scores: Dict[int, float]) -> List[Dict[str, Any]]:
    """Per-segment summaries of one frame (see `FrameResult.segments`).

    Args:
      panoptic: int [H, W] frame with video-level ids.
      clip_local: int [H, W] the same frame with the clip's own ids (the
        associater relabels whole segments, so each video id has one clip id).
      scores: clip-level panoptic id -> slot confidence.
    """
    height, width = panoptic.shape
    ids, inverse, areas = np.unique(panoptic, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(height, width)
    num_ids = len(ids)
    rows = np.zeros((num_ids, height), bool)
    rows[inverse, np.arange(height)[:, None]] = True
    cols = np.zeros((num_ids, width), bool)
    cols[inverse, np.arange(width)[None, :]] = True
    local_ids = np.zeros(num_ids, np.int64)
    local_ids[inverse.ravel()] = clip_local.ravel()
    segments = []
    for k, panoptic_id in enumerate(ids):
      semantic, instance = divmod(int(panoptic_id), self.label_divisor)
      if semantic == self.descriptor.ignore_label:
        continue
      row_hits, col_hits = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
      is_thing = self.descriptor.is_thing(semantic)
      segments.append({
          'id': int(panoptic_id),
          'class': semantic,
          'class_name': (self.descriptor.class_names[semantic]
                         if 0 <= semantic < self.descriptor.num_classes else str(semantic)),
          'track_id': instance if is_thing else 0,
          'score': scores.get(int(local_ids[k])),
          'box': [int(col_hits[0]), int(row_hits[0]), int(col_hits[-1]) + 1,
                  int(row_hits[-1]) + 1],
          'area': int(areas[k]),
      })
    return segments
