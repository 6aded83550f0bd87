"""The surface syntax: lexer, parser (Lark LALR, tables in ``tables.py``), AST, formatter.

Lark imports the optional ``regex`` module when it is installed (transformers installs it) only
to measure terminals written with Unicode categories (``\\p{L}``), which ftdsl's grammar does not
use; the import costs 70-100 ms of every `lint`/`plan`. Lark is therefore imported here with
``regex`` hidden, once; ``regex`` stays importable for everyone else afterwards.
"""

import sys as _sys


def _import_lark_without_regex() -> None:
    if "lark" in _sys.modules or "regex" in _sys.modules:
        return
    _sys.modules["regex"] = None  # type: ignore[assignment]  # `import regex` raises ImportError
    try:
        import lark  # noqa: F401
    except ImportError:  # pragma: no cover - the parser reports a missing Lark itself
        pass
    finally:
        if _sys.modules.get("regex", 0) is None:
            del _sys.modules["regex"]


_import_lark_without_regex()
