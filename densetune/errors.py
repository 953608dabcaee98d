"""User-facing errors: one line a person can act on, naming where the problem is and what was expected.

The CLI prints ``str(error)`` for any :class:`DensetuneError` and exits non-zero, never a traceback.
"""

from __future__ import annotations


class DensetuneError(Exception):
    """Base class for errors caused by input (data, config, arguments), not by bugs."""


class DataError(DensetuneError, ValueError):
    """A problem in an input file, located by path, line (or record index) and field.

    ``str(err)`` is ``"path:line: field: message"``; parts that are unknown are left out.

    Args:
        message: what is wrong and what was expected, e.g. ``"expected a non-empty list of documents, got []"``.
        path: the file (or directory) the problem is in.
        line: 1-based line number for line-oriented files, or the record index (``"record 12"``) for JSON arrays.
        field: the field name, dotted for nesting (``"neg_doc[3].id"``).
    """

    def __init__(
        self, message: str, path: str | None = None, line: int | str | None = None, field: str | None = None
    ):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
        parts = [p for p in (where, self.field) if p]
        return ": ".join(parts + [self.message])


class ConfigError(DensetuneError, ValueError):
    """A bad configuration value: names the key and what was expected."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"config: {key}: {message}")
