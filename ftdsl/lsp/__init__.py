"""The ftdsl language server (`ftdsl lsp`): diagnostics as you type, hover, completion,
definition, rename, quick fixes, formatting and semantic tokens, over stdio.

Needs the `lsp` extra (`pip install "ftdsl[lsp]"`, which brings pygls); the editor features
themselves (`scan`, `completion`, `hover`, `navigation`, `actions`, `tokens`, `positions`) are
plain Python over the schema and are usable without it. Never imports torch.
"""

from __future__ import annotations

import sys

EXIT_USAGE = 2


def cmd_lsp(args) -> int:
    try:
        import lsprotocol  # noqa: F401
        import pygls.lsp.server  # noqa: F401 - pygls 2 (1.x has no `pygls.lsp.server`)
    except ImportError:
        print('error: `ftdsl lsp` needs the language-server extra: pip install "ftdsl[lsp]" (it adds pygls >= 2)',
              file=sys.stderr)
        return EXIT_USAGE
    from ftdsl.lsp.server import serve

    serve()
    return 0
