"""GRPO step time: `globe train grpo` (all five rewards, R_loc from an in-process reward model) against plain TRL
(the same model, data and settings, TRL's own think-format reward only), side by side in one run.

    python benchmarks/bench_grpo_step.py                       # tiny random Qwen2.5-VL on a CPU
    python benchmarks/bench_grpo_step.py --model Qwen/Qwen2.5-VL-3B-Instruct --bf16 --max-completion-length 256

The data is the offline sample build (made here when --build is not given). The step time is the median of
TRL's own per-step ``step_time`` after the first step (warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def _build(tmp: Path) -> Path:
    from click.testing import CliRunner

    from builders.cli import main

    out = tmp / "sample-build"
    result = CliRunner().invoke(main, ["build", "--sample", "--sample-size", "64", "--out", str(out), "--quiet"])
    if result.exit_code:
        raise SystemExit(result.output)
    return out


def _argv(args, build: Path, out: Path) -> list[str]:
    argv = [
        "--recipe",
        "tiny-cpu",
        "--dataset_name",
        str(build),
        "--output_dir",
        str(out),
        "--max_steps",
        str(args.steps),
        "--max_completion_length",
        str(args.max_completion_length),
        "--num_generations",
        str(args.num_generations),
        "--per_device_train_batch_size",
        str(args.batch),
        "--max_samples",
        str(args.steps * args.batch),
        "--log_completions",
        "false",
        "--logging_steps",
        "1",
    ]
    if args.model:
        argv += ["--model_name_or_path", args.model, "--rm_model", args.model]
    if args.bf16:
        argv += ["--bf16", "true", "--use_cpu", "false"]
    return argv


def _step_times(logs: list[dict]) -> list[float]:
    return [e["step_time"] for e in logs if "step_time" in e][1:]


def ours(args, build: Path, tmp: Path) -> list[float]:
    from globe_train import grpo
    from globe_train.runs import parse

    out = grpo.main(*parse(grpo.ARGS, _argv(args, build, tmp / "ours")))
    return _step_times([json.loads(x) for x in (out / "logs.jsonl").read_text().splitlines()])


def anchor(args, build: Path, tmp: Path) -> list[float]:
    """TRL alone: the same parsed settings and rows, TRL's think-format reward, no wrappers of ours."""
    from trl import GRPOTrainer
    from trl.rewards import think_format_reward

    from globe_train import grpo
    from globe_train.data import training_dataset
    from globe_train.modeling import load_model
    from globe_train.runs import parse

    script, cfg, model_args = parse(grpo.ARGS, _argv(args, build, tmp / "trl"))
    cfg.reward_weights = None
    model, processor = load_model(model_args, cfg)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[think_format_reward],
        args=cfg,
        train_dataset=training_dataset(script, "grpo"),
        processing_class=processor,
    )
    trainer.train()
    return _step_times(trainer.state.log_history)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, help="A local build folder (default: make the offline sample).")
    ap.add_argument("--model", help="Policy and reward model (default: the recipe's bundled tiny model).")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="Completions per device and step.")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--bf16", action="store_true", help="bf16 on a GPU.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build = args.build or _build(tmp)
        t_anchor = statistics.median(anchor(args, build, tmp))
        t_ours = statistics.median(ours(args, build, tmp))
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.bf16 else "CPU"
    print(
        f"GRPO step ({args.model or 'bundled tiny model'}, {device}, {args.batch} completions/step, "
        f"{args.num_generations} generations, {args.max_completion_length} new tokens)"
    )
    print(f"  TRL alone, format reward            {t_anchor * 1e3:8.1f} ms/step   anchor")
    print(f"  globe train grpo, five rewards + RM {t_ours * 1e3:8.1f} ms/step   {t_ours / t_anchor:5.2f}x the time")


if __name__ == "__main__":
    main()
