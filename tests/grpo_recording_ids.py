"""``globe_train.grpo`` with one more reward, ``record_ids``, that appends the sample ids it is given to
``$IDS_OUT/ids-<rank>.jsonl`` (one line per call) and scores 0: what the rewards saw, per process."""

from __future__ import annotations

import json
import os

from globe_train import rewards
from globe_train.grpo import ARGS, main
from globe_train.runs import end_distributed, parse


def record_ids(completions: list, id: list[str], **kwargs) -> list[float]:
    with open(os.path.join(os.environ["IDS_OUT"], f"ids-{os.environ.get('RANK', '0')}.jsonl"), "a") as fh:
        fh.write(json.dumps(list(id)) + "\n")
    return [0.0] * len(completions)


if __name__ == "__main__":
    rewards.register("record_ids", record_ids)
    main(*parse(ARGS))
    end_distributed()  # as globe train does
