"""Orbit evaluator: the CLI evaluator's code path on the model being trained.

Every clip goes through the serving function `export_model.ClipKMaXExportModule`
(uint8 in; padding, model and tube post-processing in the graph) and then
`evaluation.evaluate.score_sequences` (clip cutting, association, metrics), so a
number in TensorBoard is computed by the same code as the number
`deeplab2_vkmax.evaluation.evaluate` gives for the exported SavedModel.
`evaluate` returns STQ, AQ and IoU (STQ's segmentation quality SQ) and the data
set's other metrics, and writes them, per sequence too, as JSON under the eval
directory (where IoU is named SQ). Orbit's controller writes the returned dict
as scalar summaries under their names, unprefixed, into the eval summary
directory: `evaluation/step/{STQ,AQ,IoU,VPQ,...}`. It also draws the first
sequence's tracking (`visualization.video_strip`: input | ground truth |
prediction with track ids) into `overlay_step_<step>.png` next to the JSON and
as the image summary `evaluation/overlay`.
"""

import json
import os
from typing import Callable, Dict, Iterable, Optional, Tuple

import keras
import numpy as np
import orbit
from PIL import Image
import tensorflow as tf

from deeplab2_vkmax import export_model
from deeplab2_vkmax import visualization
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.evaluation import evaluate
from deeplab2_vkmax.evaluation import video_scorer


class ClipKMaXEvaluator(orbit.AbstractEvaluator):
  """Evaluates clip-kMaX + association on whole sequences."""

  def __init__(self, *, model: keras.Model, post_processor,
               sequences_fn: Callable[[], Iterable[Tuple[str, np.ndarray, np.ndarray]]],
               clip_length: int, scorer_fn: Callable[[], video_scorer.VideoScorer],
               global_step: tf.Variable, output_dir: Optional[str] = None, log_fn=print,
               descriptor: Optional[dataset_lib.DatasetDescriptor] = None):
    """Initialises the evaluator.

    Args:
      model: The clip-kMaX model.
      post_processor: A `ClipPostProcessor`.
      sequences_fn: Yields the evaluated sequences: (sequence id, uint8 images
        [F, H, W, 3], int32 labels [F, H, W]).
      clip_length: T of the evaluation clips.
      scorer_fn: Creates a fresh `VideoScorer` for one evaluation.
      global_step: The training step (names the result files).
      output_dir: Where `metrics_step_<step>.json` is written; None = nowhere.
      log_fn: Where the result table goes.
      descriptor: The data set's descriptor; with it the first sequence's
        tracking picture is drawn (an image summary, and a PNG in `output_dir`).
    """
    self._descriptor = descriptor
    self._module = export_model.ClipKMaXExportModule(model, post_processor)
    self._sequences_fn = sequences_fn
    self._clip_length = clip_length
    self._scorer_fn = scorer_fn
    self._global_step = global_step
    self._output_dir = output_dir
    self._log_fn = log_fn

  def evaluate(self, num_steps) -> Dict[str, float]:
    """Scores every sequence (`num_steps` must be -1: whole sequences only;
    `evaluator_options.max_num_sequences` limits them)."""
    if int(num_steps) != -1:
      raise ValueError(f'the evaluator scores whole sequences: steps must be -1, got '
                       f'{int(num_steps)} (limit evaluator_options.max_num_sequences instead)')
    scorer = self._scorer_fn()
    first = _FirstSequence()
    evaluate.score_sequences(self._module.serve, first.watch(self._sequences_fn()), scorer,
                             clip_length=self._clip_length, writer=first)
    logs = self.eval_end(scorer)
    if self._descriptor is not None and first.frames:
      self._draw(first)
    return logs

  def _draw(self, first: '_FirstSequence') -> None:
    """The first sequence's tracking picture: a PNG beside the JSON, an image summary."""
    step = int(self._global_step.numpy())
    strip = visualization.video_strip(first.images, first.labels, first.prediction(),
                                      self._descriptor)
    tf.summary.image('evaluation/overlay', strip[np.newaxis], step=step)
    if self._output_dir:
      os.makedirs(self._output_dir, exist_ok=True)
      path = os.path.join(self._output_dir, f'overlay_step_{step}.png')
      Image.fromarray(strip).save(path + '.tmp.png')
      os.replace(path + '.tmp.png', path)

  def eval_end(self, state: video_scorer.VideoScorer) -> Dict[str, float]:
    """Logs and writes the scores of a finished evaluation; returns the summaries."""
    if not state.num_frames:
      raise ValueError('The evaluation data set yielded no clip: check eval_dataset_options '
                       '(file_pattern, split, max_num_sequences).')
    result = state.result()
    step = int(self._global_step.numpy())
    logs = {'evaluation/step/STQ': float(result['STQ']),
            'evaluation/step/AQ': float(result['AQ']),
            'evaluation/step/IoU': float(result['IoU'])}
    self._log_fn(format_result_table(result, step, state.num_sequences, state.num_frames))
    # The other metrics of the data set's protocol, summarised as the CLI does.
    summary = evaluate.summarise({name: metric.result()
                                  for name, metric in state.metrics.items() if name != 'stq'})
    for key, value in summary['overall'].items():
      if isinstance(value, float):
        logs[f'evaluation/step/{key}'] = value
    vpq = state.metrics.get('vpq')
    if vpq is not None:
      self._log_fn(f'  {vpq.describe()}: {logs["evaluation/step/VPQ"]:.3f}')
    others = [f'{key} {value:.3f}' for key, value in summary['overall'].items()
              if isinstance(value, float) and not key.startswith('VPQ')]
    if others:
      self._log_fn('  ' + ', '.join(others))
    if self._output_dir:
      os.makedirs(self._output_dir, exist_ok=True)
      report = {'step': step, 'num_sequences': state.num_sequences,
                'num_frames': state.num_frames,
                'STQ': float(result['STQ']), 'AQ': float(result['AQ']),
                'SQ': float(result['IoU']),
                'VPQ': logs.get('evaluation/step/VPQ'),
                'overall': {k: v for k, v in summary['overall'].items() if isinstance(v, float)},
                'per_sequence': _per_sequence(result),
                'association_per_sequence': _jsonable(state.association_statistics)}
      path = os.path.join(self._output_dir, f'metrics_step_{step}.json')
      with open(path + '.tmp', 'w') as f:
        json.dump(report, f, indent=2)
      os.replace(path + '.tmp', path)
    return logs


_jsonable = video_scorer.jsonable


class _FirstSequence:
  """Keeps the first evaluated sequence: its frames, labels and the emitted
  predictions (a `score_sequences` writer)."""

  def __init__(self):
    self.sequence_id = None
    self.images = self.labels = None
    self.frames: Dict[int, np.ndarray] = {}

  def watch(self, sequences):
    for sequence_id, images, labels in sequences:
      if self.sequence_id is None:
        self.sequence_id, self.images, self.labels = sequence_id, images, labels
      yield sequence_id, images, labels

  def write(self, sequence_id, frame_id, panoptic) -> None:
    if sequence_id == self.sequence_id:
      self.frames[frame_id] = panoptic

  def prediction(self) -> np.ndarray:
    return np.stack([self.frames[f] for f in range(len(self.labels))])


def _per_sequence(result) -> Dict[str, Dict[str, float]]:
  per_sequence = {}
  for key, name in (('STQ_per_seq', 'STQ'), ('AQ_per_seq', 'AQ'), ('IoU_per_seq', 'SQ'),
                    ('Length_per_seq', 'frames')):
    values = result.get(key, [])
    ids = result.get('ID_per_seq', list(range(len(values))))
    for sequence_id, value in zip(ids, values):
      per_sequence.setdefault(str(sequence_id), {})[name] = float(value)
  return per_sequence


def format_result_table(result, step: int, num_sequences: int, num_frames: int) -> str:
  """The printed evaluation table: overall and per sequence."""
  lines = [f'eval @ step {step}: {num_sequences} sequences, {num_frames} frames',
           f'  {"sequence":>10}  {"STQ":>6}  {"AQ":>6}  {"SQ":>6}']
  for sequence_id, values in sorted(_per_sequence(result).items()):
    lines.append(f'  {sequence_id:>10}  {values.get("STQ", float("nan")):6.3f}  '
                 f'{values.get("AQ", float("nan")):6.3f}  {values.get("SQ", float("nan")):6.3f}')
  lines.append(f'  {"overall":>10}  {result["STQ"]:6.3f}  {result["AQ"]:6.3f}  '
               f'{result["IoU"]:6.3f}')
  return '\n'.join(lines)
