"""Stackers for multi-label and regression members: plain numpy (and scipy's L-BFGS), fitted on OOF rows.

- ``fit_label_stack``: per label, ``logit p = sum_m (a[m] + d[m, l]) * logit P[m, :, l] + b[l]``: a weighted
  mean of the members' logits with a temperature (``a``), per-label offsets (``b``) and per-label member trust
  (``d``, pulled towards zero): the multi-label form of the single-label stacker, with as few parameters.
- ``fit_ridge_stack``: per target, a ridge regression of the target on the members' predictions of it, with
  an intercept and weights shrunk towards the plain mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-6
L2 = 1e-3


def _logit(P: np.ndarray) -> np.ndarray:
    P = np.clip(np.asarray(P, np.float64), EPS, 1 - EPS)
    return np.log(P) - np.log1p(-P)


@dataclass(frozen=True)
class LabelStacker:
    """Multi-label stack: member probabilities (M, n, L) -> blended probabilities (n, L)."""

    a: np.ndarray  # (M,)
    b: np.ndarray  # (L,)
    d: np.ndarray  # (M, L)

    def predict(self, P: np.ndarray) -> np.ndarray:
        z = np.einsum("mnl,ml->nl", _logit(P), self.a[:, None] + self.d) + self.b
        return 1.0 / (1.0 + np.exp(-z))


def fit_label_stack(P: np.ndarray, Y: np.ndarray, l2: float = L2) -> LabelStacker:
    """Fit a :class:`LabelStacker` by L-BFGS on the mean binary cross-entropy + ``l2 * |d|^2``."""
    from scipy.optimize import minimize

    Z = _logit(P)
    M, n, L = Z.shape
    Y = np.asarray(Y, np.float64)
    ridge = 1e-6

    def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return theta[:M], theta[M : M + L], theta[M + L :].reshape(M, L)

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, d = unpack(theta)
        z = np.einsum("mnl,ml->nl", Z, a[:, None] + d) + b
        # log(1 + e^z) - y z, computed stably
        loss_cells = np.logaddexp(0.0, z) - Y * z
        G = (1.0 / (1.0 + np.exp(-z)) - Y) / (n * L)
        gd = np.einsum("nl,mnl->ml", G, Z)
        loss = loss_cells.sum() / (n * L) + l2 * (d**2).sum() + ridge * ((a**2).sum() + (b**2).sum())
        grad = np.concatenate(
            [gd.sum(axis=1) + 2 * ridge * a, G.sum(axis=0) + 2 * ridge * b, (gd + 2 * l2 * d).ravel()]
        )
        return float(loss), grad

    theta0 = np.concatenate([np.full(M, 1.0 / M), np.zeros(L), np.zeros(M * L)])  # start at the mean logit
    res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return LabelStacker(*unpack(res.x))


@dataclass(frozen=True)
class RidgeStacker:
    """Regression stack: member predictions (M, n, T) -> blended predictions (n, T)."""

    w: np.ndarray  # (M, T)
    b: np.ndarray  # (T,)

    def predict(self, P: np.ndarray) -> np.ndarray:
        return np.einsum("mnt,mt->nt", np.asarray(P, np.float64), self.w) + self.b


def fit_ridge_stack(P: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> RidgeStacker:
    """Per target, minimise ``|y - X w - b|^2 / n + alpha * |w - 1/M|^2 * var`` in closed form: the penalty
    pulls the weights towards the plain mean, scaled by the members' variance so it does not depend on units."""
    P = np.asarray(P, np.float64)
    y = np.asarray(y, np.float64).reshape(P.shape[1], -1)
    M, n, T = P.shape
    w = np.zeros((M, T))
    b = np.zeros(T)
    prior = np.full(M, 1.0 / M)
    for t in range(T):
        X = P[:, :, t].T  # (n, M)
        xm, ym = X.mean(0), y[:, t].mean()
        Xc, yc = X - xm, y[:, t] - ym
        scale = max(float((Xc**2).mean()), 1e-12)
        A = Xc.T @ Xc / n + alpha * scale * np.eye(M)
        rhs = Xc.T @ yc / n + alpha * scale * prior
        w[:, t] = np.linalg.solve(A, rhs)
        b[t] = ym - xm @ w[:, t]
    return RidgeStacker(w, b)
