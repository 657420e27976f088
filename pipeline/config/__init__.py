"""The params: `schema` (one frozen dataclass per section, with rules), `parse` (the strict reader of params.yaml)
and `yaml12` (YAML 1.2, as DVC writes it). Torch-free, so any stage can check params before importing torch.
"""

from pipeline.config.parse import SECTIONS, load_params, parse_params, write_resolved
from pipeline.config.schema import (
    ARCHS,
    DATASETS,
    LOSSES,
    METRICS,
    DataConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    Params,
    TrackingConfig,
    TrainConfig,
)
from pipeline.errors import ParamsError

__all__ = [
    "ARCHS", "DATASETS", "LOSSES", "METRICS", "SECTIONS", "DataConfig", "EvalConfig", "ExportConfig", "ModelConfig",
    "Params", "ParamsError", "TrackingConfig", "TrainConfig", "load_params", "parse_params", "write_resolved",
]
