#!/usr/bin/python3
"""Golden for autograd::AdamW: torch.optim.AdamW on fixed parameters and gradients.

Writes tests/data/adamw/adamw.safetensors (dev-time only; the tests read the file, not Python). Needs torch
(Debian: apt-get install -y python3-torch, for /usr/bin/python3) and numpy.

Two parameters, p1 [3, 5] and p2 [7], five steps with fixed gradients, in float32 and float64, for two
hyper-parameter sets with weight decay on:
  custom:  lr 0.01, betas (0.8, 0.95), eps 1e-6, weight_decay 0.1
  default: torch's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01)
In both, p2 has no gradient at step index 2 (grad.p2.2 is absent), so torch skips it there and its step count
falls behind p1's.
Tensors:
  p1.init, p2.init (F64, exactly representable in float32), grad.<p>.<k> (F64, k = 0..4; grad.p2.2 absent)
  <case>.<f32|f64>.<p>.step<k>      parameter after step k = 1..5
  <case>.<f32|f64>.exp_avg.<p>, <case>.<f32|f64>.exp_avg_sq.<p>   the moments after the last step
The metadata holds the hyper-parameters and torch's version.
"""
import json
import os
import struct

import numpy as np
import torch

STEPS = 5
CASES = {
    "custom": dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    "default": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
}
SKIP = {("p2", 2)}  # (param, step index) without a gradient


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    dtypes = {np.dtype("float32"): "F32", np.dtype("float64"): "F64"}
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()  # little-endian on every machine torch runs on
        header[name] = {"dtype": dtypes[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    rng = np.random.default_rng(20240229)
    init = {"p1": rng.standard_normal((3, 5)).astype(np.float32), "p2": rng.standard_normal(7).astype(np.float32)}
    # Gradients of varied scale (one step large) so that the bias corrections and eps all matter.
    grads = {
        name: [(rng.standard_normal(v.shape) * (10.0 if k == 1 else 0.5)).astype(np.float32) for k in range(STEPS)]
        for name, v in init.items()
    }
    out = {f"{n}.init": v.astype(np.float64) for n, v in init.items()}
    for n in init:
        for k in range(STEPS):
            if (n, k) not in SKIP:
                out[f"grad.{n}.{k}"] = grads[n][k].astype(np.float64)
    for case, hp in CASES.items():
        for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
            params = {n: torch.tensor(v, dtype=dtype, requires_grad=True) for n, v in init.items()}
            opt = torch.optim.AdamW(list(params.values()), **hp)
            for k in range(STEPS):
                opt.zero_grad(set_to_none=True)
                for n, p in params.items():
                    if (n, k) not in SKIP:
                        p.grad = torch.tensor(grads[n][k], dtype=dtype)
                opt.step()
                for n, p in params.items():
                    out[f"{case}.{tag}.{n}.step{k + 1}"] = p.detach().numpy().copy()
            for n, p in params.items():
                state = opt.state[p]
                out[f"{case}.{tag}.exp_avg.{n}"] = state["exp_avg"].numpy().copy()
                out[f"{case}.{tag}.exp_avg_sq.{n}"] = state["exp_avg_sq"].numpy().copy()
    meta = {"generator": "scripts/gen_adamw_golden.py", "torch": torch.__version__,
            "cases": json.dumps({c: dict(hp, betas=list(hp["betas"])) for c, hp in CASES.items()})}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "adamw", "adamw.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_safetensors(path, out, meta)
    print(f"wrote {os.path.normpath(path)}: {len(out)} tensors")


if __name__ == "__main__":
    main()
