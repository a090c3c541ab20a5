"""Probes of a representation: how much of the labels / factors is linearly or locally decodable.

All probes take feature arrays (`batching.encode_features(method, images)`), so they are checked
on known features (the true factors, noise) as well as on learned ones:

- linear probe: features standardised with train statistics, multinomial logistic regression,
  C chosen on a held-out validation split of train, refit on all of train, test accuracy;
- kNN probe: k = 20 nearest train neighbours under cosine distance, majority vote;
- few-label accuracy: the linear probe trained on n = 10 / 100 / 1000 class-balanced labelled
  examples (fixed C; too few labels to validate), mean and std over several draws;
- per-factor probes (datasets with known generative factors): accuracy for discrete factors,
  R^2 of a ridge regression for continuous ones;
- t-SNE embedding of at most ~2000 points for the picture (openTSNE when installed).
"""

from __future__ import annotations

import warnings

import numpy as np


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    return [scaler.transform(a) for a in (train, *others)]


def _logreg(C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=1000, random_state=seed)


def _fit(clf, x, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # lbfgs on tiny C grids: a warning, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    Cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0),
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """{"linear_acc", "linear_C"}: logistic regression with C chosen on a validation split."""
    train_x, test_x = _standardise(train_x, test_x)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_y))
    n_val = max(1, int(round(val_fraction * len(train_y))))
    val, fit = perm[:n_val], perm[n_val:]
    best_C, best_acc = Cs[0], -1.0
    for C in Cs:
        acc = _fit(_logreg(C, seed), train_x[fit], train_y[fit]).score(train_x[val], train_y[val])
        if acc > best_acc:
            best_C, best_acc = C, acc
    clf = _fit(_logreg(best_C, seed), train_x, train_y)
    return {"linear_acc": float(clf.score(test_x, test_y)), "linear_C": float(best_C)}


def knn_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20
) -> dict[str, float]:
    """{"knn_acc"}: k-nearest-neighbour vote under cosine distance."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine", algorithm="brute")
    return {"knn_acc": float(clf.fit(train_x, train_y).score(test_x, test_y))}


def balanced_draw(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices with (as nearly as possible) n / num_classes per class."""
    classes = np.unique(labels)
    per, extra = divmod(n, len(classes))
    picked = []
    for i, c in enumerate(rng.permutation(classes)):
        idx = np.flatnonzero(labels == c)
        picked.append(rng.choice(idx, size=min(len(idx), per + (i < extra)), replace=False))
    return np.concatenate(picked)


def few_label_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    sizes: tuple[int, ...] = (10, 100, 1000),
    draws: int = 5,
    C: float = 1.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """{"few_label_acc": {"10": mean, ...}, "few_label_acc_std": {"10": std, ...}}.

    Standardisation uses all train features (they are unlabelled data, available to any
    semi-supervised learner); only the classifier sees the n labels.
    """
    train_x, test_x = _standardise(train_x, test_x)
    rng = np.random.default_rng(seed)
    mean, std = {}, {}
    for n in sizes:
        if n > len(train_y):
            continue
        accs = []
        for _ in range(draws):
            idx = balanced_draw(train_y, n, rng)
            if len(np.unique(train_y[idx])) < 2:  # one class: the "classifier" is a constant
                accs.append(float(np.mean(test_y == train_y[idx][0])))
                continue
            accs.append(_fit(_logreg(C, seed), train_x[idx], train_y[idx]).score(test_x, test_y))
        mean[str(n)], std[str(n)] = float(np.mean(accs)), float(np.std(accs))
    return {"few_label_acc": mean, "few_label_acc_std": std}


def factor_probes(
    train_x: np.ndarray,
    train_f: np.ndarray,
    test_x: np.ndarray,
    test_f: np.ndarray,
    names: tuple[str, ...],
    kinds: tuple[str, ...],
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """{factor: {"acc": ...}} for discrete factors, {factor: {"r2": ...}} for continuous ones.

    Discrete factors: the linear probe (C on a validation split). Continuous factors: ridge
    regression on standardised features, alpha by generalised cross-validation, test R^2.
    """
    from sklearn.linear_model import RidgeCV

    if len(names) != train_f.shape[1] or len(kinds) != train_f.shape[1]:
        raise ValueError("factor_names / factor_kinds must name every factor column")
    xs_train, xs_test = _standardise(train_x, test_x)
    out: dict[str, dict[str, float]] = {}
    for j, (name, kind) in enumerate(zip(names, kinds)):
        if kind == "discrete":
            # factor values are floats in ImageData: map them to class ids
            values, y_train = np.unique(train_f[:, j], return_inverse=True)
            y_test = np.searchsorted(values, test_f[:, j])
            y_test = np.where(
                values[np.clip(y_test, 0, len(values) - 1)] == test_f[:, j], y_test, -1
            )
            if len(values) < 2:
                continue
            res = linear_probe(train_x, y_train, test_x, y_test, Cs=Cs, seed=seed)
            out[name] = {"acc": res["linear_acc"]}
        elif kind == "continuous":
            reg = RidgeCV(alphas=np.logspace(-6, 3, 10)).fit(xs_train, train_f[:, j])
            out[name] = {"r2": float(reg.score(xs_test, test_f[:, j]))}
        else:
            raise ValueError(f"factor kind must be 'discrete' or 'continuous', got {kind!r}")
    return out


def tsne_embed(feats: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of features [N, Z] (openTSNE when installed, else scikit-learn; PCA init).

    Collapsed codes are common here: the features are centred and scaled by their largest
    standard deviation first (t-SNE's geometry does not change under one scale), and identical
    points embed at the origin. scikit-learn's PCA init divides by the spread of the first
    component, and its Barnes-Hut tree then segfaults on the NaNs of a constant input.
    """
    x = np.asarray(feats, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("tsne_embed: the features hold NaN or inf")
    x = x - x.mean(0)
    spread = float(x.std(0).max()) if x.size else 0.0
    if spread <= 1e-12:  # every point the same: no picture to make
        return np.zeros((len(x), 2))
    x = x / spread
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    try:
        from openTSNE import TSNE as OpenTSNE

        return np.asarray(
            OpenTSNE(perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=1).fit(
                x
            )
        )
    except ImportError:
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
