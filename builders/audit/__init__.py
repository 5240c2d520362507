"""The leakage and near-duplicate audit: perceptual hashes of each image (computed in the image stage), a search
for pairs across and within splits and against public benchmarks, and the report (``mp16-reason audit``)."""
