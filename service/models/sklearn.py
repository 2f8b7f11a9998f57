"""scikit-learn estimators saved with joblib or pickle (.joblib, .pkl)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.errors import ModelLoadError
from service.models.base import Model, file_digest
from service.models.tabular import FORM_TAGS, MAX_ROWS, flatten, regroup, row_type

try:
    import joblib
    import numpy as np
    import sklearn
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ModelLoadError(
        f"scikit-learn models need the 'sklearn' extra: pip install '.[sklearn]' ({exc})"
    ) from exc


# Classifiers whose predict() is, by their own implementation, the class of highest
# predict_proba() (first one on ties): for these one predict_proba() call gives both the
# label and the probabilities, halving the work per batch.
_LABEL_IS_ARGMAX_PROBA = frozenset(
    {
        "LogisticRegression",
        "LogisticRegressionCV",
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "DecisionTreeClassifier",
        "ExtraTreeClassifier",
        "KNeighborsClassifier",
        "GaussianNB",
        "MLPClassifier",
    }
)


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


class SklearnModel(Model):
    """``predict`` on rows of ``n_features_in_`` numbers; class probabilities when the
    estimator has ``predict_proba``. Every input of a batch goes through one estimator call.
    """

    kind = "sklearn"
    form_tags = FORM_TAGS

    def __init__(self, name: str, spec: str) -> None:
        path = Path(spec)
        try:
            # Unpickling runs code from the file: only load model files you trust.
            estimator = joblib.load(path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
        width = getattr(estimator, "n_features_in_", None)
        if not callable(getattr(estimator, "predict", None)) or not isinstance(width, int):
            raise ModelLoadError(f"{path} holds no fitted estimator (need predict, n_features_in_)")
        self.estimator = estimator
        self.width = width
        self.classes: list[Any] | None = (
            np.asarray(estimator.classes_).tolist() if hasattr(estimator, "classes_") else None
        )
        self._proba = callable(getattr(estimator, "predict_proba", None))
        self._label_from_proba = (
            self._proba and type(_final_step(estimator)).__name__ in _LABEL_IS_ARGMAX_PROBA
        )
        version = (
            f"{type(estimator).__name__}; scikit-learn {sklearn.__version__}; "
            f"sha256:{file_digest(path)}"
        )
        super().__init__(name, spec, row_type(width), version)

    def predict(self, value: Any) -> Any:
        return self.predict_batch([value])[0]

    def predict_batch(self, values: list[Any]) -> Sequence[Any]:
        rows, spans = flatten(values)
        x = np.asarray(rows, dtype=np.float64)
        if self._proba and self.classes is not None:
            proba = np.asarray(self.estimator.predict_proba(x))
            if self._label_from_proba:
                labels = np.asarray(self.classes)[proba.argmax(axis=1)].tolist()
            else:
                labels = np.asarray(self.estimator.predict(x)).tolist()
            probabilities = proba.tolist()
            per_row: list[Any] = [
                {"label": label, "probabilities": dict(zip(self.classes, p, strict=True))}
                for label, p in zip(labels, probabilities, strict=True)
            ]
        else:
            labels = np.asarray(self.estimator.predict(x)).tolist()
            per_row = [{"label": label} for label in labels]
        return regroup(per_row, spans)

    def output_schema(self) -> dict[str, Any]:
        one: dict[str, Any] = {
            "type": "object",
            "properties": {"label": {}},
            "required": ["label"],
        }
        if self._proba:
            one["properties"]["probabilities"] = {
                "type": "object",
                "additionalProperties": {"type": "number"},
            }
        return {"anyOf": [one, {"type": "array", "items": one, "maxItems": MAX_ROWS}]}
