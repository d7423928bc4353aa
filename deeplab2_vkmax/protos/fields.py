"""Proto fields as Python keyword arguments: where each default is declared once.

A setting's default lives in its `.proto` file only. Classes that take the setting
as a keyword argument use `defaults(Message)[name]` as their signature default,
and `deeplab2_vkmax.builder` passes a config's message with `values(message)`
(same names), so an empty config and a default-constructed object agree.

Floats are proto `float`s (float32): both functions return the shortest decimal
that round-trips through float32, i.e. the value as written in the config or the
`.proto` (0.8, not 0.800000011920929).
"""

from typing import Any, Dict, Iterable, Optional, Type

import numpy as np
from google.protobuf import descriptor as descriptor_lib
from google.protobuf import message as message_lib


def _python_value(field: descriptor_lib.FieldDescriptor, value: Any) -> Any:
  if field.type == descriptor_lib.FieldDescriptor.TYPE_FLOAT:
    return float(str(np.float32(value)))  # str: the shortest round-trip decimal.
  return value


def _scalar_fields(message_type: Type[message_lib.Message],
                   names: Optional[Iterable[str]]) -> list:
  fields = [f for f in message_type.DESCRIPTOR.fields
            if f.type != descriptor_lib.FieldDescriptor.TYPE_MESSAGE
            and not _is_repeated(f)]
  if names is None:
    return fields
  by_name = {f.name: f for f in fields}
  return [by_name[name] for name in names]


def _is_repeated(field: descriptor_lib.FieldDescriptor) -> bool:
  repeated = getattr(field, 'is_repeated', None)  # protobuf >= 5.
  if repeated is not None:
    return repeated() if callable(repeated) else bool(repeated)
  return field.label == descriptor_lib.FieldDescriptor.LABEL_REPEATED


def defaults(message_type: Type[message_lib.Message],
             names: Optional[Iterable[str]] = None) -> Dict[str, Any]:
  """{field name: its declared default} of `message_type`'s scalar fields
  (`names` only, when given)."""
  return {f.name: _python_value(f, f.default_value)
          for f in _scalar_fields(message_type, names)}


def values(message: message_lib.Message,
           names: Optional[Iterable[str]] = None) -> Dict[str, Any]:
  """{field name: value, set or default} of `message`'s scalar fields (`names`
  only, when given), as keyword arguments."""
  return {f.name: _python_value(f, getattr(message, f.name))
          for f in _scalar_fields(type(message), names)}
