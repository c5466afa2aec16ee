#!/usr/bin/env python3
"""Linear-regime benchmark, reference side: the features of shared/bench/logreg.py (same
generator, same env settings), written to FEATURES_OUT (safetensors, x f32 [N,D], y i64 [N]),
and scikit-learn LogisticRegression(lbfgs) fitted per value of the L2 path (each fit from
zero, as a per-value grid search does), with C = 1 / (l2 * N) so that both minimise
mean CE + l2/2 ||W||^2.  Prints one JSON line with per-value times and objectives.

env: N D K SEP FEATURES SCALE_SPREAD THREADS as logreg.py; L2 (comma list); FEATURES_OUT.
"""
import json, os, struct, time, warnings

THREADS = int(os.environ.get("THREADS", "2"))
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

N = int(os.environ.get("N", "20000")); D = int(os.environ.get("D", "2048")); K = int(os.environ.get("K", "100"))
SEP = float(os.environ.get("SEP", "0.1")); FEATURES = os.environ.get("FEATURES", "isotropic")
SPREAD = float(os.environ.get("SCALE_SPREAD", "10"))
L2 = [float(v) for v in os.environ.get("L2", "1e-1,1e-2,1e-3,1e-4").split(",")]
OUT = os.environ.get("FEATURES_OUT", "/tmp/linear_features.safetensors")

rng = np.random.default_rng(0)
mu = rng.normal(0.0, SEP, size=(K, D)).astype(np.float32)
ytr = rng.integers(0, K, N)
X = (mu[ytr] + rng.standard_normal((N, D), dtype=np.float32)).astype(np.float32)
if FEATURES == "relu_scaled":
    _yte = rng.integers(0, K, 5000)
    _ = rng.standard_normal((5000, D), dtype=np.float32)  # keep logreg.py's draw order
    sc = np.exp(rng.uniform(-np.log(SPREAD), np.log(SPREAD), size=D)).astype(np.float32)
    X = np.maximum(X, 0) * sc


def write(path, tensors):
    header, blobs, off = {}, [], 0
    for name, (arr, dt) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw); off += len(raw)
    head = json.dumps(header).encode(); head += b" " * ((8 - len(head) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head))); f.write(head)
        for b in blobs: f.write(b)


write(OUT, {"x": (X, "F32"), "y": (ytr.astype(np.int64), "I64")})


def objective(W, b, l2):
    Z = X.astype(np.float64) @ W + b
    Z -= Z.max(axis=1, keepdims=True)
    ce = (np.log(np.exp(Z).sum(axis=1)) - Z[np.arange(N), ytr]).mean()
    return float(ce + 0.5 * l2 * (W ** 2).sum())


points, total = [], 0.0
for l2 in sorted(L2, reverse=True):
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=1.0 / (l2 * N))
    with threadpool_limits(limits=THREADS), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter(); clf.fit(X, ytr); dt = time.perf_counter() - t
    total += dt
    W = clf.coef_.T.astype(np.float64); b = clf.intercept_.astype(np.float64)
    points.append({"l2": l2, "seconds": dt, "J": objective(W, b, l2), "iters": int(clf.n_iter_[0]),
                   "train_acc": float(((X @ clf.coef_.T + clf.intercept_).argmax(1) == ytr).mean())})
print(json.dumps({"impl": "sklearn-per-value", "seconds": total, "points": points, "N": N, "D": D, "K": K,
                  "features": FEATURES, "threads": THREADS, "features_out": OUT}))
