"""Train the issue's DCGAN 28x28 generator (the TensorFlow-tutorial architecture, in PyTorch) on scikit-learn's
offline 8x8 digits, so the optimization benchmark (bench/bench_optimize.py --dcgan28-weights PATH) can measure
the methods on TRAINED weights of that architecture rather than random ones.

Generator (one ``nn.Sequential``, which :func:`pyquant.from_torch` imports)::

    z (100) -> Linear(100, 7*7*256, bias=False) -> BatchNorm1d -> LeakyReLU(0.2) -> Unflatten (256, 7, 7)
      -> ConvTranspose2d(256, 128, 5, stride 1, padding 2, bias=False) -> BatchNorm2d -> LeakyReLU(0.2)
      -> ConvTranspose2d(128, 64, 5, stride 2, padding 2, output_padding 1, bias=False) -> BatchNorm2d -> LeakyReLU
      -> ConvTranspose2d(64, 1, 5, stride 2, padding 2, output_padding 1) -> Tanh          (B, 1, 28, 28)

Data: the 1797 digits of ``sklearn.datasets.load_digits`` (ships with scikit-learn: nothing is downloaded),
upsampled bicubically from 8x8 to 28x28 and scaled to [-1, 1]. Discriminator: a small spectral-norm conv net
(training only, not saved). Recipe: DCGAN (Adam 2e-4, betas (0.5, 0.999), non-saturating BCE with logits,
one-sided label smoothing 0.9).

Deterministic: python / numpy / torch seeded, ``torch.use_deterministic_algorithms(True)``, one seeded stream
for shuffling and latents. The wall-time budget (``--time-budget``) only decides WHEN to stop, at an epoch
boundary; the number of epochs trained is printed and written next to the weights (``.json``), and
``--epochs N --time-budget 0`` reproduces the same weights on the same machine and torch build. It is not meant
to be a great GAN: a few minutes of training on one thread give weights with a trained network's structure
(correlated filters, BatchNorm statistics of real activations) for the compression benchmarks.

After training the BatchNorm running statistics are recomputed as an exact (cumulative) average over many
latent batches in train mode (as pyquant/data/train_builtin.py does): the moving average training leaves behind
lags the generator's fast-moving weights.

    python bench/train_dcgan28.py --threads 1 [--time-budget 300] [--out ~/.cache/pyquant/dcgan28_digits.pt]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# the DCGAN initialisation, training step and exact BatchNorm recomputation of the built-in generator's script
from pyquant.data.train_builtin import gan_step, init_weights, recalibrate_batchnorm

LATENT_DIM = 100
SIZE = 28
DEFAULT_OUT = Path.home() / ".cache" / "pyquant" / "dcgan28_digits.pt"


def build_generator() -> nn.Sequential:
    """The DCGAN 28x28 generator: z (B, 100) -> images (B, 1, 28, 28) in [-1, 1]."""
    return nn.Sequential(
        nn.Linear(LATENT_DIM, 7 * 7 * 256, bias=False),
        nn.BatchNorm1d(7 * 7 * 256),
        nn.LeakyReLU(0.2),
        nn.Unflatten(1, (256, 7, 7)),
        nn.ConvTranspose2d(256, 128, 5, stride=1, padding=2, bias=False),                    # 7 -> 7
        nn.BatchNorm2d(128),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(128, 64, 5, stride=2, padding=2, output_padding=1, bias=False),   # 7 -> 14
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(64, 1, 5, stride=2, padding=2, output_padding=1),                 # 14 -> 28
        nn.Tanh(),
    )


def build_discriminator() -> nn.Sequential:
    """Training-only discriminator: 28 -> 14 -> 7 conv net with spectral norm (keeps a small D from overfitting
    1797 images and its gradients bounded), logits (B, 1)."""
    sn = nn.utils.spectral_norm
    return nn.Sequential(
        sn(nn.Conv2d(1, 32, 4, stride=2, padding=1)),    # 28 -> 14
        nn.LeakyReLU(0.2),
        sn(nn.Conv2d(32, 64, 4, stride=2, padding=1)),   # 14 -> 7
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        sn(nn.Linear(64 * 7 * 7, 1)),
    )


def load_digits_28() -> torch.Tensor:
    """scikit-learn's digits as float32 (1797, 1, 28, 28) in [-1, 1] (bicubic upsampling, clamped)."""
    from sklearn.datasets import load_digits
    x = torch.from_numpy(load_digits().images.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0  # 0..16 -> -1..1
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return x.clamp_(-1.0, 1.0).contiguous()


def quality(gen: nn.Sequential, seed: int, n: int = 1000) -> dict:
    """A rough quality check: a logistic regression trained on the real 8x8 digits classifies ``n`` samples
    downsampled to 8x8. A spread histogram and a mean max-probability near the real images' mean the samples
    look like digits; a collapsed histogram means mode collapse."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    d = load_digits()
    clf = LogisticRegression(max_iter=5000).fit(d.data, d.target)

    def to8(x):  # 28 -> 8 by area interpolation, back to sklearn's 0..16
        return ((F.interpolate(x, size=(8, 8), mode="area") + 1.0) * 8.0).clamp(0, 16).reshape(len(x), 64).numpy()

    with torch.no_grad():
        fake = gen.eval()(torch.randn(n, LATENT_DIM, generator=torch.Generator().manual_seed(seed + 1)))
    out = {}
    for name, x in (("generated", to8(fake)), ("real", to8(load_digits_28()))):
        p = clf.predict_proba(x)
        out[name] = dict(mean_max_prob=round(float(p.max(1).mean()), 3),
                         histogram=np.bincount(p.argmax(1), minlength=10).tolist())
        print(f"{name:>10}: mean max-prob {out[name]['mean_max_prob']:.3f}  predicted classes 0..9 "
              f"{out[name]['histogram']}")
    return out


def train(args) -> tuple:
    """DCGAN training until ``args.epochs`` or, at an epoch boundary, past ``args.time_budget`` seconds.
    Returns (generator, epochs trained, training seconds)."""
    data = load_digits_28()
    gen, disc = build_generator(), build_discriminator()
    gen.apply(init_weights)
    disc.apply(init_weights)
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    rng = torch.Generator().manual_seed(args.seed)
    n, bs = data.shape[0], args.batch_size
    steps = n // bs  # the last partial batch is dropped: BatchNorm statistics of tiny batches are noisy
    print(f"data {tuple(data.shape)}, generator {sum(p.numel() for p in gen.parameters()):,} parameters, "
          f"discriminator {sum(p.numel() for p in disc.parameters()):,}; {steps} steps per epoch", flush=True)
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(n, generator=rng)
        sd = sg = 0.0
        gen.train()
        disc.train()
        for s in range(steps):
            real = data[perm[s * bs:(s + 1) * bs]]
            loss_d, loss_g, _, _ = gan_step(gen, disc, opt_g, opt_d, bce, real, torch.randn(bs, LATENT_DIM, generator=rng))
            sd += loss_d.item()
            sg += loss_g.item()
        el = time.perf_counter() - t0
        print(f"epoch {epoch:3d}  loss_d {sd / steps:.3f}  loss_g {sg / steps:.3f}  elapsed {el:6.1f} s", flush=True)
        if args.time_budget > 0 and el >= args.time_budget:
            print(f"time budget of {args.time_budget:.0f} s reached after epoch {epoch}")
            break
    return gen, epoch, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"state_dict path (default {DEFAULT_OUT})")
    p.add_argument("--epochs", type=int, default=200, help="at most this many epochs")
    p.add_argument("--time-budget", type=float, default=300.0,
                   help="stop at the first epoch boundary after this many seconds (0: no budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--bn-batches", type=int, default=40, help="latent batches (of 256) for the BN recomputation")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    gen, epochs, secs = train(args)
    recalibrate_batchnorm(gen, LATENT_DIM, args.bn_batches, 256, args.seed + 2)
    q = quality(gen, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(gen.state_dict(), args.out)
    meta = dict(epochs=epochs, train_seconds=round(secs, 1), seed=args.seed, threads=args.threads,
                batch_size=args.batch_size, lr=args.lr, bn_batches=args.bn_batches, torch=torch.__version__,
                reproduce=f"--epochs {epochs} --time-budget 0 --seed {args.seed} --threads {args.threads}",
                quality=q)
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) after {epochs} epochs, {secs:.0f} s; "
          f"reproduce with {meta['reproduce']}")


if __name__ == "__main__":
    main()
