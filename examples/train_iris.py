"""Trains an iris classifier on the data set bundled with scikit-learn (no download) and
saves it twice: as joblib (for MODEL=.../iris.joblib) and as ONNX (MODEL=.../iris.onnx).

    python examples/train_iris.py [OUT_DIR]      # default: examples/
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def train(out_dir: Path) -> tuple[Path, Path, float]:
    """Fits the model and writes iris.joblib and iris.onnx; answers their paths and accuracy."""
    iris = load_iris()
    labels = iris.target_names[iris.target]  # species names, so predictions read as names
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, labels, test_size=0.3, random_state=0, stratify=labels
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))

    out_dir.mkdir(parents=True, exist_ok=True)
    joblib_path = out_dir / "iris.joblib"
    joblib.dump(model, joblib_path)
    # zipmap off: probabilities come out as a plain tensor, one column per class.
    onnx_model = to_onnx(
        model,
        x_train[:1].astype(np.float32),
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    onnx_path = out_dir / "iris.onnx"
    onnx_path.write_bytes(onnx_model.SerializeToString())
    return joblib_path, onnx_path, accuracy


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    joblib_path, onnx_path, accuracy = train(out)
    print(f"test accuracy {accuracy:.3f}; wrote {joblib_path} and {onnx_path}")
