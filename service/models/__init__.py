"""Models: one loading path for Python, scikit-learn and ONNX models, and the registry."""

from service.models.base import Model
from service.models.loader import load_model
from service.models.registry import ModelConfig, ModelRegistry, model_configs

__all__ = ["Model", "ModelConfig", "ModelRegistry", "load_model", "model_configs"]
