"""The GLOBE demo as a Hugging Face Space: `globe push --space ORG/NAME` uploads this folder with the packages
it needs. Locally: `globe demo`.

The Space's variables choose what it runs; callers pick among those only:
  GLOBE_MODELS          comma-separated released checkpoints or Hub ids (default: the released checkpoints)
  GLOBE_ENDPOINT        an OpenAI-compatible server to offer as well (its URL is never shown)
  GLOBE_ENDPOINT_MODEL  the model name to ask it for
  GLOBE_PROTOCOL        ours or globe-release (default)
"""

import os

from globe_train.demo import build_app

models = [m.strip() for m in os.environ.get("GLOBE_MODELS", os.environ.get("GLOBE_MODEL", "")).split(",") if m.strip()]
protocol = os.environ.get("GLOBE_PROTOCOL", "globe-release")
endpoint = os.environ.get("GLOBE_ENDPOINT", "")
build_app(models, protocol, endpoint=endpoint, endpoint_model=os.environ.get("GLOBE_ENDPOINT_MODEL", "")).queue(
    max_size=16
).launch(max_file_size="20mb")
