"""Reading a topology file: its text, its YAML, and the keys it gives twice."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import TopologyError

TOO_DEEP = "$: values are nested too deeply (hundreds of levels); a topology is a few levels deep"
"""The problem reported for a document nested beyond what parsing or converting can follow."""


def read_text(path: Path) -> str:
    """Return the text of a topology file (UTF-8).

    Raises:
        TopologyError: The file cannot be read or is not UTF-8.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TopologyError([f"cannot read the file: {exc.strerror}"], str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TopologyError(
            [
                f"line {line}, column {column} (byte {exc.start}): byte "
                f"0x{raw[exc.start]:02x} is not UTF-8 text; save the file as UTF-8"
            ],
            str(path),
        ) from None


def load_yaml(text: str, source: str = "topology") -> object:
    """Parse the YAML of a topology file into plain data (None for an empty document).

    Args:
        text: The file's text.
        source: What to call the file in messages.

    Raises:
        TopologyError: The YAML is malformed or gives a key twice in one mapping.
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters already
        node = loader.get_single_node()
        duplicates = [] if node is None else duplicate_keys(node)
        if duplicates:
            raise TopologyError(duplicates, source)
        return None if node is None else loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise TopologyError(
            [
                f"line {line} (character {exc.position}): the control character "
                f"U+{_code_point(exc.character):04X} cannot appear in a topology file"
            ],
            source,
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TopologyError([f"{where}malformed YAML: {problem}"], source) from None
    except RecursionError:
        raise TopologyError([TOO_DEEP], source) from None
    finally:
        if loader is not None:
            loader.dispose()


def duplicate_keys(root: yaml.Node) -> list[str]:
    """Return one problem per key given twice in one mapping of a YAML document.

    YAML leaves duplicates to the reader and PyYAML keeps the last, so a setting given twice
    would silently lose its first value; a topology file refuses them instead.
    """
    problems: list[str] = []
    seen: set[int] = set()  # aliases may share nodes, or even form cycles
    todo: list[tuple[yaml.Node, str]] = [(root, "$")]
    while todo:
        node, path = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag.endswith(":merge"):
                    todo.append((value, path))
                    continue
                line = key.start_mark.line + 1
                first = lines.get((key.tag, key.value))
                if first is None:
                    lines[key.tag, key.value] = line
                else:
                    where = f"line {line}" if first == line else f"lines {first} and {line}"
                    problems.append(
                        f"{path}.{key.value}: given twice ({where}); keep one, or the last "
                        "would silently replace the first"
                    )
                todo.append((value, f"{path}.{key.value}"))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return sorted(problems)


def _code_point(character: object) -> int:
    return character if isinstance(character, int) else ord(str(character)[:1] or "\0")
