#!/usr/bin/env python3
"""PyTorch reference timings for benchmarks/gpu_check.sh: the SD1.5 UNet step (batch 2, CFG) and the VAE encode /
decode at 256 and 512, random weights, in float16 and float32 with SDPA attention, measured like bench_gpu (CUDA
events around repetitions after warm-up runs). Prints "RESULT <key> <seconds>" lines with bench_gpu's keys.

Uses diffusers' UNet2DConditionModel / AutoencoderKL when `import diffusers` works, else the same architectures
written below in plain torch (SD1.5's UNet and VAE, module for module; the weights are random, so only the
computation matters). A missing PyTorch or GPU is reported, never fatal.
    torch_ref.py [--quick]
"""
import sys


def main() -> int:
    quick = "--quick" in sys.argv
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import problem means "no reference"
        print(f"torch_ref: PyTorch not importable ({e}); no PyTorch comparison")
        return 0
    if not torch.cuda.is_available():
        print("torch_ref: torch.cuda.is_available() is False; no PyTorch comparison")
        return 0
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
        have_diffusers = True
    except Exception as e:  # noqa: BLE001
        print(f"torch_ref: diffusers not importable ({e}); using the plain-torch SD1.5 UNet and VAE below")
        have_diffusers = False

    torch.backends.cuda.matmul.allow_tf32 = False  # bench_gpu's default: TF32 off for float32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    warmup, reps = 2, (2 if quick else 5)

    def time_it(fn):
        for _ in range(warmup):
            fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1000.0 / reps

    def report(key, fn):
        try:
            print(f"RESULT {key} {time_it(fn):.6f}", flush=True)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory in float32 at 512
            print(f"torch_ref: {key} failed: {e}", flush=True)

    torch.manual_seed(0)
    dev = "cuda"
    sizes = [256] if quick else [256, 512]
    for dtype, tn in ((torch.float16, "f16"), (torch.float32, "f32")):
        if have_diffusers:
            from diffusers import AutoencoderKL, UNet2DConditionModel
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8).to(dev, dtype).eval()
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=512).to(dev, dtype).eval()
            run_unet = lambda z, t, c: unet(z, t, encoder_hidden_states=c, return_dict=False)  # noqa: E731
            run_encode = lambda x: vae.quant_conv(vae.encoder(x))  # noqa: E731
            run_decode = lambda z: vae.decode(z, return_dict=False)  # noqa: E731
        else:
            plain = plain_modules(torch)
            unet = plain.UNet().to(dev, dtype).eval()
            vae = plain.VAE().to(dev, dtype).eval()
            run_unet, run_encode, run_decode = unet, vae.encode, vae.decode
        for S in sizes:
            s = S // 8
            z2 = torch.randn(2, 4, s, s, device=dev, dtype=dtype)
            ctx2 = torch.randn(2, 77, 768, device=dev, dtype=dtype)
            t = torch.tensor([500.0], device=dev)
            image = torch.rand(1, 3, S, S, device=dev, dtype=dtype) * 2 - 1
            latent = torch.randn(1, 4, s, s, device=dev, dtype=dtype)
            with torch.inference_mode():
                report(f"unet_{tn}_{S}", lambda: run_unet(z2, t, ctx2))
                report(f"vae_encode_{tn}_{S}", lambda: run_encode(image))
                report(f"vae_decode_{tn}_{S}", lambda: run_decode(latent))
        del unet, vae
        torch.cuda.empty_cache()
    return 0


def plain_modules(torch):
    """SD1.5's UNet2DConditionModel and AutoencoderKL in plain torch (diffusers' structure, random weights)."""
    import math
    from types import SimpleNamespace

    nn, F = torch.nn, torch.nn.functional

    class Resnet(nn.Module):
        def __init__(self, cin, cout, temb=None, eps=1e-5):
            super().__init__()
            self.norm1, self.conv1 = nn.GroupNorm(32, cin, eps), nn.Conv2d(cin, cout, 3, padding=1)
            self.temb = nn.Linear(temb, cout) if temb else None
            self.norm2, self.conv2 = nn.GroupNorm(32, cout, eps), nn.Conv2d(cout, cout, 3, padding=1)
            self.short = nn.Conv2d(cin, cout, 1) if cin != cout else None

        def forward(self, x, temb=None):
            h = self.conv1(F.silu(self.norm1(x)))
            if self.temb is not None:
                h = h + self.temb(F.silu(temb))[:, :, None, None]
            h = self.conv2(F.silu(self.norm2(h)))
            return (self.short(x) if self.short is not None else x) + h

    class Attention(nn.Module):
        def __init__(self, dim, ctx_dim, heads, bias=False):
            super().__init__()
            self.heads = heads
            self.q, self.k = nn.Linear(dim, dim, bias=bias), nn.Linear(ctx_dim, dim, bias=bias)
            self.v, self.out = nn.Linear(ctx_dim, dim, bias=bias), nn.Linear(dim, dim)

        def forward(self, x, ctx=None):
            ctx = x if ctx is None else ctx
            B, L, C = x.shape
            split = lambda t: t.view(B, -1, self.heads, C // self.heads).transpose(1, 2)  # noqa: E731
            o = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(ctx)), split(self.v(ctx)))
            return self.out(o.transpose(1, 2).reshape(B, L, C))

    class Transformer(nn.Module):
        def __init__(self, ch, heads=8, ctx_dim=768):
            super().__init__()
            self.norm, self.proj_in = nn.GroupNorm(32, ch, 1e-6), nn.Conv2d(ch, ch, 1)
            self.n1, self.a1 = nn.LayerNorm(ch), Attention(ch, ch, heads)
            self.n2, self.a2 = nn.LayerNorm(ch), Attention(ch, ctx_dim, heads)
            self.n3, self.ff_in, self.ff_out = nn.LayerNorm(ch), nn.Linear(ch, 8 * ch), nn.Linear(4 * ch, ch)
            self.proj_out = nn.Conv2d(ch, ch, 1)

        def forward(self, x, ctx):
            B, C, H, W = x.shape
            h = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, C)
            h = h + self.a1(self.n1(h))
            h = h + self.a2(self.n2(h), ctx)
            a, gate = self.ff_in(self.n3(h)).chunk(2, dim=-1)
            h = h + self.ff_out(a * F.gelu(gate))
            return self.proj_out(h.reshape(B, H, W, C).permute(0, 3, 1, 2)) + x

    class UNet(nn.Module):
        def __init__(self, ch=(320, 640, 1280, 1280), attn=(True, True, True, False)):
            super().__init__()
            T = 4 * ch[0]
            self.t1, self.t2 = nn.Linear(ch[0], T), nn.Linear(T, T)
            self.conv_in = nn.Conv2d(4, ch[0], 3, padding=1)
            self.down, skips, cin = nn.ModuleList(), [ch[0]], ch[0]
            for i, c in enumerate(ch):
                blk = nn.ModuleDict({"res": nn.ModuleList(), "attn": nn.ModuleList()})
                for _ in range(2):
                    blk["res"].append(Resnet(cin, c, T))
                    if attn[i]:
                        blk["attn"].append(Transformer(c))
                    cin = c
                    skips.append(c)
                if i + 1 < len(ch):
                    blk["down"] = nn.Conv2d(c, c, 3, stride=2, padding=1)
                    skips.append(c)
                self.down.append(blk)
            self.mid1, self.mid_attn, self.mid2 = Resnet(cin, cin, T), Transformer(cin), Resnet(cin, cin, T)
            self.up = nn.ModuleList()
            for i, c in enumerate(reversed(ch)):
                blk = nn.ModuleDict({"res": nn.ModuleList(), "attn": nn.ModuleList()})
                for _ in range(3):
                    blk["res"].append(Resnet(cin + skips.pop(), c, T))
                    if list(reversed(attn))[i]:
                        blk["attn"].append(Transformer(c))
                    cin = c
                if i + 1 < len(ch):
                    blk["upconv"] = nn.Conv2d(c, c, 3, padding=1)
                self.up.append(blk)
            self.norm_out, self.conv_out = nn.GroupNorm(32, ch[0]), nn.Conv2d(ch[0], 4, 3, padding=1)
            self.proj_dim = ch[0]

        def forward(self, x, t, ctx):
            half = self.proj_dim // 2
            freq = torch.exp(-math.log(10000) * torch.arange(half, device=x.device) / half)
            arg = t.float()[:, None] * freq[None]
            emb = torch.cat([arg.cos(), arg.sin()], dim=-1).to(x.dtype).expand(x.shape[0], -1)
            temb = self.t2(F.silu(self.t1(emb)))
            h = self.conv_in(x)
            skips = [h]
            for blk in self.down:
                for j, res in enumerate(blk["res"]):
                    h = res(h, temb)
                    if len(blk["attn"]):
                        h = blk["attn"][j](h, ctx)
                    skips.append(h)
                if "down" in blk:
                    h = blk["down"](h)
                    skips.append(h)
            h = self.mid2(self.mid_attn(self.mid1(h, temb), ctx), temb)
            for blk in self.up:
                for j, res in enumerate(blk["res"]):
                    h = res(torch.cat([h, skips.pop()], dim=1), temb)
                    if len(blk["attn"]):
                        h = blk["attn"][j](h, ctx)
                if "upconv" in blk:
                    h = blk["upconv"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            return self.conv_out(F.silu(self.norm_out(h)))

    class VaeAttention(nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.norm, self.attn = nn.GroupNorm(32, ch, 1e-6), Attention(ch, ch, 1, bias=True)

        def forward(self, x):
            B, C, H, W = x.shape
            h = self.attn(self.norm(x).view(B, C, H * W).transpose(1, 2))
            return x + h.transpose(1, 2).reshape(B, C, H, W)

    class VAE(nn.Module):
        def __init__(self, ch=(128, 256, 512, 512)):
            super().__init__()
            e = 1e-6
            self.enc_in, layers, cin = nn.Conv2d(3, ch[0], 3, padding=1), [], ch[0]
            for i, c in enumerate(ch):
                layers += [Resnet(cin, c, eps=e), Resnet(c, c, eps=e)]
                cin = c
                if i + 1 < len(ch):
                    layers.append(nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c, c, 3, stride=2)))
            self.enc = nn.ModuleList(layers)
            self.enc_mid = nn.ModuleList([Resnet(cin, cin, eps=e), VaeAttention(cin), Resnet(cin, cin, eps=e)])
            self.enc_norm, self.enc_out = nn.GroupNorm(32, cin, e), nn.Conv2d(cin, 8, 3, padding=1)
            self.quant = nn.Conv2d(8, 8, 1)
            self.post_quant, self.dec_in = nn.Conv2d(4, 4, 1), nn.Conv2d(4, ch[-1], 3, padding=1)
            cin = ch[-1]
            self.dec_mid = nn.ModuleList([Resnet(cin, cin, eps=e), VaeAttention(cin), Resnet(cin, cin, eps=e)])
            layers = []
            for i, c in enumerate(reversed(ch)):
                layers += [Resnet(cin, c, eps=e), Resnet(c, c, eps=e), Resnet(c, c, eps=e)]
                cin = c
                if i + 1 < len(ch):
                    layers.append(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                                nn.Conv2d(c, c, 3, padding=1)))
            self.dec = nn.ModuleList(layers)
            self.dec_norm, self.dec_out = nn.GroupNorm(32, cin, e), nn.Conv2d(cin, 3, 3, padding=1)

        def encode(self, x):
            h = self.enc_in(x)
            for m in list(self.enc) + list(self.enc_mid):
                h = m(h)
            return self.quant(self.enc_out(F.silu(self.enc_norm(h))))

        def decode(self, z):
            h = self.dec_in(self.post_quant(z))
            for m in list(self.dec_mid) + list(self.dec):
                h = m(h)
            return self.dec_out(F.silu(self.dec_norm(h)))

    return SimpleNamespace(UNet=UNet, VAE=VAE)


if __name__ == "__main__":
    sys.exit(main())
