"""Experiment 1: linear heads on frozen MiniLM features (from feats.npz).
(a) full-batch L-BFGS multinomial logistic regression, L2 strength picked on validation from a grid;
(b) AdamW linear head (lr 1e-3 / 1e-2, batch 32, constant LR; test read at epochs 20/50/100 of one run);
(c) the same on CLS-token and BERT-pooler features; feature preprocessing raw / L2-normalised / standardised.
Also sklearn LogisticRegression() defaults, to tie back to the known numbers."""

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import *

torch.set_num_threads(1)
D = np.load(f"{HERE}/feats.npz")
LAMS = np.logspace(-4, 1, 6)
SIZES_ALL = SIZES + [None]  # None = full train split (one draw)


def prep(kind, Xtr, *others):
    if kind == "raw":
        return (Xtr, *others)
    if kind == "l2":
        n = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)
        return (n(Xtr), *[n(X) for X in others])
    if kind == "std":
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
        return ((Xtr - mu) / sd, *[(X - mu) / sd for X in others])


def fit_lbfgs(X, y, lam, C=2, max_iter=150):
    """argmin mean CE + lam/2 ||W||^2 (bias unpenalised), float64, strong-Wolfe line search."""
    X = torch.as_tensor(X, dtype=torch.float64)
    y = torch.as_tensor(y)
    W = torch.zeros(X.shape[1], C, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(X @ W + b, y) + 0.5 * lam * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def acc(W, b, X, y):
    return float(((torch.as_tensor(X, dtype=W.dtype) @ W + b).argmax(1).numpy() == y).mean())


def lbfgs_select(Xtr, ytr, Xva, yva, Xte, yte):
    """Fit every lam; pick by validation accuracy (ties: the stronger regularisation). Returns picked test acc, lam, all."""
    res = []
    for lam in LAMS:
        W, b = fit_lbfgs(Xtr, ytr, lam)
        res.append((acc(W, b, Xva, yva), lam, acc(W, b, Xte, yte)))
    best = max(res, key=lambda t: (t[0], t[1]))
    return best[2], best[1], res


def fit_adamw(Xtr, ytr, Xva, yva, Xte, yte, lr, seed, epochs=(20, 50, 100), bs=32):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    Xtr_t, ytr_t = torch.as_tensor(Xtr), torch.as_tensor(ytr)
    head = torch.nn.Linear(Xtr.shape[1], 2)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    out = {}
    for ep in range(1, max(epochs) + 1):
        perm = torch.randperm(len(ytr), generator=g)
        for s in range(0, len(ytr), bs):
            i = perm[s : s + bs]
            loss = F.cross_entropy(head(Xtr_t[i]), ytr_t[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ep in epochs:
            with torch.no_grad():
                out[ep] = (
                    float((head(torch.as_tensor(Xva)).argmax(1).numpy() == yva).mean()),
                    float((head(torch.as_tensor(Xte)).argmax(1).numpy() == yte).mean()),
                )
    return out


def sk_default(Xtr, ytr, Xte, yte):
    import warnings

    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float((LogisticRegression().fit(Xtr, ytr).predict(Xte) == yte).mean())


if __name__ == "__main__":
    print(load_stamp(), flush=True)
    ytr_all, yva, yte = D["train_y"], D["validation_y"], D["test_y"]
    print("n", len(ytr_all), len(yva), len(yte), "test majority", max(yte.mean(), 1 - yte.mean()))
    rows = []
    try:
        import sklearn  # noqa

        have_sk = True
    except ImportError:
        have_sk = False
    import os

    prev = (
        json.load(open(f"{HERE}/probe_results.json"))
        if os.path.exists(f"{HERE}/probe_results.json") and "--resume" in sys.argv
        else []
    )
    done = {(r["n"], r["seed"]) for r in prev}
    rows = prev
    for n in SIZES_ALL:
        for seed in SEEDS if n is not None else [0]:
            if (n, seed) in done:
                continue
            idx = subsample_indices(len(ytr_all), n, seed)
            ytr = ytr_all[idx]
            for pool in ["mean", "cls", "pooler"]:
                Xtr0, Xva0, Xte0 = D[f"train_{pool}"][idx], D[f"validation_{pool}"], D[f"test_{pool}"]
                if have_sk:
                    rows.append(
                        dict(
                            n=n,
                            seed=seed,
                            pool=pool,
                            prep="raw",
                            method="sklearn-default",
                            test=sk_default(Xtr0, ytr, Xte0, yte),
                        )
                    )
                for kind in ["raw", "l2", "std"]:
                    Xtr, Xva, Xte = prep(kind, Xtr0, Xva0, Xte0)
                    t0 = time.time()
                    te, lam, allres = lbfgs_select(Xtr, ytr, Xva, yva, Xte, yte)
                    rows.append(
                        dict(
                            n=n,
                            seed=seed,
                            pool=pool,
                            prep=kind,
                            method="lbfgs-valgrid",
                            test=te,
                            lam=lam,
                            grid=[(float(a), float(l), float(t)) for a, l, t in allres],
                            secs=time.time() - t0,
                        )
                    )
                    if (
                        n is None or n > 1000 and seed > 0 or pool != "mean"
                    ):  # AdamW head: mean features only; n=4000 seed 0 only (CPU budget)
                        continue
                    for lr in [1e-3, 1e-2]:
                        t0 = time.time()
                        res = fit_adamw(Xtr, ytr, Xva, yva, Xte, yte, lr, seed)
                        secs = time.time() - t0
                        for ep, (va, te) in res.items():
                            rows.append(
                                dict(
                                    n=n,
                                    seed=seed,
                                    pool=pool,
                                    prep=kind,
                                    method=f"adamw lr{lr:g} ep{ep}",
                                    val=va,
                                    test=te,
                                    secs=secs,
                                )
                            )
                print(
                    n,
                    seed,
                    pool,
                    [
                        (r["method"], r["prep"], round(r["test"], 3))
                        for r in rows
                        if r["n"] == n
                        and r["seed"] == seed
                        and r["pool"] == pool
                        and r["method"] in ("lbfgs-valgrid", "sklearn-default")
                    ],
                    flush=True,
                )
            json.dump(rows, open(f"{HERE}/probe_results.json", "w"))
    print(load_stamp(), flush=True)
