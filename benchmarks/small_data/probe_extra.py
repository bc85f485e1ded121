"""CPU-budget completion of probe.py: n=4000 seed 2 and the full train split, mean-pooled features only,
L-BFGS (val-picked L2) for raw / l2 / std plus sklearn defaults. Writes probe_extra.json (same row format)."""

import json
import time

import probe
from common import *

D = probe.D
ytr_all, yva, yte = D["train_y"], D["validation_y"], D["test_y"]
rows = []
for n, seed in [(4000, 2), (None, 0)]:
    idx = subsample_indices(len(ytr_all), n, seed)
    ytr = ytr_all[idx]
    Xtr0, Xva0, Xte0 = D["train_mean"][idx], D["validation_mean"], D["test_mean"]
    rows.append(
        dict(
            n=n,
            seed=seed,
            pool="mean",
            prep="raw",
            method="sklearn-default",
            test=probe.sk_default(Xtr0, ytr, Xte0, yte),
        )
    )
    for kind in ["raw", "l2", "std"]:
        Xtr, Xva, Xte = probe.prep(kind, Xtr0, Xva0, Xte0)
        t0 = time.time()
        te, lam, allres = probe.lbfgs_select(Xtr, ytr, Xva, yva, Xte, yte)
        rows.append(
            dict(
                n=n,
                seed=seed,
                pool="mean",
                prep=kind,
                method="lbfgs-valgrid",
                test=te,
                lam=lam,
                grid=[(float(a), float(l), float(t)) for a, l, t in allres],
                secs=time.time() - t0,
            )
        )
    print(n, seed, [(r["method"], r["prep"], round(r["test"], 3)) for r in rows if r["n"] == n], flush=True)
    json.dump(rows, open(f"{HERE}/probe_extra.json", "w"))
