"""Tables (mean ± std over seeds, test accuracy) from probe_results.json and ft_results.jsonl."""

import collections
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MAJ = 0.566


def ms(v):
    v = np.array(v)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f} (n={len(v)})" if len(v) > 1 else f"{v[0]:.3f} (1 run)"


def probe_tables():
    rows = json.load(open(f"{HERE}/probe_results.json"))
    if os.path.exists(f"{HERE}/probe_extra.json"):
        have = {(r["n"], r["seed"], r["pool"], r["prep"], r["method"]) for r in rows}
        rows += [
            r
            for r in json.load(open(f"{HERE}/probe_extra.json"))
            if (r["n"], r["seed"], r["pool"], r["prep"], r["method"]) not in have
        ]
    sizes = [n for n in [100, 500, 1000, 4000, None] if any(r["n"] == n for r in rows)]
    cols = (
        ["100", "500", "1000", "4000", "full (10,207)"][: len(sizes)] if sizes[-1] is None else [str(s) for s in sizes]
    )
    cols = [("full (10,207)" if n is None else str(n)) for n in sizes]
    cfgs = []
    for r in rows:
        k = (r["pool"], r["prep"], r["method"])
        if k not in cfgs:
            cfgs.append(k)
    out = ["| pooling | features | head | " + " | ".join(cols) + " |", "|" + "---|" * (3 + len(cols))]
    for k in cfgs:
        cells = []
        for n in sizes:
            v = [r["test"] for r in rows if (r["pool"], r["prep"], r["method"]) == k and r["n"] == n]
            cells.append(ms(v) if v else "")
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
    # lambda picks
    lam = collections.defaultdict(list)
    for r in rows:
        if r["method"] == "lbfgs-valgrid":
            lam[(r["pool"], r["prep"], r["n"])].append(r["lam"])
    out.append("\nL2 strength picked on validation (per seed):\n")
    for (p, k, n), v in lam.items():
        out.append(f"- {p}/{k} n={n}: " + ", ".join(f"{x:g}" for x in v))
    # fixed lambda (no validation pick): test accuracy per grid value, L-BFGS, mean over seeds
    out.append("\nL-BFGS at a fixed L2 strength (no validation pick), test accuracy mean over seeds:\n")
    lams = sorted({g[1] for r in rows if r["method"] == "lbfgs-valgrid" for g in r["grid"]})
    out.append("| pooling/features | n | " + " | ".join(f"{l:g}" for l in lams) + " | val-picked |")
    out.append("|" + "---|" * (len(lams) + 3))
    for pool in ["mean", "cls", "pooler"]:
        for prep in ["raw", "l2", "std"]:
            for n in sizes:
                rs = [
                    r
                    for r in rows
                    if r["method"] == "lbfgs-valgrid" and r["pool"] == pool and r["prep"] == prep and r["n"] == n
                ]
                if not rs:
                    continue
                cells = [np.mean([t for r in rs for (a, l, t) in r["grid"] if l == lam]) for lam in lams]
                best = int(np.argmax(cells))
                out.append(
                    f"| {pool}/{prep} | {n or 'full'} | "
                    + " | ".join((f"**{c:.3f}**" if i == best else f"{c:.3f}") for i, c in enumerate(cells))
                    + f" | {np.mean([r['test'] for r in rs]):.3f} |"
                )
    # adamw val-picked
    out.append("\nAdamW head, (lr, epochs) picked on validation per run (mean features):\n")
    for prep in ["raw", "l2", "std"]:
        for n in sizes:
            picks = []
            for s in {r["seed"] for r in rows if r["n"] == n}:
                c = [
                    r
                    for r in rows
                    if r["n"] == n
                    and r["seed"] == s
                    and r["pool"] == "mean"
                    and r["prep"] == prep
                    and r["method"].startswith("adamw")
                ]
                if c:
                    b = max(c, key=lambda r: r["val"])
                    picks.append((b["test"], b["method"]))
            if picks:
                out.append(f"- {prep} n={n}: {ms([p[0] for p in picks])}; picks: " + ", ".join(p[1] for p in picks))
    secs = collections.defaultdict(list)
    for r in rows:
        if "secs" in r:
            secs[(r["method"].split(" ep")[0], r["n"])].append(r["secs"])
    out.append("\nSeconds per fit (1 thread, shared machine; lbfgs = the whole 6-value grid):\n")
    for (m, n), v in secs.items():
        out.append(f"- {m} n={n}: {np.mean(v):.1f}s")
    return "\n".join(out)


def ft_tables():
    p = f"{HERE}/ft_results.jsonl"
    if not os.path.exists(p):
        return ""
    rows = [json.loads(l) for l in open(p)]
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["n"], r["body_lr"], r["head_lr"], r["steps"], r["llrd"], r["lpft"])].append(r)
    out = [
        "| n | body lr | head lr | steps (epochs) | LLRD | LP-FT | val | test | seeds | s/step | train s | load avg (before) |",
        "|" + "---|" * 12,
    ]
    for k in sorted(groups, key=lambda k: (k[0], -np.mean([r["val"] for r in groups[k]]))):
        g = groups[k]
        out.append(
            f"| {k[0]} | {k[1]:g} | {k[2]:g} | {k[3]} ({g[0]['epochs']}) | {k[4]:g} | {'yes' if k[5] else 'no'} | "
            f"{ms([r['val'] for r in g])} | {ms([r['test'] for r in g])} | {','.join(str(r['seed']) for r in g)} | "
            f"{np.mean([r['sec_per_step'] for r in g]):.2f} | {np.mean([r['train_secs'] for r in g]):.0f} | "
            f"{'; '.join(r['load_before'].split('load average: ')[-1] for r in g)} |"
        )
    pro = [r for r in rows if "probe_test" in r]
    if pro:
        out.append(
            "\nLP-FT: the probe head alone (before fine-tuning) scored: "
            + ", ".join(f"n={r['n']} s{r['seed']}: {r['probe_test']:.3f} (lam {r['probe_lam']:g})" for r in pro)
        )
    return "\n".join(out)


if __name__ == "__main__":
    print(probe_tables())
    print()
    print(ft_tables())
