"""The GLOBE demo as a Hugging Face Space: `globe push --space ORG/NAME` uploads this folder with the packages
it needs. Locally: `globe demo`."""

import os

from globe_train.demo import build_app

model = os.environ.get("GLOBE_MODEL", "globe-project/GLOBE-Qwen2.5VL-7B")
protocol = os.environ.get("GLOBE_PROTOCOL", "globe-release")
build_app(model, protocol).queue(max_size=16).launch(max_file_size="20mb")
