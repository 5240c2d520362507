"""``transformers serve`` for Qwen2.5-VL checkpoints where torchvision is missing.

The stock command fails to load a Qwen2.5-VL processor without torchvision; this launcher applies the
processor workaround and then hands over to transformers' own command line, unchanged:

    python -m globe_train.serve MODEL_DIR --port 8000 --device cpu

The workaround is applied when this module is imported, not in ``main()``: transformers (5.25 on) loads the
model in a *spawned* child, which re-imports the launching module (as ``__mp_main__``) and nothing else of
ours, so an import-time patch is the one that reaches it.
"""

from __future__ import annotations

import sys

from .compat import patch_processors_without_torchvision

patch_processors_without_torchvision()


def main(argv: list[str] | None = None) -> None:
    from transformers.cli.transformers import main as transformers_main

    sys.argv = ["transformers", "serve", *(sys.argv[1:] if argv is None else argv)]
    transformers_main()


if __name__ == "__main__":
    main()
