#!/usr/bin/env python3
"""The linear regime's protocol, done by scikit-learn on the same cached features.

Reads the feature files the trainer cached for one (model, dataset) cell (safetensors with
`x` f32 [n, d] and `y` i64 [n]), and for every value of the L2 path fits
`LogisticRegression(C = 1 / (l2 * n))` on train (scikit-learn minimises
C * sum CE + ||W||^2 / 2, the same minimiser as tsweep's mean CE + l2/2 ||W||^2; the
intercept is not penalised in either; scikit-learn >= 1.2 minimises the mean form, so its
`tol` is tsweep's stop at max|gradient| <= 1e-4), scores val, takes the best value (ties to the
stronger penalty, as tsweep does), refits it on train+val and scores test. Prints one JSON
line: {"l2": selected, "val": best val score, "test": test score, "path": [[l2, val], ...]}.

  tools/sklearn_probe.py --train T.safetensors --val V.safetensors --test X.safetensors \
      --l2 1e-4,1e-3,1e-2 [--metric top1|mean_per_class]
"""
import argparse
import json
import sys
import warnings

import numpy as np
from safetensors.numpy import load_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression


def load(path):
    t = load_file(path)
    return t["x"].astype(np.float64), t["y"].astype(np.int64)


def score(metric, y_true, y_pred):
    if metric == "top1":
        return float(np.mean(y_true == y_pred))
    if metric == "mean_per_class":
        classes = np.unique(y_true)
        return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))
    sys.exit(f"sklearn_probe: metric {metric} is not supported here")


def fit(x, y, l2, max_iter):
    clf = LogisticRegression(C=1.0 / (l2 * len(y)), solver="lbfgs", max_iter=max_iter, tol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--l2", required=True, help="comma-separated L2 path")
    p.add_argument("--metric", default="top1")
    p.add_argument("--max-iter", type=int, default=1000)
    a = p.parse_args()
    (xtr, ytr), (xva, yva), (xte, yte) = load(a.train), load(a.val), load(a.test)
    path = sorted((float(v) for v in a.l2.split(",")), reverse=True)  # strongest first
    scores = []
    best = None
    for l2 in path:
        s = score(a.metric, yva, fit(xtr, ytr, l2, a.max_iter).predict(xva))
        scores.append([l2, s])
        if best is None or s > best[1]:
            best = (l2, s)
    xtv, ytv = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    test = score(a.metric, yte, fit(xtv, ytv, best[0], a.max_iter).predict(xte))
    print(json.dumps({"l2": best[0], "val": best[1], "test": test, "path": scores}))


if __name__ == "__main__":
    main()
