"""The MLflow model registry: every registry call (`client`) and the rule that moves the champion alias (`promotion`)."""
