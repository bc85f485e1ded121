"""Frozen MiniLM features (mean-pooled last hidden state, CLS token, BERT pooler) for all rows of
train / validation / test, computed once and cached in feats.npz (train subsets are row subsets)."""

import os
import time

import numpy as np
import torch
from common import *

r, tok, labels, enc = load_data()
print("labels", labels, {s: len(enc[s]) for s in enc})
from transformers import AutoModel

model = AutoModel.from_pretrained(model_dir()).eval()
out = {}
t0 = time.time()
print(load_stamp())
for split in ["train", "validation", "test"]:
    ids = enc[split]["input_ids"]
    y = np.array(enc[split]["labels"])
    order = np.argsort([len(x) for x in ids])
    M, C, P = (
        np.zeros((len(ids), 384), np.float32),
        np.zeros((len(ids), 384), np.float32),
        np.zeros((len(ids), 384), np.float32),
    )
    with torch.inference_mode():
        for s in range(0, len(ids), 64):
            idx = order[s : s + 64]
            a, m = pad_batch([ids[i] for i in idx], tok.pad_token_id)
            o = model(input_ids=a, attention_mask=m)
            M[idx] = mean_pool(o.last_hidden_state, m).numpy()
            C[idx] = o.last_hidden_state[:, 0].numpy()
            P[idx] = o.pooler_output.numpy()
    out[f"{split}_mean"], out[f"{split}_cls"], out[f"{split}_pooler"], out[f"{split}_y"] = M, C, P, y
    print(
        split, len(ids), "majority", round(max(np.mean(y), 1 - np.mean(y)), 4), f"{time.time() - t0:.0f}s", flush=True
    )
print(load_stamp())
np.savez(os.path.join(os.path.dirname(os.path.abspath(__file__)), "feats.npz"), **out)
