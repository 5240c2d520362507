"""The localizability reward model: ``globe train rm --recipe rm-qwen2.5-vl-7b``.

Supervised yes/no training on the ``localizability`` config: the photo, one teacher's reasoning and answer, and
that teacher's verdict. The prompt is the one the R_loc judge asks (``localizability.SYSTEM``), so a model
trained here can be used as ``rm_model`` (in-process) or served by vLLM as ``rm_endpoint``. The released setup
is LoRA r16 / alpha 64 on all linear layers with the vision encoder frozen, lr 1e-4, two epochs.
"""

from __future__ import annotations

from pathlib import Path

from trl import ModelConfig, SFTConfig

from .configs import RMScriptArguments
from .runs import end_distributed, parse
from .sft import train_supervised

ARGS = (RMScriptArguments, SFTConfig, ModelConfig)


def main(script_args: RMScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> Path:
    return train_supervised("rm", script_args, training_args, model_args)


if __name__ == "__main__":
    main(*parse(ARGS))
    end_distributed()
