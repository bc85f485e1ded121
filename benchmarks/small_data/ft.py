"""Experiment 2: full fine-tuning of MiniLM with a mean-pooling linear head (dropout 0.1).
AdamW (wd 0.01), batch 16, fixed number of optimizer steps (several epochs at small n), 10% warmup then
linear decay to 0; body lr / head lr separate; optional layer-wise LR decay; optional LP-FT head init
(the L-BFGS probe on frozen mean features, L2 picked on validation). One run per call; appends a JSON line."""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from common import *

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, required=True)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--body-lr", type=float, default=5e-5)
p.add_argument("--head-lr", type=float, default=1e-3)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--bs", type=int, default=16)
p.add_argument("--warmup", type=float, default=0.1)
p.add_argument("--llrd", type=float, default=1.0)
p.add_argument("--lpft", action="store_true", help="head starts from the L-BFGS probe")
p.add_argument("--tag", default="")
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(a.seed)
load0 = load_stamp()
t_start = time.time()

r, tok, labels, enc = load_data()
idx = subsample_indices(len(enc["train"]), a.n, a.seed)
train = enc["train"].select(idx)
tr_ids, tr_y = train["input_ids"], np.array(train["labels"])

from transformers import AutoModel


class MeanPoolClassifier(nn.Module):
    def __init__(self, path, n_labels=2):
        super().__init__()
        self.body = AutoModel.from_pretrained(path, add_pooling_layer=False)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(self.body.config.hidden_size, n_labels)

    def forward(self, input_ids, attention_mask):
        h = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.drop(mean_pool(h, attention_mask)))


model = MeanPoolClassifier(model_dir())
probe_info = None
if a.lpft:
    import probe

    D = probe.D
    Xtr = D["train_mean"][idx]
    te, lam, _ = probe.lbfgs_select(Xtr, tr_y, D["validation_mean"], D["validation_y"], D["test_mean"], D["test_y"])
    W, b = probe.fit_lbfgs(Xtr, tr_y, lam)
    with torch.no_grad():
        model.head.weight.copy_(W.T.float())
        model.head.bias.copy_(b.float())
    probe_info = dict(probe_test=te, probe_lam=float(lam))
    print("probe head", probe_info, flush=True)

# parameter groups: head; body with optional layer-wise decay (top layer = body lr)
L = model.body.config.num_hidden_layers
groups = [{"params": list(model.head.parameters()), "lr": a.head_lr}]
if a.llrd == 1.0:
    groups.append({"params": list(model.body.parameters()), "lr": a.body_lr})
else:
    groups.append({"params": list(model.body.embeddings.parameters()), "lr": a.body_lr * a.llrd**L})
    for i, layer in enumerate(model.body.encoder.layer):
        groups.append({"params": list(layer.parameters()), "lr": a.body_lr * a.llrd ** (L - 1 - i)})
opt = torch.optim.AdamW(groups, weight_decay=0.01)
warm = max(1, int(a.warmup * a.steps))
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (a.steps - s) / max(1, a.steps - warm))
)


def evaluate(split):
    model.eval()
    ids, y = enc[split]["input_ids"], np.array(enc[split]["labels"])
    order = np.argsort([len(x) for x in ids])
    pred = np.zeros(len(ids), int)
    with torch.inference_mode():
        for s in range(0, len(ids), 64):
            i = order[s : s + 64]
            x, m = pad_batch([ids[j] for j in i], tok.pad_token_id)
            pred[i] = model(x, m).argmax(1).numpy()
    model.train()
    return float((pred == y).mean()), float(pred.mean())


g = torch.Generator().manual_seed(a.seed)
model.train()
step, losses = 0, []
t0 = time.time()
while step < a.steps:
    perm = torch.randperm(len(tr_y), generator=g).tolist()
    for s in range(0, len(perm), a.bs):
        if step >= a.steps:
            break
        i = perm[s : s + a.bs]
        x, m = pad_batch([tr_ids[j] for j in i], tok.pad_token_id)
        loss = F.cross_entropy(model(x, m), torch.as_tensor(tr_y[i]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {np.mean(losses[-50:]):.3f} {time.time() - t0:.0f}s", flush=True)
train_secs = time.time() - t0
va, _ = evaluate("validation")
te, te_pos = evaluate("test")
res = dict(
    n=a.n,
    seed=a.seed,
    body_lr=a.body_lr,
    head_lr=a.head_lr,
    steps=a.steps,
    bs=a.bs,
    llrd=a.llrd,
    lpft=a.lpft,
    epochs=round(a.steps * a.bs / len(tr_y), 2),
    val=va,
    test=te,
    test_frac_pred_fresh=te_pos,
    train_secs=round(train_secs, 1),
    sec_per_step=round(train_secs / a.steps, 3),
    total_secs=round(time.time() - t_start, 1),
    load_before=load0,
    load_after=load_stamp(),
    tag=a.tag,
    **(probe_info or {}),
)
print(json.dumps(res), flush=True)
with open(f"{HERE}/ft_results.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")
