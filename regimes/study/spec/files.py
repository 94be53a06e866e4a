"""Files and folders a command reads or creates, checked before anything runs.

- `read_yaml`: a YAML file as UTF-8 text, with every key of a mapping given once
  (PyYAML keeps the last of a repeated key silently; here it is an error naming it).
- `name_problem`: what is wrong with a study name or trial id used as a folder name.
- `check_writable`: a folder that exists and takes new files, or can be created.

Each raises (or returns the message of) a `ConfigError` naming the path or key.
Torch-free: `regimes train` and `regimes validate` call these before importing torch.
"""
from __future__ import annotations

import codecs
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from regimes.errors import ConfigError

MAX_NAME = 100          # characters of a study name or trial id (each names a folder)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


# --- names -----------------------------------------------------------------------
def name_problem(name: Any, what: str = "study name") -> str | None:
    """None if `name` is a folder-safe name, else what is wrong with it and what is allowed."""
    rule = f"letters, digits, . _ -, not starting with . _ -, at most {MAX_NAME} characters"
    if not isinstance(name, str) or not name:
        return f"required: a folder-safe {what} ({rule}), got {name!r}"
    if len(name) > MAX_NAME:
        return f"{len(name)} characters long; allowed: a folder-safe {what} ({rule})"
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a folder-safe {what}; allowed: {rule}"
    return None


# --- YAML ----------------------------------------------------------------------------
class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (`<<` merges may still be
    overridden, as YAML intends). The error's key is the YAML path of the repeated key."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, "", set())
        return self.construct_document(node)


def _check_unique_keys(node, path: str, seen: set) -> None:
    if id(node) in seen:          # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, Any] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            name = key.value if isinstance(key, yaml.ScalarNode) else f"<{key.id}>"
            where = f"{path}.{name}" if path else str(name)
            if name in first:
                raise ConfigError(where, f"given twice (lines {first[name].start_mark.line + 1} and "
                                  f"{key.start_mark.line + 1}); a key may appear once in a mapping")
            first[name] = key
            _check_unique_keys(value, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{path}[{i}]", seen)


def read_yaml(path: str | Path, what: str = "a YAML file") -> Any:
    """The data of YAML file `path`; ConfigError(path) if it cannot be read, is not UTF-8
    text or not YAML, and ConfigError(<key path>) for a repeated key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except IsADirectoryError:
        raise ConfigError(str(path), f"is a directory; expected {what}") from None
    except OSError as e:
        raise ConfigError(str(path), f"cannot be read ({e.strerror or e}); expected {what}") from None
    if data.startswith(_WIDE_BOMS):
        raise ConfigError(str(path), "is UTF-16/UTF-32 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                          "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), f"not valid YAML ({' '.join(str(e).split())})") from None


# --- folders ---------------------------------------------------------------------------
def check_writable(path: str | Path, key: str) -> None:
    """`path` is a folder that takes new files, or one that can be created: its nearest
    existing ancestor is a folder in which a (removed at once) probe folder can be made.
    Raises ConfigError(key). A probe, not os.access: root, ACLs and read-only mounts."""
    target = Path(os.path.abspath(path))
    existing = next((p for p in (target, *target.parents) if os.path.lexists(p)), None)
    if existing is None:          # not even the root: nothing to probe
        raise ConfigError(key, f"{path} cannot be created")
    if not existing.is_dir():
        what = "is" if existing == target else f"cannot be created: {existing} is"
        raise ConfigError(key, f"{path} {what} a file; expected a folder (created if missing)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".regimes-probe-", dir=existing))
    except OSError as e:
        where = "is not writable" if existing == target else f"cannot be created in {existing}"
        raise ConfigError(key, f"{path} {where} ({e.strerror or e}); expected a folder this user "
                          "can write") from None
