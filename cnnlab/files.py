"""Files cnnlab reads from users and crashes, and files it writes: the one guarded reader.

Owns: reading YAML from any bytes (decoding, control characters, complex keys, nesting depth,
alias expansion) into Trees that remember each key's `file:line`; reading the JSON and
JSON-lines files of runs and sweeps (a torn last line is a crash's signature and is skipped
with a note; anything else damaged is a one-line error naming the file); atomic writes; and
checking that output paths are writable before any work starts. Every problem is a
`UserError` of one line, so no input reaches the terminal as a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import UserError

MAX_YAML_BYTES = 1_000_000  # an experiment or sweep file is a page of text, not a data set
MAX_YAML_DEPTH = 64  # nesting of mappings and lists; Python's recursion ends near 1,000
MAX_YAML_NODES = 100_000  # values after aliases are expanded: stops "billion laughs" files


class DamagedFile(UserError):
    """A run or sweep file that exists but cannot be read as what cnnlab wrote."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} is damaged ({reason}); delete it or the folder holding it")
        self.path, self.reason = Path(path), reason


class WriteError(UserError):
    """A write that failed mid-work (disk full, read-only, a file in the way)."""

    exit_code = 1


# ---------------------------------------------------------------------------------------------
# Notes: things worth a line that are not errors (a torn last line was skipped)

_notes: list[str] = []


def note(message: str) -> None:
    if message not in _notes:
        _notes.append(message)


def take_notes() -> list[str]:
    taken = list(_notes)
    _notes.clear()
    return taken


# ---------------------------------------------------------------------------------------------
# Text


def os_reason(error: OSError) -> str:
    """'No space left on device': the cause of an OSError without Python's decoration."""
    return error.strerror or (errno.errorcode.get(error.errno or 0) or str(error) or "I/O error")


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{path} is a folder, not a file")
        if limit is not None and path.stat().st_size > limit:
            raise UserError(
                f"{path} is {path.stat().st_size:,} bytes; files of this kind are at most {limit:,}"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {os_reason(error)}") from None


def decode(data: bytes, path: Path) -> str:
    """UTF-8 text (a byte-order mark is dropped); anything else names the line of the bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
            "save the file as UTF-8 text"
        ) from None


def read_text(path: Path, limit: int | None = None) -> str:
    return decode(read_bytes(path, limit), path)


# ---------------------------------------------------------------------------------------------
# YAML with source locations


class Tree(dict):
    """A YAML mapping that remembers where each of its keys was written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.where: dict[Any, str] = {}
        self.whole = False  # a fragment: replaces rather than merges into what it overrides


class TreeList(list):
    def __init__(self, *args):
        super().__init__(*args)
        self.where: list[str] = []


class YAMLGuardError(yaml.MarkedYAMLError):
    """Well-formed YAML that cnnlab refuses: too deep, too big once expanded, an odd key."""


_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$")
# Errors a YAML constructor raises for a well-formed but impossible value (2020-13-45, !!int x).
_VALUE_ERRORS = (ValueError, TypeError, OverflowError, ArithmeticError)


def _refuse(problem: str, node_or_mark) -> YAMLGuardError:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return YAMLGuardError(problem=problem, problem_mark=mark)


def _construct(loader, node) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except _VALUE_ERRORS as error:
        raise _refuse(f"cannot read the value {node.value!r}: {error}", node) from None


def _plain_key(key: Any, node) -> Any:
    if isinstance(key, (list, dict)):
        raise _refuse("a key must be a name or a number, not a list or a mapping", node)
    try:
        hash(key)
    except TypeError:
        raise _refuse("a key must be a name or a number", node) from None
    return key


def _expanded_size(node, memo: dict, open_: set) -> int:
    """How many values `node` stands for once every alias is written out (memoised by node, so
    a shared node costs one visit however often it is referred to)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise _refuse("an alias refers to a value that contains it (a loop)", node)
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            size += _expanded_size(key_node, memo, open_) + _expanded_size(value_node, memo, open_)
    open_.discard(key)
    memo[key] = size
    if size > MAX_YAML_NODES:
        raise _refuse(
            f"expands to more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
            "written out; write the values without aliases",
            node,
        )
    return size


def loader_for(path: Path | str) -> type[yaml.SafeLoader]:
    """A SafeLoader that builds Trees located at `path:line` and refuses what would hang or crash
    the program (nesting, alias expansion, unhashable keys, impossible values) as a YAML error."""

    class Loader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            # The composer recurses once per level: stop long before Python's recursion limit.
            self._depth += 1
            try:
                if self._depth > MAX_YAML_DEPTH:
                    raise _refuse(
                        f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event()
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            _expanded_size(node, {}, set())
            try:
                return self.construct_document(node)
            except yaml.YAMLError:
                raise
            except _VALUE_ERRORS as error:
                raise _refuse(f"cannot read a value: {error}", node) from None

    def mapping(loader, node):
        loader.flatten_mapping(node)
        tree = Tree()
        for key_node, value_node in node.value:
            key = _plain_key(_construct(loader, key_node), key_node)
            where = f"{path}:{key_node.start_mark.line + 1}"
            if key in tree:
                raise UserError(f"{where}: duplicate key '{key}'")
            tree[key] = _construct(loader, value_node)
            tree.where[key] = where
        return tree

    def sequence(loader, node):
        items = TreeList(_construct(loader, child) for child in node.value)
        items.where = [f"{path}:{child.start_mark.line + 1}" for child in node.value]
        return items

    # YAML 1.1 reads 3e-4 (no dot) as a string; people mean a number.
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, sequence)
    return Loader


def load_yaml(text: str, path: Path | str) -> Any:
    """Parse YAML text into Trees; any problem is a one-line UserError at `path:line`."""
    loader = None
    try:
        loader = loader_for(path)(text)  # the reader checks every character here
        return loader.get_single_data()
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        raise UserError(
            f"{path}:{line}: the control character {error.character:#04x} is not allowed in "
            "YAML text; remove it"
        ) from None
    except YAMLGuardError as error:
        raise UserError(f"{path}:{error.problem_mark.line + 1}: {error.problem}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: malformed YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: malformed YAML: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path) -> Any:
    """Parse one YAML file into Trees: every problem with its bytes is one line with the line."""
    return load_yaml(read_text(path, MAX_YAML_BYTES), path)


# ---------------------------------------------------------------------------------------------
# JSON and JSON lines of runs and sweeps


def read_json(path: Path) -> dict:
    """A JSON object; {} when the file does not exist (not written yet)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise UserError(f"cannot read {path}: {os_reason(error)}") from None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:
        reason = "empty" if not data.strip() else f"not JSON: {str(error).splitlines()[0]}"
        raise DamagedFile(path, reason) from None
    if not isinstance(value, dict):
        raise DamagedFile(path, f"a JSON {type(value).__name__}, not an object")
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; none if it does not exist yet. A last line without its
    newline is one a crash cut short: it is skipped with a note. Any other bad line is an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise UserError(f"cannot read {path}: {os_reason(error)}") from None
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""  # text after the last newline: complete only if empty
    rows = [_row(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if torn.strip():
        try:
            rows.append(_row(path, len(lines) + 1, torn))
        except DamagedFile:
            note(f"{path}: the last line was cut short (a crash while writing it?); skipped")
    return rows


def _row(path: Path, number: int, line: bytes) -> dict:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as error:
        raise DamagedFile(f"{path}:{number}", f"not JSON: {str(error).splitlines()[0]}") from None
    if not isinstance(row, dict):
        raise DamagedFile(f"{path}:{number}", f"a JSON {type(row).__name__}, not an object")
    return row


# ---------------------------------------------------------------------------------------------
# Writing


def write_error(path: Path, error: OSError) -> WriteError:
    return WriteError(f"cannot write {path}: {os_reason(error)}")


def write_text(path: Path, text: str) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one; on
    failure the temporary file is removed and the error names `path` and the cause."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, error) from None


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_folder_writable(folder: Path, what: str = "folder") -> None:
    """`folder` exists or can be made, and a file can be created in it; checked by trying, since
    permission bits do not tell a read-only disk (nor anything, for root)."""
    folder = Path(folder)
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise UserError(f"{what} {folder}: {base} is a file, not a folder")
    probe_in = folder if folder.is_dir() else base
    try:
        handle, name = tempfile.mkstemp(prefix=".cnnlab-write-check-", dir=probe_in)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise UserError(f"{what} {folder} is not writable: {os_reason(error)}") from None


def check_output_file(path: Path, suffixes: tuple[str, ...] = (".png",)) -> None:
    """An output file's name and folder are fine before the work that produces it starts."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{path}: the output must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name such as {path / 'out.png'}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist")
    check_folder_writable(path.parent, "output folder")


# ---------------------------------------------------------------------------------------------
# Images

MAX_IMAGE_PIXELS = 50_000_000  # a 50-megapixel photo; a header claiming 40000x40000 is a bomb


def read_image(source: Any, name: str | Path):
    """A decoded Pillow image from a path or a file object; `name` is what errors call it. The
    size in the header is checked before any pixel is decoded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = _open_unchecked(Image, source)
            _check_pixels(image.size, name)
            image.load()
            return image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(
                f"cannot read image {name}: too large; at most {MAX_IMAGE_PIXELS:,} pixels"
            ) from None
        except UnidentifiedImageError:
            raise UserError(
                f"cannot read image {name}: not a PNG or JPEG file, or damaged"
            ) from None
        except FileNotFoundError:
            raise UserError(f"image not found: {name}") from None
        except IsADirectoryError:
            raise UserError(f"{name} is a folder, not an image file") from None
        except (
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
        ) as error:  # Pillow's damaged-file errors
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0] or "damaged"
            raise UserError(f"cannot read image {name}: {reason}") from None


def _open_unchecked(Image, source):
    """Image.open without Pillow's own size check, so that ours can name the size (Pillow's
    says only "could be decompression bomb DOS attack"); opening reads the header only."""
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(source)
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _check_pixels(size: tuple[int, int], name: str | Path) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(
            f"cannot read image {name}: it is {width}x{height} pixels, more than "
            f"{MAX_IMAGE_PIXELS:,}; resize it first"
        )
