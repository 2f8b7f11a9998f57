"""Models: one loading path for Python, scikit-learn and ONNX models, and the registry."""

from .base import Model, Outcome
from .loader import load_model
from .registry import ModelConfig, ModelRegistry, model_configs

__all__ = ["Model", "ModelConfig", "ModelRegistry", "Outcome", "load_model", "model_configs"]
