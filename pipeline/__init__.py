"""GAN training pipeline: prepare -> train -> evaluate -> export, tracked in MLflow."""
