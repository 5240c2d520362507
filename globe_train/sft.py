"""Supervised fine-tuning on the curated reasoning traces (the CoT-SFT baseline of the paper's Table 3):
``globe train sft --recipe sft-qwen2.5-vl-7b``.

The reward model (``rm.py``) is trained by the same code on other rows, so both live here.
"""

from __future__ import annotations

from pathlib import Path

from trl import ModelConfig, SFTConfig, SFTTrainer

from .configs import DataArguments, SFTScriptArguments
from .data import training_dataset
from .modeling import freeze_vision, load_model, peft_config, save_final
from .runs import CompleteCheckpoints, JsonlLogs, end_distributed, parse, setup, write_run_info

ARGS = (SFTScriptArguments, SFTConfig, ModelConfig)


def train_supervised(kind: str, script_args: DataArguments, training_args: SFTConfig, model_args: ModelConfig) -> Path:
    # -- seed, logging, resume ------------------------------------------------------------------------------
    resume = setup(training_args)

    # -- data: prompt + completion rows with their image; the loss covers the completion only ----------------
    train = training_dataset(script_args, kind, seed=training_args.seed)

    # -- model and processor (right padding for teacher-forced training) -------------------------------------
    model, processor = load_model(model_args, training_args, padding_side="right")
    if script_args.freeze_vision:
        freeze_vision(model)

    # -- train ------------------------------------------------------------------------------------------------
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        processing_class=processor,
        peft_config=peft_config(model_args, model, script_args.freeze_vision),
        callbacks=[JsonlLogs(training_args.output_dir), CompleteCheckpoints(model_args.model_name_or_path)],
    )
    result = trainer.train(resume_from_checkpoint=resume)

    # -- save -------------------------------------------------------------------------------------------------
    out = save_final(
        trainer, processor, training_args.output_dir, script_args.merge_adapter, model_args.model_name_or_path
    )
    write_run_info(kind, out, script_args, training_args, model_args, result.metrics, model.num_parameters())
    return out


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> Path:
    return train_supervised("sft", script_args, training_args, model_args)


if __name__ == "__main__":
    main(*parse(ARGS))
    end_distributed()
