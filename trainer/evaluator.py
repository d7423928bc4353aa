"""Orbit evaluator: per-sequence clips -> post-processing -> association -> STQ.

`eval_step` runs the model and the in-graph tube post-processor on one clip
(inside a tf.function); `eval_reduce` hands the clip to the host-side
`VideoScorer` (video stitching + HiLA-MB, then STQ); `eval_end` returns STQ, AQ
and IoU (STQ's segmentation quality SQ) and writes them, per sequence too, as JSON
under the eval directory (where IoU is named SQ). Orbit's controller writes the
returned dict as scalar summaries under their names, unprefixed, into the eval
summary directory: `evaluation/step/{STQ,AQ,IoU,VPQ}`.
"""

import json
import os
from typing import Callable, Dict, Optional

import keras
import numpy as np
import orbit
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.evaluation import evaluate
from deeplab2_vkmax.evaluation import video_scorer

ORIGINAL_SIZE = common.ORIGINAL_SIZE


class ClipKMaXEvaluator(orbit.StandardEvaluator):
  """Evaluates clip-kMaX + association on whole sequences."""

  def __init__(self, *, strategy: tf.distribute.Strategy, model: keras.Model, post_processor,
               eval_dataset, scorer_fn: Callable[[], video_scorer.VideoScorer],
               global_step: tf.Variable, output_dir: Optional[str] = None, log_fn=print):
    """Initialises the evaluator.

    Args:
      strategy: The distribution strategy.
      model: The clip-kMaX model.
      post_processor: A `ClipPostProcessor`.
      eval_dataset: Clips of batch size 1, sequences in order, clips of a
        sequence in order (see trainer/data_lib.py).
      scorer_fn: Creates a fresh `VideoScorer` for one evaluation.
      global_step: The training step (names the result files).
      output_dir: Where `metrics_step_<step>.json` is written; None = nowhere.
      log_fn: Where the result table goes.
    """
    self._strategy = strategy
    self._model = model
    self._post_processor = post_processor
    self._scorer_fn = scorer_fn
    self._global_step = global_step
    self._output_dir = output_dir
    self._log_fn = log_fn
    super().__init__(eval_dataset, options=orbit.StandardEvaluatorOptions(use_tf_function=True))

  def eval_begin(self) -> video_scorer.VideoScorer:
    return self._scorer_fn()

  def _replica_step(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    images = inputs[common.IMAGE]  # [1, T, H, W, 3]
    outputs = self._model(images, training=False)
    crop_size = tf.shape(images)[2:4]
    processed = self._post_processor(outputs, crop_size)
    return {
        common.PANOPTIC_PRED: processed[common.PANOPTIC_PRED],
        common.SEGMENT_IDS: processed[common.SEGMENT_IDS],
        common.PRED_QUERY_EMBEDDINGS: processed[common.PRED_QUERY_EMBEDDINGS],
        common.PANOPTIC_LABEL: inputs[common.PANOPTIC_LABEL],
        common.SEQUENCE_ID: inputs[common.SEQUENCE_ID],
        common.FRAME_ID: inputs[common.FRAME_ID],
        ORIGINAL_SIZE: inputs[ORIGINAL_SIZE],
    }

  def eval_step(self, iterator):
    return self._strategy.run(self._replica_step, args=(next(iterator),))

  def eval_reduce(self, state, step_outputs):
    local = {key: self._strategy.experimental_local_results(value)
             for key, value in step_outputs.items()}
    for replica in range(len(local[common.PANOPTIC_PRED])):
      values = {key: np.asarray(value[replica]) for key, value in local.items()}
      for b in range(values[common.PANOPTIC_PRED].shape[0]):
        height, width = values[ORIGINAL_SIZE][b]
        sequence_id = values[common.SEQUENCE_ID][b]
        if isinstance(sequence_id, bytes):
          sequence_id = sequence_id.decode('utf-8')
        state.add_clip(
            sequence_id=sequence_id,
            frame_ids=values[common.FRAME_ID][b],
            panoptic=values[common.PANOPTIC_PRED][b][:, :height, :width],
            segment_ids=values[common.SEGMENT_IDS][b],
            query_embeddings=values[common.PRED_QUERY_EMBEDDINGS][b],
            labels=values[common.PANOPTIC_LABEL][b][:, :height, :width])
    return state

  def eval_end(self, state=None) -> Dict[str, float]:
    if state is None:
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
