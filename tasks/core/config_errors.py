"""How a mistake in params.yaml reads: one line naming the key, what is allowed and the value,
e.g. ``train.devices must be a whole number >= 1 or "auto", got 'two'``.

Pydantic's own wording (``input should be a valid integer, unable to parse string as an
integer``, union member tags such as ``train.devices.literal['auto']``) is for programmers; a
user needs the key as written in params.yaml and the values it takes. A key given twice, which
YAML itself accepts (the last one wins, silently), is refused by :func:`read_yaml`.
"""

from __future__ import annotations

from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

_CONSTRAINT_WORDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_MAPPING = "a mapping (key: value)"
_EXPECTED = {  # pydantic's error type -> what the setting takes, in a user's words
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "a whole number"),
    **dict.fromkeys(("float_type", "float_parsing"), "a number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "true or false"),
    **dict.fromkeys(("string_type",), "text"),
    **dict.fromkeys(("list_type", "set_type"), "a list like [a, b]"),
    **dict.fromkeys(("dict_type", "model_type", "model_attributes_type"), _MAPPING),
}


def _dotted(location: list[str | int]) -> str:
    """('data', 'classes', 0) -> data.classes[0]."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _field(model: type[BaseModel], location: list[str | int]) -> FieldInfo | None:
    """The pydantic field a location names (None below a list item or a free mapping)."""
    field = None
    for part in location:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation  # type: ignore[assignment]
    return field


def describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    """Turn one pydantic error into `key must be ..., got value`."""
    location: list[str | int] = list(error["loc"])
    key = _dotted(location)
    value = error.get("input")
    context = error.get("ctx") or {}
    kind = error["type"]
    if "[key]" in location:  # a mapping with fixed keys (tune.space, evaluate.baseline_c)
        parent = _dotted(location[: location.index("[key]") - 1])
        return f"{parent} has an unknown key {value!r} (allowed: {context.get('expected')})"
    depth = max((i + 1 for i, part in enumerate(location) if isinstance(part, str)), default=0)
    field = _field(model, location[:depth])
    annotation = field.annotation if field is not None else None
    if get_origin(annotation) is tuple and kind != "value_error":  # augment.scale: [low, high]
        example = list(field.default) if field is not None else ""  # type: ignore[arg-type]
        size, where = len(get_args(annotation)), location[depth:]
        got = f"{value!r} at position {where[0]}" if where and kind != "missing" else repr(value)
        key = _dotted(location[:depth])
        return f"{key} must be a list of {size} numbers like {example}, got {got}"
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, [str(part) for part in location[:-1]])
        return f"unknown key {key} (allowed here: {', '.join(allowed)})"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        bound_name = next(name for name in _CONSTRAINT_WORDS if name in context)
        bound = context[bound_name]
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{key} must be {_CONSTRAINT_WORDS[bound_name]} {bound}, got {value!r}"
    if kind in {"literal_error", "enum"}:
        return f"{key} must be one of {context.get('expected')}, got {value!r}"
    if kind == "value_error":
        return str(context.get("error", error["msg"]))
    if kind == "missing":
        return f"{key} is required"
    if kind in _EXPECTED:
        nullable = depth == len(location) and get_origin(annotation) in (Union, UnionType)
        expected = _EXPECTED[kind] + (
            " or null" if NoneType in get_args(annotation) and nullable else ""
        )
        quote = kind == "string_type" and type(value) in (int, float)  # a label like 7
        hint = f" (put it in quotes: '{value}')" if quote else ""
        return f"{key} must be {expected}, got {value!r}{hint}"
    return f"{key}: {error['msg'].lower()}, got {value!r}"


def allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    current: Any = model
    for part in path:
        field = current.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        current = field.annotation
    return list(current.model_fields)


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one YAML mapping (plain YAML would keep the last without a word)."""


def _refuse_duplicates(node: yaml.Node, path: str, seen_nodes: set[int]) -> None:
    """Raise DuplicateKey for the first mapping under `node` that holds a key twice."""
    if id(node) in seen_nodes:  # an alias of a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicates(item, f"{path}[{index}]", seen_nodes)
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[tuple[str, str], int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, may repeat
            continue
        line, name = key_node.start_mark.line + 1, f"{path}.{key_node.value}".lstrip(".")
        if (key_node.tag, str(key_node.value)) in lines:
            first = lines[(key_node.tag, str(key_node.value))]
            raise DuplicateKey(f"{name} is set twice (lines {first} and {line}); delete one")
        lines[(key_node.tag, str(key_node.value))] = line
        _refuse_duplicates(value_node, name, seen_nodes)


def read_yaml(text: str) -> Any:
    """`text` parsed as YAML settings (safe types only).

    Raises:
        DuplicateKey: a key is given twice in one mapping, naming it and both lines.
        yaml.YAMLError: the text is not YAML.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicates(node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()
