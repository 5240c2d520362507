"""The scene segmenter: a small SegFormer trained on the offline sample's drawn scenes.

The grounding filter needs a semantic segmentation model. Real builds use an ADE20K model from the Hub; the
offline sample cannot download one, and an ADE20K model would not know drawings anyway. So the sample uses
this model, trained here on scenes drawn by :func:`builders.sample.scenes.draw_scene_with_mask` (whose masks are
exact) with the sample's ADE20K-named classes. It ships in ``builders/data/scene-segmenter`` with its
held-out scores in the folder's README; rebuild it with::

    python -m builders.sample.segmenter [--steps 2000] [--out builders/data/scene-segmenter]

Training scenes use random coordinates and names and never the sample's own seeds, so the sample's images
are unseen by the model.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from builders.sample.scenes import CLASSES, draw_scene_with_mask

SIZE = (160, 120)  # width, height the model sees
DEFAULT_OUT = Path(__file__).parents[1] / "data" / "scene-segmenter"


def _scene(rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    lat, lon = rng.uniform(-70, 70), rng.uniform(-180, 180)
    name = "".join(rng.choice("ABCDEFGHIJKLMNOPRSTUVWYZ") for _ in range(rng.randint(4, 14)))
    code = "".join(rng.choice("ABCDEFGHIJKLMNOPRSTUVWYZ") for _ in range(2))
    img, mask = draw_scene_with_mask(lat, lon, name, code, f"train/{rng.random()}")
    return np.asarray(img.resize(SIZE, Image.Resampling.BOX)), np.asarray(mask.resize(SIZE, Image.Resampling.NEAREST))


def train(out: Path = DEFAULT_OUT, steps: int = 400, n_train: int = 320, n_eval: int = 64, seed: int = 0) -> dict:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    torch.manual_seed(seed)
    rng = random.Random(seed)
    data = [_scene(rng) for _ in range(n_train + n_eval)]
    processor = SegformerImageProcessorPil(size={"height": SIZE[1], "width": SIZE[0]})
    config = SegformerConfig(
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 64, 96],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=64,
        semantic_loss_ignore_index=255,
    )
    model = SegformerForSemanticSegmentation(config)

    def batch(items):
        pixels = processor(images=[x for x, _ in items], return_tensors="pt")["pixel_values"]
        return pixels, torch.as_tensor(np.stack([m for _, m in items]), dtype=torch.long)

    train_set, eval_set = data[:n_train], data[n_train:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        pixels, labels = batch(rng.sample(train_set, 16))
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f}")
    model.eval()
    pixels, labels = batch(eval_set)
    with torch.inference_mode():
        logits = model(pixel_values=pixels).logits
        pred = torch.nn.functional.interpolate(logits, size=labels.shape[1:], mode="bilinear").argmax(1)
    accuracy = float((pred == labels).float().mean())
    iou = {}
    for i, name in enumerate(CLASSES):
        inter = int(((pred == i) & (labels == i)).sum())
        union = int(((pred == i) | (labels == i)).sum())
        if union:
            iou[name] = inter / union
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    rows = "\n".join(f"| {name} | {v:.3f} |" for name, v in iou.items())
    (out / "README.md").write_text(
        "# Scene segmenter for the offline sample\n\n"
        "A SegFormer with random initial weights, trained by `python -m builders.sample.segmenter` on "
        f"{n_train} drawn scenes (never the sample's own) for {steps} steps, {n_params:,} parameters. "
        "It only knows the drawings of `builders/sample/scenes.py`; it is not a model of real photos.\n\n"
        f"Held-out ({n_eval} scenes): pixel accuracy {accuracy:.3f}, mean IoU {np.mean(list(iou.values())):.3f}.\n\n"
        f"| class | IoU |\n|---|---:|\n{rows}\n"
    )
    return {"accuracy": accuracy, "iou": iou, "seconds": time.perf_counter() - start, "params": n_params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    result = train(args.out, args.steps)
    print(f"pixel accuracy {result['accuracy']:.3f} in {result['seconds']:.0f} s ({result['params']:,} parameters)")
    print({k: round(v, 3) for k, v in result["iou"].items()})


if __name__ == "__main__":
    main()
