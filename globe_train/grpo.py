"""GRPO training of GLOBE: ``globe train grpo --recipe globe-qwen2.5-vl-7b`` (or ``tiny-cpu``).

Multi-GPU, as the paper ran it (DeepSpeed ZeRO-3, generation on a vLLM server):

    trl vllm-serve --model Qwen/Qwen2.5-VL-7B-Instruct        # on the generation GPUs
    accelerate launch --config_file globe_train/recipes/accelerate/zero3.yaml \\
        -m globe_train.grpo --recipe globe-qwen2.5-vl-7b
"""

from __future__ import annotations

from pathlib import Path

from trl import GRPOConfig, GRPOTrainer, ModelConfig

from .configs import GRPOScriptArguments, check_reward_weights
from .data import training_dataset
from .modeling import freeze_vision, load_model, peft_config, save_final
from .rewards import get_reward_funcs
from .runs import JsonlLogs, parse, setup, write_run_info

ARGS = (GRPOScriptArguments, GRPOConfig, ModelConfig)  # what a recipe fills, in parse order


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> Path:
    # -- seed, logging, resume ------------------------------------------------------------------------------
    check_reward_weights(script_args.reward_funcs, training_args.reward_weights)
    resume = setup(training_args)

    # -- data: the GLOBE prompt, the image, and the columns the rewards read ---------------------------------
    train = training_dataset(script_args, "grpo", seed=training_args.seed)

    # -- policy and processor (left padding for generation) --------------------------------------------------
    model, processor = load_model(model_args, training_args, padding_side="left")
    if script_args.freeze_vision:
        freeze_vision(model)

    # -- rewards, by name, with the recipe's settings; weights come from training_args.reward_weights ---------
    rewards = get_reward_funcs(script_args, training_args.num_generations)

    # -- train ------------------------------------------------------------------------------------------------
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=train,
        processing_class=processor,
        peft_config=peft_config(model_args, model, script_args.freeze_vision),
        callbacks=[JsonlLogs(training_args.output_dir)],
    )
    result = trainer.train(resume_from_checkpoint=resume)

    # -- save weights, processor and the run record (the model card is rendered from it) ----------------------
    out = save_final(trainer, processor, training_args.output_dir, script_args.merge_adapter)
    write_run_info("grpo", out, script_args, training_args, model_args, result.metrics, model.num_parameters(),
                   script_args.reward_funcs)  # fmt: skip
    return out


if __name__ == "__main__":
    main(*parse(ARGS))
