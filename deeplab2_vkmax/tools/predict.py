r"""vkmax-predict: video panoptic segmentation with track ids on your own video.

  vkmax-predict --input=<video file | frame folder | glob> --saved_model=<dir> \
      --output_dir=<dir> [--mode=near_online|online] [--clip_length=T]
  vkmax-predict --input=... --tflite=<model.tflite> ...   (export_model --format=tflite;
                                                          T and frame size fixed at export)
  vkmax-predict --input=... --config_file=<textproto> --checkpoint_path=<ckpt> ...
  python -m deeplab2_vkmax.tools.predict ...   (the same)

Streams: frames are read, segmented clip by clip, associated (video stitching +
HiLA-MB) and written as they go; only the current clip is held in memory.

Writes under --output_dir:
  overlays/<frame %06d>.png   frame + panoptic colours, contours, '<class> <track id>'
  overlay.mp4                 the overlays as a video (mp4v, the input's frame rate)
  panoptic/<frame %06d>.png   KITTI-STEP encoding: R = semantic (255 = void),
                              G = track id // 256, B = track id % 256
  segments.jsonl              one JSON object per frame: {"frame_index", "file",
                              "segments": [{id, class, class_name, track_id, score,
                              box [x0, y0, x1, y1], area}]}

Bad input (missing / unreadable video, a non-image file in a frame folder, a
SavedModel without the clip-kMaX signatures, a non-empty --output_dir without
--overwrite) exits with one line `error: ...`.
"""

import argparse
import glob
import json
import os
import shutil
import sys
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from deeplab2_vkmax import cli
from deeplab2_vkmax.data import step_png
from deeplab2_vkmax.data import tfrecord_writer

_VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v')
_DEFAULT_FOLDER_FPS = 10.0


class InputError(ValueError):
  """An input the CLI cannot read; one line naming the file."""


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='vkmax-predict',
      description='Video panoptic segmentation with track ids (Video-kMaX).')
  parser.add_argument('--input', required=True,
                      help='A video file (mp4/avi/...), a folder of frames or a glob.')
  parser.add_argument('--saved_model', help='An exported SavedModel directory.')
  parser.add_argument('--tflite', help='A .tflite file from export_model --format=tflite '
                      '(run on the LiteRT interpreter with XNNPACK).')
  parser.add_argument('--config_file', help='ExperimentOptions textproto (with '
                      '--checkpoint_path, or to override the SavedModel\'s config).')
  parser.add_argument('--checkpoint_path', help='A ckpt-N prefix or a run directory.')
  parser.add_argument('--output_dir', required=True, help='Where outputs are written.')
  parser.add_argument('--mode', default=None, choices=('near_online', 'online'),
                      help='Default: online if T is 1, near-online otherwise.')
  parser.add_argument('--clip_length', type=int, default=None,
                      help='T for near-online (default: the config\'s eval clip_length).')
  parser.add_argument('--fps', type=float, default=None,
                      help='Frame rate of overlay.mp4 (default: the video\'s, or 10).')
  parser.add_argument('--no_overlay_video', action='store_true', help='Skip overlay.mp4.')
  parser.add_argument('--overwrite', action='store_true',
                      help='Reuse a non-empty --output_dir: first delete what '
                      'vkmax-predict writes there (overlays/, panoptic/, '
                      'overlay.mp4, segments.jsonl).')
  parser.add_argument('--no_progress', action='store_true', help='No progress bar.')
  parser.add_argument('--queue_depth', type=int, default=2,
                      help='Clips the model may run ahead of association and the writers '
                      '(a background thread); 0 runs them one after the other.')
  args = parser.parse_args(argv)
  if args.clip_length is not None and args.clip_length < 1:
    parser.error(f'--clip_length must be >= 1, got {args.clip_length}')
  if args.queue_depth < 0:
    parser.error(f'--queue_depth must be >= 0, got {args.queue_depth}')
  if args.fps is not None and not args.fps > 0:
    parser.error(f'--fps must be > 0, got {args.fps:g}')
  if sum(bool(m) for m in (args.saved_model, args.tflite, args.checkpoint_path)) != 1:
    parser.error('give exactly one of --saved_model, --tflite or --checkpoint_path')
  if args.tflite and not args.tflite.endswith('.tflite'):
    parser.error(f'--tflite must name a .tflite file, got {args.tflite}')
  if args.checkpoint_path and not args.config_file:
    parser.error('--checkpoint_path needs --config_file')
  return args


# ----------------------------------------------------------------------------
# Frame sources: (frame iterator, frame count or None, fps or None).


def _is_glob(pattern: str) -> bool:
  return any(c in pattern for c in '*?[')


def _image_files(input_path: str) -> List[str]:
  """Frame files in natural order: frame2 before frame10 (as the converters)."""
  if os.path.isdir(input_path):
    names = sorted((n for n in os.listdir(input_path) if not n.startswith('.')),
                   key=tfrecord_writer.natural_key)
    files = [os.path.join(input_path, n) for n in names
             if os.path.isfile(os.path.join(input_path, n))]
  else:
    files = sorted((f for f in glob.glob(input_path) if os.path.isfile(f)),
                   key=lambda f: (os.path.dirname(f),
                                  tfrecord_writer.natural_key(os.path.basename(f))))
  if not files:
    raise InputError(f'{input_path}: no frames found')
  return files


def _read_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    del e
    raise InputError(f'{path}: not a readable image') from None


def _image_frames(files: List[str]) -> Iterator[np.ndarray]:
  for path in files:
    yield _read_image(path)


def _animation_frames(path: str) -> Iterator[np.ndarray]:
  """Every frame of a multi-frame image (animated GIF, APNG, multi-page TIFF)."""
  with Image.open(path) as image:
    for index in range(image.n_frames):
      image.seek(index)
      yield np.asarray(image.convert('RGB'))


def _frame_count(path: str) -> int:
  """Frames in an image file (1 for a still image)."""
  try:
    with Image.open(path) as image:
      return int(getattr(image, 'n_frames', 1))
  except (OSError, ValueError, Image.DecompressionBombError):
    raise InputError(f'{path}: not a readable image') from None


def _open_video(path: str):
  import cv2  # pylint: disable=g-import-not-at-top
  capture = cv2.VideoCapture(path)
  if not capture.isOpened():
    raise InputError(f'{path}: cannot open video')
  ok, first = capture.read()
  if not ok or first is None:
    capture.release()
    raise InputError(f'{path}: cannot read video (no decodable frame)')
  return capture, first


def _video_frames(path: str, capture, first,
                  expected: Optional[int]) -> Iterator[np.ndarray]:
  """Decoded frames; warns when fewer than the container announced (`expected`)."""
  import cv2  # pylint: disable=g-import-not-at-top
  decoded = 0
  try:
    frame = first
    while frame is not None:
      yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
      decoded += 1
      ok, frame = capture.read()
      if not ok:
        break
  finally:
    capture.release()
  if expected and decoded < expected:
    print(f'warning: {path}: decoded {decoded} of the {expected} frames the video '
          'announces (truncated or damaged file); the outputs cover those '
          f'{decoded}', file=sys.stderr)


def open_frames(input_path: str) -> Tuple[Iterator[np.ndarray], Optional[int], Optional[float]]:
  """Opens `input_path` as a stream of uint8 RGB frames.

  Args:
    input_path: A video file, an image (every frame of an animated one), a
      folder of images (in natural order: frame2 before frame10; hidden files
      skipped) or a glob of images (likewise).

  Returns:
    (frames iterator, number of frames or None, frames per second or None).

  Raises:
    InputError: a missing path, a video OpenCV cannot decode, or (while
      iterating) a file that is not an image.
  """
  if os.path.isdir(input_path) or (_is_glob(input_path) and not os.path.exists(input_path)):
    files = _image_files(input_path)
    # Fail before any work on a folder with a non-image file in it, or with
    # frames of another size than the first (a video has one size).
    first_size = None
    for path in files:
      try:
        with Image.open(path) as image:
          image.verify()
          width, height = image.size
      except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InputError(f'{path}: not an image (in frame folder {input_path})') from None
      if first_size is None:
        first_size = (height, width)
      elif (height, width) != first_size:
        raise InputError(f'{path}: frame size {height}x{width} (HxW) differs from the '
                         f'first frame\'s, {first_size[0]}x{first_size[1]} ({files[0]})')
    return _image_frames(files), len(files), None
  if not os.path.isfile(input_path):
    raise InputError(f'{input_path}: no such video file, frame folder or glob')
  if not input_path.lower().endswith(_VIDEO_EXTENSIONS):
    # A single image is a one-frame video; an animated one (GIF, APNG) is a
    # video of all its frames.
    count = _frame_count(input_path)
    if count > 1:
      return _animation_frames(input_path), count, None
    return _image_frames([input_path]), 1, None
  import cv2  # pylint: disable=g-import-not-at-top
  capture, first = _open_video(input_path)
  count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
  count = count if count > 0 else None
  fps = capture.get(cv2.CAP_PROP_FPS)
  return (_video_frames(input_path, capture, first, count), count,
          fps if fps and fps > 0 else None)


# ----------------------------------------------------------------------------
# Writers.

# What vkmax-predict writes under --output_dir.
_OUTPUT_DIRS = ('overlays', 'panoptic')
_OUTPUT_FILES = ('overlay.mp4', 'segments.jsonl')


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
  """Refuses a non-empty output folder unless `overwrite`; then clears our outputs.

  Outputs of an earlier, longer run left beside new ones would make the folder
  disagree with itself (old overlays, new segments.jsonl).

  Raises:
    InputError: a non-empty folder without `overwrite`, or a path that is a file
      or not writable.
  """
  try:  # Before the model loads: a typo costs a second, not a minute.
    cli.check_writable_dir(output_dir, '--output_dir')
  except cli.UsageError as e:
    raise InputError(str(e)) from None
  if not os.listdir(output_dir):
    return
  if not overwrite:
    raise InputError(f'{output_dir}: --output_dir is not empty; pass --overwrite to '
                     'replace the outputs of an earlier vkmax-predict run')
  for name in _OUTPUT_DIRS:
    shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
  for name in _OUTPUT_FILES:
    path = os.path.join(output_dir, name)
    if os.path.isfile(path):
      os.remove(path)


class _OutputWriter:
  """Writes every output of one frame as soon as it is final."""

  def __init__(self, output_dir: str, descriptor, fps: float, write_video: bool):
    self._descriptor = descriptor
    self._fps = fps
    self._write_video = write_video
    self.overlay_dir = os.path.join(output_dir, _OUTPUT_DIRS[0])
    self.panoptic_dir = os.path.join(output_dir, _OUTPUT_DIRS[1])
    os.makedirs(self.overlay_dir, exist_ok=True)
    os.makedirs(self.panoptic_dir, exist_ok=True)
    self.video_path = os.path.join(output_dir, _OUTPUT_FILES[0])
    self.segments_path = os.path.join(output_dir, _OUTPUT_FILES[1])
    self._segments = open(self.segments_path, 'w', encoding='utf-8')
    self._video = None

  def write(self, frame: np.ndarray, result) -> None:
    from deeplab2_vkmax import visualization  # pylint: disable=g-import-not-at-top
    name = '%06d.png' % result.frame_index
    overlay = visualization.overlay_panoptic(frame, result.panoptic, self._descriptor)
    Image.fromarray(overlay).save(os.path.join(self.overlay_dir, name))
    semantic, instance = np.divmod(result.panoptic.astype(np.int64),
                                   self._descriptor.panoptic_label_divisor)
    Image.fromarray(step_png.encode_panoptic_rgb(semantic, instance)).save(
        os.path.join(self.panoptic_dir, name))
    self._segments.write(json.dumps({'frame_index': result.frame_index, 'file': name,
                                     'segments': result.segments}) + '\n')
    if self._write_video:
      import cv2  # pylint: disable=g-import-not-at-top
      if self._video is None:
        height, width = overlay.shape[:2]
        self._video = cv2.VideoWriter(self.video_path, cv2.VideoWriter_fourcc(*'mp4v'),
                                      self._fps, (width, height))
        if not self._video.isOpened():
          raise InputError(f'{self.video_path}: cannot open for writing')
      self._video.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))

  def close(self) -> None:
    self._segments.close()
    if self._video is not None:
      self._video.release()


def run(args: argparse.Namespace) -> int:
  """Runs the prediction; returns the number of frames written."""
  frames, num_frames, video_fps = open_frames(args.input)  # Input errors come first.
  prepare_output_dir(args.output_dir, args.overwrite)
  cli.quiet_tensorflow()
  cli.initialise_devices()
  from deeplab2_vkmax import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  predictor = predictor_lib.Predictor(
      args.saved_model or args.tflite or args.checkpoint_path, config_file=args.config_file,
      mode=args.mode, clip_length=args.clip_length, queue_depth=args.queue_depth)
  writer = _OutputWriter(args.output_dir, predictor.descriptor,
                         fps=args.fps or video_fps or _DEFAULT_FOLDER_FPS,
                         write_video=not args.no_overlay_video)
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  progress = tqdm(total=num_frames, unit='frame', desc='vkmax-predict',
                  disable=args.no_progress, file=sys.stderr)
  # The predictor consumes frames ahead of the results it yields (one clip);
  # keep the frames it has not yet returned to draw the overlays on.
  pending = {}

  def remember(stream):
    for index, frame in enumerate(stream):
      pending[index] = frame
      yield frame

  start = time.perf_counter()
  written = 0
  write_seconds = 0.0
  try:
    for result in predictor.predict_video(remember(frames)):
      write_start = time.perf_counter()
      writer.write(pending.pop(result.frame_index), result)
      write_seconds += time.perf_counter() - write_start
      written += 1
      progress.update(1)
  finally:
    progress.close()
    writer.close()
  seconds = time.perf_counter() - start
  rates = predictor.clock.report()
  print(f'vkmax-predict: wrote {written} frames to {args.output_dir} in {seconds:.1f} s '
        f'({written / max(seconds, 1e-9):.2f} frames/s; decode + model '
        f'{rates.get("model_frames_per_second", 0):.2f}, association '
        f'{rates.get("host_frames_per_second", 0):.2f}, writers '
        f'{written / max(write_seconds, 1e-9):.2f} frames/s; '
        f'{"overlapped" if args.queue_depth else "one after the other"})', file=sys.stderr)
  return written


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Console-script entry point (`vkmax-predict`)."""
  args = _parse_args(argv)
  from deeplab2_vkmax import predictor as predictor_lib  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors(InputError, predictor_lib.PredictorError):
    run(args)


if __name__ == '__main__':
  main()
