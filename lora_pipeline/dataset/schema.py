"""The subset of JSON Schema (draft 2020-12) that the dataset files use.

jsonschema is not a dependency; these few keywords cover every schema of this package, and each
failure names the place (`manifest.images[3].sha256`) in a one-line message.
Keywords: type (a name or a list), const, enum, minimum, maximum, minLength, maxLength,
pattern, required, properties, additionalProperties (false or a schema), items, minItems.
"""

from __future__ import annotations

import re
from typing import Any

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def check_schema(value: Any, schema: dict[str, Any], where: str, error: type[Exception]) -> None:
    """Raise `error` with a readable message unless `value` follows `schema`."""
    _check_type(value, schema, where, error)
    if "const" in schema and value != schema["const"]:
        raise error(f"{where} must be {schema['const']!r}, got {value!r:.80}")
    if "enum" in schema and value not in schema["enum"]:
        raise error(f"{where} must be one of {schema['enum']}, got {value!r:.80}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_range(value, schema, where, error)
    if isinstance(value, str):
        _check_string(value, schema, where, error)
    if isinstance(value, dict):
        _check_object(value, schema, where, error)
    if isinstance(value, list):
        _check_array(value, schema, where, error)


def _check_type(value: Any, schema: dict[str, Any], where: str, error: type[Exception]) -> None:
    expected = schema.get("type")
    if expected is None:
        return
    names = [expected] if isinstance(expected, str) else list(expected)
    for name in names:
        # JSON has no booleans among its numbers, whatever Python thinks of True.
        if isinstance(value, bool) and name != "boolean":
            continue
        if isinstance(value, _JSON_TYPES[name]):
            return
    wanted = " or ".join(names)
    raise error(f"{where} must be a JSON {wanted}, got {value!r:.80}")


def _check_range(value: float, schema: dict[str, Any], where: str, error: type[Exception]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        raise error(f"{where} must be at least {schema['minimum']}, got {value}")
    if "maximum" in schema and value > schema["maximum"]:
        raise error(f"{where} must be at most {schema['maximum']}, got {value}")


def _check_string(value: str, schema: dict[str, Any], where: str, error: type[Exception]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise error(f"{where} must not be empty")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise error(f"{where} is longer than {schema['maxLength']} characters")
    if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
        raise error(f"{where} has an invalid value {value!r:.80}")


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], where: str, error: type[Exception]
) -> None:
    missing = [key for key in schema.get("required", []) if key not in value]
    if missing:
        raise error(f"{where} lacks required field(s) {missing}")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    if extra is False:
        unknown = sorted(str(key) for key in value if key not in properties)
        if unknown:
            raise error(f"{where} has unknown field(s) {unknown}")
    for key, item in value.items():
        if key in properties:
            check_schema(item, properties[key], f"{where}.{key}", error)
        elif isinstance(extra, dict):
            check_schema(item, extra, f"{where}.{key}", error)


def _check_array(
    value: list[Any], schema: dict[str, Any], where: str, error: type[Exception]
) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise error(f"{where} must have at least {schema['minItems']} item(s)")
    if "items" in schema:
        for index, item in enumerate(value):
            check_schema(item, schema["items"], f"{where}[{index}]", error)
