"""Strict restore of clip-kMaX weights from a TF2 object-graph checkpoint.

The checkpoints this reads are written as
`tf.train.Checkpoint(global_step=..., **model.checkpoint_items)`: ours, and
DeepLab2's kMaX-DeepLab checkpoints, whose keys our `checkpoint_items` reproduce
name for name (`tests/model/testdata/deeplab2_kmax_r50_checkpoint_keys.txt`).
`tf.train.Checkpoint.read` alone restores whatever happens to match and ignores the
rest, so a renamed layer silently keeps its random initialisation. Here every model
variable must find its key with the same shape, and every stored key of a restored
item must be used; otherwise a `ValueError` lists the offenders. Paths are walked
through the checkpoint's stored object graph and values assigned variable by
variable, so any subset (down to one layer inside the transformer decoder) can be
skipped.
"""

import collections
import os
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

# Top-level checkpoint entries that are not model weights: the trainer's step
# counter, `Checkpoint.save`'s counter and optimizer state.
_NON_MODEL_ITEMS = ('global_step', 'save_counter')
_NON_MODEL_PREFIXES = ('optimizer',)
# Entries listed per error category before the message says "and N more".
_MAX_LISTED = 40


def checkpoint_variables(items: Mapping[str, object]
                         ) -> Dict[str, tf.Variable]:
  """Checkpoint key -> variable, as `tf.train.Checkpoint(**items)` names them.

  Keys are object-graph paths without the `/.ATTRIBUTES/VARIABLE_VALUE` suffix,
  e.g. 'encoder/_stem/_conv/kernel'. Like TensorFlow, the walk is breadth first
  and a variable reachable along several paths takes the first one.

  Args:
    items: name -> trackable (e.g. `model.checkpoint_items`).

  Returns:
    An ordered dict of key -> variable.
  """
  root = tf.train.Checkpoint(**items)
  view = tf.train.TrackableView(root)
  seen = {id(root)}
  queue = collections.deque([((), root)])
  variables = {}
  while queue:
    path, parent = queue.popleft()
    for name, child in view.children(parent).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      child_path = path + (name,)
      if isinstance(child, (tf.Variable, keras.Variable)):
        variables['/'.join(child_path)] = child
      else:
        queue.append((child_path, child))
  return variables


class _StoredGraph:
  """The object graph of a TF2 checkpoint: paths -> stored variable values.

  A variable reachable along several paths is stored once, under its shortest
  path: in a trainer checkpoint the trainable weights sit under
  'optimizer/_trainable_variables/<i>', not under 'encoder/...'. So keys are not
  matched as strings; paths are walked through the stored object graph, as
  `tf.train.Checkpoint.restore` does.
  """

  def __init__(self, path: str):
    try:
      self.reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as e:  # A truncated or foreign file.
      raise ValueError(f'checkpoint "{path}" does not read: '
                       f'{" ".join(str(e).split())}') from None
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(self.reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
    self._children = [{child.local_name: child.node_id for child in node.children}
                      for node in graph.nodes]
    self.value_keys = {}  # node id -> checkpoint key of its variable value.
    for node_id, node in enumerate(graph.nodes):
      for attribute in node.attributes:
        if attribute.name == 'VARIABLE_VALUE':
          self.value_keys[node_id] = attribute.checkpoint_key
    shapes = self.reader.get_variable_to_shape_map()
    self.shapes = {node_id: tuple(shapes[key]) for node_id, key in self.value_keys.items()}
    # Every path to every variable node (children expanded on first visit only).
    self.paths = collections.defaultdict(list)
    seen = {0}
    queue = collections.deque([(0, ())])
    while queue:
      node_id, parts = queue.popleft()
      for name, child in self._children[node_id].items():
        child_parts = parts + (name,)
        if child in self.value_keys:
          self.paths[child].append('/'.join(child_parts))
        if child not in seen:
          seen.add(child)
          queue.append((child, child_parts))

  def find(self, key: str) -> Optional[int]:
    """The variable node at path `key` ('a/b/kernel'), or None."""
    node_id = 0
    for part in key.split('/'):
      node_id = self._children[node_id].get(part)
      if node_id is None:
        return None
    return node_id if node_id in self.value_keys else None


def resolve_checkpoint_path(path: str) -> str:
  """`path` itself, or the latest checkpoint when `path` is a directory.

  Raises:
    ValueError: `path` is a directory without a checkpoint, or no checkpoint
      prefix (no `<path>.index` file).
  """
  if tf.io.gfile.isdir(path):
    resolved = tf.train.latest_checkpoint(path)
    if not resolved:
      raise ValueError(f'no checkpoint found in directory "{path}"')
    return resolved
  if not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'no checkpoint at "{path}" (neither a run directory nor a '
                     f'checkpoint prefix with a {os.path.basename(path)}.index file)')
  return path


def _listing(title: str, entries: List[str]) -> str:
  shown = entries[:_MAX_LISTED]
  more = len(entries) - len(shown)
  text = f'{title} ({len(entries)}):\n  ' + '\n  '.join(shown)
  return text + (f'\n  ... and {more} more' if more else '')


def _is_non_model_key(key: str) -> bool:
  top = key.split('/', 1)[0]
  return top in _NON_MODEL_ITEMS or top.startswith(_NON_MODEL_PREFIXES)


def _skipped(key: str, skip: Tuple[str, ...]) -> bool:
  return any(key == prefix or key.startswith(prefix + '/') for prefix in skip)


def restore_checkpoint(model: keras.Model, path: str, *,
                       skip: Iterable[str] = (),
                       ignore_stored_items: Iterable[str] = (),
                       items: Optional[Mapping[str, object]] = None) -> str:
  """Restores every variable of `model.checkpoint_items` from `path`, strictly.

  Names are mapped explicitly: a variable's key is its object-graph path
  (`checkpoint_variables`), which for `ClipKMaX` equals DeepLab2's. `skip` takes
  checkpoint items or key prefixes that keep their initialisation, e.g.
  `class_dependent_prefixes(model)` when the checkpoint was trained with another
  number of classes, or every item but 'encoder' to take only the backbone.
  Skipped keys, `global_step`, `save_counter` and optimizer state in the
  checkpoint are ignored; any other stored key must be consumed. Nothing is
  assigned unless the whole check passes.

  Args:
    model: a built model with a `checkpoint_items` dict (e.g. `ClipKMaX`).
    path: a checkpoint prefix (`.../ckpt-N`) or a directory (its latest one).
    skip: checkpoint item names or key prefixes ('a/b' covers 'a/b' and
      'a/b/...') not to restore.
    ignore_stored_items: top-level checkpoint entries the model has no item
      for and that may stay unused (e.g. 'semantic_decoder' when a checkpoint
      with the auxiliary semantic decoder initialises a model without it).
    items: overrides `model.checkpoint_items` (name -> trackable).

  Returns:
    The resolved checkpoint prefix.

  Raises:
    ValueError: a `skip` entry that matches no item or key, an unbuilt model, no
      checkpoint at `path`, model variables without a stored value, stored keys
      no variable uses, or shape mismatches; the message lists all of them.
  """
  all_items = dict(model.checkpoint_items if items is None else items)
  skip = tuple(skip)
  all_variables = checkpoint_variables(all_items)
  if not all_variables:
    raise ValueError('the model has no variables to restore: build it (call it '
                     'once) before restoring a checkpoint')
  unknown = [prefix for prefix in skip
             if not any(_skipped(key, (prefix,)) for key in all_variables)]
  if unknown:
    raise ValueError(f'skip entries {unknown} match no checkpoint item or key of '
                     f'the model; valid items: {sorted(all_items)}')
  variables = {key: variable for key, variable in all_variables.items()
               if not _skipped(key, skip)}
  resolved = resolve_checkpoint_path(path)
  stored = _StoredGraph(resolved)
  ignored = skip + tuple(ignore_stored_items)
  nodes = {key: stored.find(key) for key in variables}
  missing = sorted(key for key, node in nodes.items() if node is None)
  mismatched = sorted(
      f'{key}: model {tuple(variables[key].shape)}, checkpoint {stored.shapes[node]}'
      for key, node in nodes.items()
      if node is not None and tuple(variables[key].shape) != stored.shapes[node])
  consumed = set(nodes.values())
  unused = []
  for node_id, paths in stored.paths.items():
    model_paths = [p for p in paths if not _is_non_model_key(p)]
    if (node_id not in consumed and model_paths
        and not any(_skipped(p, ignored) for p in model_paths)):
      unused.append(model_paths[0])
  unused.sort()
  if missing or unused or mismatched:
    parts = [f'checkpoint "{resolved}" does not match the model '
             f'(skipped: {list(skip) or "nothing"})']
    if missing:
      parts.append(_listing('model variables without a stored value', missing))
    if unused:
      parts.append(_listing('stored keys no model variable uses', unused))
    if mismatched:
      parts.append(_listing('shape mismatches', mismatched))
    raise ValueError('\n'.join(parts))
  for key, variable in variables.items():
    variable.assign(stored.reader.get_tensor(stored.value_keys[nodes[key]]))
  return resolved


def class_dependent_prefixes(model: keras.Model, *, class_heads: bool = True,
                             semantic_last_layer: bool = True) -> Tuple[str, ...]:
  """`skip` prefixes of the layers whose shapes depend on the class count.

  Args:
    model: a built `ClipKMaX`.
    class_heads: include the final `transformer_class_head` and the class head
      of every kMaX layer's auxiliary predictor (`.../_transformer_class_head`).
    semantic_last_layer: include `semantic_last_layer` (when the model has it).

  Returns:
    Item names and key prefixes, for `restore_checkpoint(..., skip=...)`.
  """
  items = model.checkpoint_items
  prefixes = []
  if class_heads:
    prefixes.append('transformer_class_head')
    for key in checkpoint_variables(items):
      parts = key.split('/')
      if '_transformer_class_head' in parts:
        prefix = '/'.join(parts[:parts.index('_transformer_class_head') + 1])
        if prefix not in prefixes:
          prefixes.append(prefix)
  if semantic_last_layer and 'semantic_last_layer' in items:
    prefixes.append('semantic_last_layer')
  return tuple(prefixes)
