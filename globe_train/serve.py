"""``transformers serve`` for Qwen2.5-VL checkpoints where torchvision is missing.

The stock command fails to load a Qwen2.5-VL processor without torchvision; this launcher applies the
processor workaround first and then hands over to transformers' own command line, unchanged:

    python -m globe_train.serve MODEL_DIR --port 8000 --device cpu
"""

from __future__ import annotations

import sys

from .compat import patch_processors_without_torchvision


def main(argv: list[str] | None = None) -> None:
    patch_processors_without_torchvision()
    from transformers.cli.transformers import main as transformers_main

    sys.argv = ["transformers", "serve", *(sys.argv[1:] if argv is None else argv)]
    transformers_main()


if __name__ == "__main__":
    main()
