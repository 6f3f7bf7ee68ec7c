#!/usr/bin/env python3
"""Seed corpora for the fuzz harnesses: small real files from tests/data, plus what tests/data has no small file
of (the data.pkl records of the torch fixtures, a tiny CLIP vocabulary, manifest lines). Standard library only.

Usage: fuzz/make_seeds.py OUT_DIR      writes OUT_DIR/<harness>/<file> (existing files are kept)
"""
import glob
import gzip
import json
import os
import shutil
import struct
import sys
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "tests", "data")
SMALL = 64 * 1024

FILES = {
    "safetensors": ["adamw/*.safetensors", "torch/expected.safetensors", "ddim/io.safetensors", "unet/io.safetensors"],
    "checkpoint": ["torch/*.pt", "torch/*.pth", "torch/*.ckpt", "torch/expected.safetensors"],
    "config": ["*/config.json", "ddim/variant_configs.json", "tiny_pipeline/single_file_config.json",
               "tiny_pipeline/diffusers/*/config.json", "tiny_pipeline/diffusers/*/scheduler_config.json"],
    "image": ["images/*.jpg", "long-masks/*.png", "magnetic-tile/masks/*.png", "magnetic-tile-cracks/masks/*.png",
              "magnetic-tile/ng/crack_000.png"],
}


def bytes_to_unicode():
    """GPT-2 / CLIP's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write(out, harness, name, data):
    os.makedirs(os.path.join(out, harness), exist_ok=True)
    with open(os.path.join(out, harness, name), "wb") as f:
        f.write(data)


def main():
    out = sys.argv[1]
    for harness, patterns in FILES.items():
        for pattern in patterns:
            for path in sorted(glob.glob(os.path.join(DATA, pattern))):
                if os.path.getsize(path) <= SMALL:
                    name = os.path.relpath(path, DATA).replace("/", "_")
                    os.makedirs(os.path.join(out, harness), exist_ok=True)
                    shutil.copyfile(path, os.path.join(out, harness, name))
    # pickle: the data.pkl record of every zip fixture
    for path in sorted(glob.glob(os.path.join(DATA, "torch", "*.p*")) + glob.glob(os.path.join(DATA, "torch", "*.ckpt"))):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for n in z.namelist():
                    if n.endswith("data.pkl"):
                        write(out, "pickle", os.path.basename(path) + ".pkl", z.read(n))
    # tokenizer: vocab.json NUL merges.txt (the harness's split), with the 512 byte symbols and a few merges;
    # and a gzip'ed merges file (too short to be accepted, but it exercises the inflater and the line parser)
    syms = bytes_to_unicode()
    vocab = syms + [s + "</w>" for s in syms]
    merges = ["a t", "t h", "th e</w>", "c a", "ca t</w>", "p h", "o to</w>", "o f</w>"]
    vocab += [m.replace(" ", "") for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False).encode()
    write(out, "tokenizer", "tiny_folder", vocab_json + b"\0" + ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())
    write(out, "tokenizer", "tiny_merges.gz", gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode(), mtime=0))
    # image: BMPs of every depth the readers take (io/image_bmp.hpp decodes palettes, stb the rest): 1, 4 and 8
    # bits with palettes, 24 bits top-down, 32 bits with BITFIELDS masks, and an OS/2 core header
    def bmp(w, h, bpp, palette, pixels, hsz=40, compression=0, masks=b""):
        head = struct.pack("<iihhI", w, h, 1, bpp, compression) + struct.pack("<IiiII", len(pixels), 2835, 2835, 0, 0)
        if hsz == 12:
            head = struct.pack("<HHHH", w, h, 1, bpp)
        info = struct.pack("<I", hsz) + head + masks
        offset = 14 + len(info) + len(palette)
        return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels
    gray = lambda n: b"".join(bytes([i * 255 // max(1, n - 1)] * 3 + [0]) for i in range(n))
    write(out, "image", "bmp1.bmp", bmp(10, 2, 1, gray(2), b"\xa0\x40\0\0\x01\x80\0\0"))
    write(out, "image", "bmp4.bmp", bmp(3, -2, 4, gray(16), b"\x21\x00\0\0\x3f\xe0\0\0"))
    write(out, "image", "bmp8.bmp", bmp(4, 2, 8, gray(256), bytes(range(8))))
    write(out, "image", "bmp24-topdown.bmp", bmp(2, -2, 24, b"", bytes(range(6)) + b"\0\0" + bytes(range(6, 12)) + b"\0\0"))
    write(out, "image", "bmp32-bitfields.bmp",
          bmp(2, 1, 32, b"", bytes(range(8)), compression=3, masks=struct.pack("<III", 0xFF0000, 0xFF00, 0xFF)))
    write(out, "image", "bmp8-os2.bmp", bmp(4, 1, 8, b"".join(bytes([i, i, i]) for i in range(256)), bytes(range(4)), hsz=12))
    # manifest: whole entries, a torn last line, a wrong type
    line = {"index": 3, "seed": 7, "ok_source": "ok/free_000.png", "image": "images/000003.png",
            "mask": "masks/000003.png", "prompt": "a crack on a magnetic tile", "adapted": True}
    lines = [json.dumps(dict(line, index=i)) for i in range(3)] + [json.dumps(dict(line, index="4")), json.dumps(line)[:40]]
    write(out, "manifest", "manifest.jsonl", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
