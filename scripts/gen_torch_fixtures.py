#!/usr/bin/env python3
"""Writes the PyTorch checkpoint fixtures of tests/test_torch_checkpoint.cpp into tests/data/torch/.

A development tool only (the tests read the committed files and need no Python). The output is deterministic
except legacy.pt, whose storage keys are object ids. It needs PyTorch >= 1.6; the
committed files were made with Debian's python3-torch 1.13 (`apt-get install python3-torch`, /usr/bin/python3):

    /usr/bin/python3 scripts/gen_torch_fixtures.py

Besides the checkpoints it writes expected.safetensors (every tensor the C++ reader must return, named
"<fixture>/<tensor>", contiguous, with a small pure-Python safetensors writer) and expected.json (the tensor-free
facts: metadata and which files must be refused).

The malicious_*.pt files call os.system / builtins.eval / subprocess.Popen when loaded with torch.load (the
command only touches /tmp/adabldm_malicious_fixture_ran). This script never loads them.
"""
import argparse
import collections
import enum
import json
import os
import struct
import subprocess
import sys
import zipfile

import torch
import torch.nn as nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "torch")
MARKER = "/tmp/adabldm_malicious_fixture_ran"

expected_tensors = {}  # "<fixture>/<name>" -> tensor
expected_facts = {}  # fixture -> dict


def expect(fixture, state_dict, prefix=""):
    """Records every tensor of a (possibly nested) dict under the names the C++ reader must produce."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            expected_tensors[f"{fixture}/{prefix}{key}"] = value.detach()
        elif isinstance(value, dict):
            expect(fixture, value, f"{prefix}{key}.")


def save(obj, fixture, **kwargs):
    path = os.path.join(OUT, fixture)
    torch.save(obj, path, **kwargs)
    return path


# ---- plain state dict: every dtype, views, shared storages, a parameter -----------------------------------------
def plain_state_dict(g):
    base = torch.arange(24, dtype=torch.float32) / 4 - 2
    matrix = torch.randn(3, 5, generator=g)
    sd = {
        "f32": torch.randn(2, 3, generator=g),
        "f16": torch.randn(4, generator=g).to(torch.float16),
        "bf16": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "i64": torch.tensor([1, -2, 3, 2**40], dtype=torch.int64),
        "i32": torch.tensor([7, -8, 9], dtype=torch.int32),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True]),
        "scalar": torch.tensor(3.5),  # 0-d
        "empty": torch.zeros(0, 4),
        "matrix": matrix,
        "matrix_t": matrix.t(),  # non-contiguous view of the same storage, saved as-is
        "every_other": base[::2],  # strided 1-d view
        "window": base[5:11],  # contiguous view at storage offset 5
        "window_2d": base.view(4, 6)[1:3, 2:5],  # non-contiguous view at an offset
        "base": base,  # shares its storage with the three views above
        "param": nn.Parameter(torch.randn(3, generator=g)),  # pickled via _rebuild_parameter
        "expanded": torch.randn(3, 1, generator=g).expand(3, 4),  # stride 0
    }
    assert not sd["matrix_t"].is_contiguous() and sd["window"].storage_offset() == 5
    return sd


# ---- a PyTorch Lightning style .ckpt --------------------------------------------------------------------------
class HarmlessCallbackState:
    """Stands for a callback or config class a training script defines: not on any allow-list."""

    def __init__(self, monitor, best):
        self.monitor = monitor
        self.best = best
        self.history = [1, 2, 3]


class AttributeDict(dict):
    """Like Lightning's AttributeDict: a dict subclass (pickled with NEWOBJ + SETITEMS)."""


class Schedule(enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"


def make_harmless(a, b):
    return (a, b)


class HarmlessReduce:
    """A class whose __reduce__ names a module-level function of the training script."""

    def __reduce__(self):
        return (make_harmless, (1, "two"))


def lightning_checkpoint(g):
    unet = nn.Conv2d(4, 4, 3)
    sd = collections.OrderedDict()
    sd["model.diffusion_model.input_blocks.0.0.weight"] = unet.weight.detach().clone()
    sd["model.diffusion_model.input_blocks.0.0.bias"] = unet.bias.detach().clone()
    sd["first_stage_model.encoder.conv_in.weight"] = torch.randn(2, 3, 1, 1, generator=g).half()
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(6).unsqueeze(0)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(10, dtype=torch.int32)
    sd["betas"] = torch.linspace(1e-4, 2e-2, 8, dtype=torch.float64).float()

    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    unet(torch.randn(1, 4, 5, 5, generator=g)).sum().backward()
    opt.step()
    hparams = AttributeDict(lr=1e-4, unet_config={"in_channels": 4, "attention_resolutions": [4, 2]},
                            schedule=Schedule.COSINE)
    ckpt = {
        "epoch": 3,
        "global_step": 10,
        "pytorch-lightning_version": "1.9.5",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": HarmlessCallbackState("val/loss", 0.25),
            "Other": HarmlessReduce(),
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"last_epoch": 3, "_last_lr": [1e-4], "base_lrs": [1e-4]}],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
        "extras": {
            "device": torch.device("cpu"),
            "dtype": torch.float16,
            "size": torch.Size([2, 3]),
            "namespace": argparse.Namespace(seed=23, name="run"),
            "set": {1, 2, 3},
            "frozenset": frozenset({"a"}),
            "bytes": b"\x00\x01raw",
            "big": 2**70,
            "negative": -5,
            "ratio": 0.5,
            "none": None,
            "flags": (True, False),
        },
        "best_score": 0.125,
        "is_ema": True,
    }
    return ckpt, sd


# ---- an nn.Module state dict (OrderedDict with _metadata), BatchNorm's 0-d int64 counter ------------------------
def module_state_dict():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.GroupNorm(2, 4),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    model.train()
    model(torch.randn(2, 3, 2, 2))  # updates BatchNorm's running stats and num_batches_tracked
    sd = model.state_dict()
    assert hasattr(sd, "_metadata")
    return sd


# ---- malicious pickles laid out like torch.save ------------------------------------------------------------------
class CallsOsSystem:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class CallsEval:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {MARKER}')",))


class CallsPopen:
    def __reduce__(self):
        return (subprocess.Popen, (["touch", MARKER],))


# ---- expected values ---------------------------------------------------------------------------------------------
def write_safetensors(path, tensors):
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def rezip_deflated(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            out = zipfile.ZipInfo(info.filename.replace("plain/", "deflated/", 1), date_time=(2024, 1, 1, 0, 0, 0))
            out.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(out, zin.read(info.filename))


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)  # module initialisation uses the global generator
    g = torch.Generator().manual_seed(1234)

    sd = plain_state_dict(g)
    save(sd, "plain.pt")
    expect("plain.pt", sd)
    expected_facts["plain.pt"] = {"metadata": {}}

    rezip_deflated(os.path.join(OUT, "plain.pt"), os.path.join(OUT, "deflated.pth"))
    back = torch.load(os.path.join(OUT, "deflated.pth"))  # torch itself reads the deflated archive
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    expect("deflated.pth", sd)
    expected_facts["deflated.pth"] = {"metadata": {}}

    ckpt, ckpt_sd = lightning_checkpoint(g)
    save(ckpt, "lightning.ckpt")
    expect("lightning.ckpt", ckpt_sd)
    expected_facts["lightning.ckpt"] = {"metadata": {"epoch": "3", "global_step": "10",
                                                     "pytorch-lightning_version": "1.9.5", "hparams_name": "kwargs",
                                                     "best_score": "0.125", "is_ema": "True"}}

    msd = module_state_dict()
    save(msd, "module_state_dict.pt")
    expect("module_state_dict.pt", msd)
    expected_facts["module_state_dict.pt"] = {"metadata": {}}

    # {'model': ..., 'optimizer': ...} wrapper, pickle protocol 5 (SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, FRAME)
    lin = nn.Linear(3, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    lin(torch.randn(4, 3, generator=g)).sum().backward()
    opt.step()
    save({"model": lin.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}, "wrapped_proto5.pth",
         pickle_protocol=5)
    expect("wrapped_proto5.pth", lin.state_dict())
    expected_facts["wrapped_proto5.pth"] = {"metadata": {"epoch": "7"}}

    # nested dicts without a wrapper key, protocol 4: flattened with '.'
    nested = {"encoder": {"conv": {"weight": torch.randn(2, 2, generator=g)}, "scale": torch.tensor([2.0])},
              "decoder": {"bias": torch.randn(2, generator=g).to(torch.bfloat16)}, "note": "taesd-like"}
    save(nested, "nested_proto4.pt", pickle_protocol=4)
    expect("nested_proto4.pt", nested)
    expected_facts["nested_proto4.pt"] = {"metadata": {"note": "taesd-like"}}

    for fixture, cls, proto, needle in [("malicious_os_system.pt", CallsOsSystem, 2, "posix.system"),
                                        ("malicious_eval_proto4.pt", CallsEval, 4, "builtins.eval"),
                                        ("malicious_popen.pt", CallsPopen, 2, "subprocess.Popen")]:
        save({"state_dict": {"w": torch.ones(2), "payload": cls()}}, fixture, pickle_protocol=proto)
        expected_facts[fixture] = {"refused": needle}

    save({"w": torch.ones(2)}, "legacy.pt", _use_new_zipfile_serialization=False)
    expected_facts["legacy.pt"] = {"refused": "legacy"}

    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), os.path.join(OUT, "torchscript.pt"))
    expected_facts["torchscript.pt"] = {"refused": "TorchScript"}

    write_safetensors(os.path.join(OUT, "expected.safetensors"), expected_tensors)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"torch_version": torch.__version__, "fixtures": expected_facts}, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{len(expected_facts)} fixtures, {len(expected_tensors)} expected tensors, {total} bytes in {OUT}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
