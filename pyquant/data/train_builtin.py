"""Train pyquant's built-in GAN generator: a small DCGAN on scikit-learn's 8x8 handwritten digits at 32x32.

The generator is the model pyquant ships as its built-in trained example, so its architecture uses only the
module types pyquant's importer reads (one ``nn.Sequential`` of Linear, BatchNorm1d/2d, LeakyReLU, Unflatten,
ConvTranspose2d and Tanh); ``build_generator`` rebuilds it so the saved ``state_dict`` can be loaded. The
discriminator is only needed for training and is not shipped.

Everything is seeded (torch, numpy, python ``random``, ``torch.use_deterministic_algorithms``) and the data
ships with scikit-learn, so nothing is downloaded and the same command gives the same weights on the same
machine and torch build (torch 2.13.0+cpu here).

After training, the BatchNorm running statistics are recomputed as an exact average over many latent batches:
the exponential moving average that training leaves behind lags the fast-moving generator weights and makes
eval-mode samples worse than train-mode ones.

Outputs: the generator ``state_dict`` (``--out``), a PNG grid of 64 eval-mode samples from fixed latents
(``samples.png`` next to ``--out``), and printed quality numbers: a logistic regression trained on the real 8x8
digits classifies 1000 generated images downsampled back to 8x8; its predicted-class histogram should be spread
over the ten digits and its mean max-probability (confidence) should be near that of real images.

Reproduce (measured on a shared 2-core machine, torch 2.13.0+cpu, 2 threads)::

    python3 pyquant/data/train_builtin.py --epochs 60 --seed 0 --threads 2 --out digits32_generator.pt
    cd /tmp && python3 -c "from pyquant.builtin import export_builtin as e; e('.../digits32_generator.pt', \
        '.../pyquant/data/digits32.pyquant')"

Training time: the shipped weights (pyquant/data/digits32.pyquant) come from that 60-epoch run, which took 39
minutes of wall time on a 2-core machine shared with several builds and test runs (the process had about 60% of
one core); a quiet machine should need well under half of that (not re-measured).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LATENT_DIM = 64
IMAGE_SIZE = 32


def build_generator(latent_dim: int = LATENT_DIM) -> nn.Sequential:
    """Return the built-in generator: z of shape (B, latent_dim) -> image of shape (B, 1, 32, 32) in [-1, 1].

    Layers followed by BatchNorm have no bias (BN's shift makes it redundant; pyquant folds BN either way).
    """
    return nn.Sequential(
        nn.Linear(latent_dim, 256 * 4 * 4, bias=False),
        nn.BatchNorm1d(256 * 4 * 4),
        nn.LeakyReLU(0.2),
        nn.Unflatten(1, (256, 4, 4)),
        nn.ConvTranspose2d(256, 128, 4, stride=2, padding=1, bias=False),  # 4 -> 8
        nn.BatchNorm2d(128),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1, bias=False),  # 8 -> 16
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(64, 1, 4, stride=2, padding=1),  # 16 -> 32
        nn.Tanh(),
    )


def build_discriminator() -> nn.Sequential:
    """Return the training-only discriminator: a small conv net with spectral norm, outputting logits (B, 1).

    Narrower than the generator: it runs three times per step, and a small, Lipschitz-bounded D overfits the
    1797 training images less.
    """
    sn = nn.utils.spectral_norm
    return nn.Sequential(
        sn(nn.Conv2d(1, 32, 4, stride=2, padding=1)),  # 32 -> 16
        nn.LeakyReLU(0.2),
        sn(nn.Conv2d(32, 64, 4, stride=2, padding=1)),  # 16 -> 8
        nn.LeakyReLU(0.2),
        sn(nn.Conv2d(64, 128, 4, stride=2, padding=1)),  # 8 -> 4
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        sn(nn.Linear(128 * 4 * 4, 1)),
    )


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) weights, N(1, 0.02) BN scales, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and make torch use deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_digits_32() -> torch.Tensor:
    """Return scikit-learn's 1797 digits as float32 (N, 1, 32, 32) in [-1, 1] (bicubic upsampling, clamped)."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images.astype(np.float32))  # (N, 8, 8), values 0..16
    x = x.unsqueeze(1) / 8.0 - 1.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False)
    return x.clamp_(-1.0, 1.0).contiguous()


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with background (-1)."""
    if max_shift == 0:
        return x
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]
    return out


@torch.no_grad()
def recalibrate_batchnorm(gen: nn.Sequential, latent_dim: int, batches: int, batch_size: int, seed: int) -> None:
    """Replace the BN running statistics by their exact average over ``batches`` random latent batches.

    Uses momentum=None (cumulative average) in train mode with no gradients, then restores the momentum.
    """
    bns = [m for m in gen.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    g = torch.Generator().manual_seed(seed)
    gen.train()
    for _ in range(batches):
        gen(torch.randn(batch_size, latent_dim, generator=g))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    gen.eval()


def save_grid(images: torch.Tensor, path: Path, scale: int = 3, pad: int = 2) -> None:
    """Save (64, 1, 32, 32) images in [-1, 1] as an 8x8 PNG grid, upscaled ``scale`` times (nearest)."""
    from PIL import Image

    n, _, h, w = images.shape
    cols = 8
    rows = (n + cols - 1) // cols
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 128, dtype=np.uint8)
    pix = ((images[:, 0].clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = pix[i]
    img = Image.fromarray(grid, mode="L")
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def to_digits_8x8(images: torch.Tensor) -> np.ndarray:
    """Downsample (N, 1, 32, 32) images in [-1, 1] to 8x8 by area average, rescaled to sklearn's 0..16 range."""
    small = F.avg_pool2d(images, 4)  # area average over 4x4 blocks
    return ((small + 1.0) * 8.0).clamp(0.0, 16.0).reshape(images.shape[0], 64).numpy()


def quality_report(gen: nn.Sequential, real32: torch.Tensor, latent_dim: int, seed: int, n: int = 1000) -> None:
    """Classify ``n`` eval-mode samples with a logistic regression trained on the real 8x8 digits and print
    the predicted-class histogram and mean max-probability, next to the same numbers for the real images
    (after the same 8x8 -> 32x32 -> 8x8 round trip) as a reference."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    xtr, xte, ytr, yte = train_test_split(digits.data, digits.target, test_size=0.25, random_state=seed)
    clf = LogisticRegression(max_iter=5000)
    clf.fit(xtr, ytr)
    print(f"classifier held-out accuracy on real 8x8 digits: {clf.score(xte, yte):.3f}")
    clf.fit(digits.data, digits.target)

    g = torch.Generator().manual_seed(seed + 1)
    gen.eval()
    with torch.no_grad():
        fake = torch.cat([gen(torch.randn(200, latent_dim, generator=g)) for _ in range((n + 199) // 200)])[:n]
    for name, x in (("generated", to_digits_8x8(fake)), ("real (round trip)", to_digits_8x8(real32))):
        proba = clf.predict_proba(x)
        hist = np.bincount(proba.argmax(1), minlength=10)
        print(f"{name:>18}: n={len(x)}  mean max-prob={proba.max(1).mean():.3f}  "
              f"predicted-class histogram (0..9)={hist.tolist()}")


def gan_step(gen, disc, opt_g, opt_d, bce, real: torch.Tensor, z: torch.Tensor):
    """One DCGAN step: the discriminator (one-sided label smoothing, 0.9, keeps D from getting over-confident),
    then the generator (non-saturating loss) on the same fakes. Returns (loss_d, loss_g, D's logits on the real
    batch, D's logits on the fakes after its step)."""
    fake = gen(z)
    d_real = disc(real)
    d_fake = disc(fake.detach())
    loss_d = bce(d_real, torch.full_like(d_real, 0.9)) + bce(d_fake, torch.zeros_like(d_fake))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    d_fake = disc(fake)
    loss_g = bce(d_fake, torch.ones_like(d_fake))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return loss_d, loss_g, d_real, d_fake


def train(args: argparse.Namespace) -> nn.Sequential:
    """Train the GAN with the DCGAN recipe (Adam 2e-4, betas (0.5, 0.999), non-saturating BCE-with-logits)."""
    data = load_digits_32()
    gen = build_generator(args.latent_dim)
    disc = build_discriminator()
    gen.apply(init_weights)
    disc.apply(init_weights)
    n_g = sum(p.numel() for p in gen.parameters())
    n_d = sum(p.numel() for p in disc.parameters())
    print(f"data {tuple(data.shape)}  generator params {n_g:,}  discriminator params {n_d:,}")

    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    rng = torch.Generator().manual_seed(args.seed)  # shuffling, shifts and latents: one seeded stream
    n = data.shape[0]
    bs = args.batch_size
    steps_per_epoch = n // bs  # drop the last partial batch: BN statistics of tiny batches are noisy

    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(n, generator=rng)
        sum_d = sum_g = 0.0
        sum_real = sum_fake = 0.0
        gen.train()
        disc.train()
        for step in range(steps_per_epoch):
            real = random_shift(data[perm[step * bs : (step + 1) * bs]], args.shift, rng)
            z = torch.randn(bs, args.latent_dim, generator=rng)
            loss_d, loss_g, d_real, d_fake = gan_step(gen, disc, opt_g, opt_d, bce, real, z)
            sum_d += loss_d.item()
            sum_g += loss_g.item()
            sum_real += torch.sigmoid(d_real).mean().item()
            sum_fake += torch.sigmoid(d_fake).mean().item()
        k = steps_per_epoch
        if epoch == 1 or epoch % args.log_every == 0 or epoch == args.epochs:
            print(f"epoch {epoch:4d}/{args.epochs}  loss_d {sum_d / k:.3f}  loss_g {sum_g / k:.3f}  "
                  f"D(real) {sum_real / k:.3f}  D(fake) {sum_fake / k:.3f}  "
                  f"elapsed {time.perf_counter() - t0:6.1f}s", flush=True)
    print(f"training time: {time.perf_counter() - t0:.1f}s")
    return gen


def main() -> None:
    """Parse arguments, train, recalibrate BatchNorm, save weights and samples, print quality numbers."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/work/builtin/digits32_generator.pt"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--latent-dim", type=int, default=LATENT_DIM)
    p.add_argument("--shift", type=int, default=0, help="max random shift of real images in pixels (32x32)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--bn-batches", type=int, default=50, help="latent batches for BN recalibration")
    args = p.parse_args()

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    gen = train(args)

    # Keep a copy with the training-time running stats, to show what recalibration changes.
    gen_ema = copy.deepcopy(gen).eval()
    recalibrate_batchnorm(gen, args.latent_dim, args.bn_batches, 256, args.seed + 2)

    out_dir = args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(gen.state_dict(), args.out)
    print(f"saved generator state_dict to {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")

    z = torch.randn(64, args.latent_dim, generator=torch.Generator().manual_seed(0))  # fixed latents, seed 0
    with torch.no_grad():
        eval_imgs = gen.eval()(z)
        ema_imgs = gen_ema(z)
        train_imgs = copy.deepcopy(gen).train()(z)  # batch statistics; copy so running stats stay untouched
    save_grid(eval_imgs, out_dir / "samples.png")
    save_grid(ema_imgs, out_dir / "samples_eval_training_bn_stats.png")
    save_grid(train_imgs, out_dir / "samples_train_mode.png")
    print(f"saved samples to {out_dir / 'samples.png'} (also *_train_mode.png, *_eval_training_bn_stats.png)")
    print(f"max |eval - train-mode| on the sample latents: recalibrated {(eval_imgs - train_imgs).abs().max():.3f}, "
          f"training running stats {(ema_imgs - train_imgs).abs().max():.3f}")

    quality_report(gen, load_digits_32(), args.latent_dim, args.seed)
    print(f"total wall time: {time.perf_counter() - t_start:.1f}s")


if __name__ == "__main__":
    main()
