#!/usr/bin/python3
"""PyTorch-CPU peer timing of ONE decoder-adaptation iteration (AdaBLDM's online decoder adaptation, issue 13).

The PyTorch side of `bench_sd15_cpu --component adapt`: diffusers' VAE Decoder with SD1.5's shapes and random
weights (PyTorch's default initialisation), one iteration = decoder forward on a [1, 4, res, res] latent, MSE
against a random image in [-1, 1], backward, torch.optim.AdamW step (lr 1e-4, weight decay 0.01, as
defect::adapt_decoder) on every decoder parameter, zero_grad. post_quant_conv is not part of it (the pipeline
freezes it and applies it once).

Run by benchmarks/compare_pytorch.sh next to ../shared/peer-bench/peer_torch_bench.py, whose set-up it shares
(Debian's python3-torch, $PEERS/diffusers at v0.21.4, $PEERS/huggingface_hub at v0.17.3; that directory's
README.md) and whose FLOP counter and SD1.5 VAE config it imports. One component per process; prints one line
`RESULT {json}` in that script's format, plus peak_rss_gb (this process's peak resident memory).
  peer_adapt_bench.py --res 32 (latent side; image = 8x) --reps 3 --threads 2 [--peer-bench DIR]
FLOPs: the forward's multiply-adds as peer_torch_bench.py counts them (conv, linear, the two attention matmuls),
times 3 for the iteration (the backward's input and weight gradients cost about twice the forward); GFLOP = 2*MAC.
"""
import argparse, json, os, resource, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", type=int, default=32, help="latent side (image side = 8x)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--label", default="torch")
    ap.add_argument("--peer-bench", default=os.environ.get("PEER_BENCH", os.path.join(HERE, "..", "..", "shared", "peer-bench")),
                    help="the directory of peer_torch_bench.py (its import sets up $PEERS' source trees)")
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.peer_bench))
    import peer_torch_bench as ptb  # puts $PEERS/diffusers/src, $PEERS/huggingface_hub/src, peer_stubs on sys.path
    import torch
    from torch import nn
    from diffusers.models.vae import Decoder

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t_build = time.perf_counter()
    v = ptb.SD15_VAE  # what AutoencoderKL(**SD15_VAE) passes to its Decoder
    decoder = Decoder(in_channels=v["latent_channels"], out_channels=v["out_channels"], up_block_types=v["up_block_types"],
                      block_out_channels=v["block_out_channels"], layers_per_block=v["layers_per_block"],
                      norm_num_groups=v["norm_num_groups"], act_fn=v["act_fn"])
    decoder.train()
    z = torch.randn(1, v["latent_channels"], a.res, a.res)
    target = torch.rand(1, v["out_channels"], a.res * 8, a.res * 8) * 2 - 1
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    t_build = time.perf_counter() - t_build
    nparams = sum(p.numel() for p in decoder.parameters())

    def iteration():
        x = decoder(z)
        loss = nn.functional.mse_loss(x, target)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        return x

    fc = ptb.FlopCounter(decoder)  # counts the warm-up's forward
    t0 = time.perf_counter(); out = iteration(); warm = time.perf_counter() - t0
    fc.remove(decoder)
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter(); out = iteration(); times.append(time.perf_counter() - t0)
    s = sorted(times); med = s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])
    macs = 3 * sum(fc.c.values())
    r = dict(system=a.label, component="adapt", latent=a.res, image=a.res * 8, batch=1, dtype="f32",
             threads=a.threads, params=nparams, build_s=round(t_build, 2), warmup_s=round(warm, 3),
             times_s=[round(t, 4) for t in times], median_s=round(med, 4), min_s=round(s[0], 4), max_s=round(s[-1], 4),
             gmac=round(macs / 1e9, 3), gmac_parts={k: round(3 * c / 1e9, 3) for k, c in fc.c.items()},
             gflops_achieved=round(2 * macs / med / 1e9, 2), out_shape=list(out.shape),
             peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576, 3),
             torch=torch.__version__, blas=os.environ.get("PEER_BLAS", "default libblas.so.3"))
    print("RESULT " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
