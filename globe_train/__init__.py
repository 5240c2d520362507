"""GLOBE: training, evaluation and prediction for geo-localization reasoning on MP16-Reason."""
