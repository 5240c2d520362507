"""GRPO training of GLOBE: ``globe train grpo --recipe globe-qwen2.5-vl-7b`` (or ``tiny-cpu``).

Multi-GPU, as the paper ran it (DeepSpeed ZeRO-3, generation on a vLLM server):

    trl vllm-serve --model Qwen/Qwen2.5-VL-7B-Instruct        # on the generation GPUs
    accelerate launch --config_file globe_train/recipes/accelerate/zero3.yaml \\
        -m globe_train.grpo --recipe globe-qwen2.5-vl-7b
"""

from __future__ import annotations

import math
from pathlib import Path

from trl import GRPOConfig, GRPOTrainer, ModelConfig

from .configs import GRPOScriptArguments, RecipeError, check_reward_weights
from .data import stream_length, training_dataset
from .modeling import freeze_vision, load_model, peft_config, save_final
from .rewards import get_reward_funcs
from .runs import CompleteCheckpoints, JsonlLogs, end_distributed, parse, setup, write_run_info

ARGS = (GRPOScriptArguments, GRPOConfig, ModelConfig)  # what a recipe fills, in parse order


def epoch_steps(prompts: int, args: GRPOConfig) -> int:
    """Optimizer steps for ``num_train_epochs`` over ``prompts`` prompts, batched as TRL's GRPO batches them: a
    generation batch holds ``generation_batch_size / num_generations`` prompts (over all processes), an
    epoch's trailing partial one is dropped, and each is used for ``steps_per_generation × num_iterations``
    micro-steps."""
    per_generation = args.generation_batch_size // args.num_generations
    if prompts < per_generation:
        raise RecipeError(
            f"{prompts} prompts do not fill one generation batch of {per_generation} "
            f"(generation_batch_size {args.generation_batch_size} / num_generations {args.num_generations})"
        )
    micro_steps = prompts // per_generation * args.steps_per_generation * args.num_iterations
    return math.ceil(args.num_train_epochs * micro_steps / args.gradient_accumulation_steps)


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> Path:
    # -- seed, logging, resume ------------------------------------------------------------------------------
    check_reward_weights(script_args.reward_funcs, training_args.reward_weights)
    resume = setup(training_args)

    # -- data: the GLOBE prompt, the image, and the columns the rewards read ---------------------------------
    train = training_dataset(script_args, "grpo", seed=training_args.seed)
    if (script_args.dataset_loader == "webdataset" or script_args.dataset_streaming) and training_args.max_steps <= 0:
        training_args.max_steps = epoch_steps(stream_length(script_args), training_args)

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
        callbacks=[JsonlLogs(training_args.output_dir), CompleteCheckpoints(model_args.model_name_or_path)],
    )
    result = trainer.train(resume_from_checkpoint=resume)

    # -- save weights, processor and the run record (the model card is rendered from it) ----------------------
    out = save_final(
        trainer, processor, training_args.output_dir, script_args.merge_adapter, model_args.model_name_or_path
    )
    write_run_info(
        "grpo",
        out,
        script_args,
        training_args,
        model_args,
        result.metrics,
        model.num_parameters(),
        script_args.reward_funcs,
    )
    return out


if __name__ == "__main__":
    main(*parse(ARGS))
    end_distributed()
