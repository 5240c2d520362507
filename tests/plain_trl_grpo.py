"""Plain TRL, as its documentation shows it: ``GRPOTrainer`` over ``mp16_reason.stream(rows="trl")`` with the
GLOBE reward functions, plus ``record_ids``, which appends the sample ids it is given to
``$IDS_OUT/ids-<rank>.jsonl`` (one line per call): what the rewards saw, per process.

    accelerate launch --num_processes 2 tests/plain_trl_grpo.py BUILD MODEL OUT STEPS
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch.distributed
from trl import GRPOConfig, GRPOTrainer

import mp16_reason
from globe_train.rewards import format_reward, geo_accuracy


def record_ids(completions: list, id: list[str], **kwargs) -> list[float]:
    with open(os.path.join(os.environ["IDS_OUT"], f"ids-{os.environ.get('RANK', '0')}.jsonl"), "a") as fh:
        fh.write(json.dumps(list(id)) + "\n")
    return [0.0] * len(completions)


if __name__ == "__main__":
    build, model, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if os.environ.get("WITHOUT_TORCHVISION"):  # this CPU machine: Qwen2.5-VL's processor loads only so
        from globe_train.compat import patch_processors_without_torchvision

        patch_processors_without_torchvision()
    args = GRPOConfig(
        output_dir=out,
        use_cpu=True,
        bf16=False,
        use_vllm=False,
        report_to="none",
        max_steps=steps,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[geo_accuracy, format_reward, record_ids],
        args=args,
        train_dataset=mp16_reason.stream(split="train", path=build, rows="trl", shuffle=0),
    )
    trainer.train()
    # As torch.distributed's documentation asks: without it gloo's threads may abort the finished process at exit.
    # The trainer's DDP wrapper holds the group through reference cycles: freed, the group ends its threads.
    del trainer
    torch.distributed.destroy_process_group()
    gc.collect()
