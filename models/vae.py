"""A convolutional variational autoencoder with ``torch.distributions`` posterior and prior.

One class serves the face generator (64x64 gray, Gaussian likelihood with a learned global
scale), the 2-D MNIST / Fashion-MNIST VAEs (latent-grid pictures) and the larger-latent MNIST
VAE of the likelihood benchmark (Bernoulli likelihood). Only the constructor arguments differ.

The model also carries an optional *fitted sampling distribution*: a full-covariance Gaussian
(``sample_loc``, ``sample_scale_tril`` buffers) fitted after training to the posterior means
of the training set and, with ``sample_components`` > 1, a Gaussian mixture fitted to the same
codes by EM (``mix_logits``, ``mix_loc``, ``mix_scale_tril``). Sampling from it instead of the
N(0, I) prior avoids the "holes" of the aggregate posterior (Ghosh et al. 2020, "From
variational to deterministic autoencoders", ex-post density estimation) and is what makes VAE
samples look like the data. By default the buffers hold N(0, I), so an unfitted model samples
from the prior. The single Gaussian is kept beside a mixture: it is the overall spread that
traversals and great-circle interpolation use.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Laplace,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
)
from torch.nn import functional as F

Likelihood = Literal["bernoulli", "gaussian", "laplace"]
ScaleMode = Literal["learned", "fixed"]

# A floor on the learned pixel scale: below ~1/255 the density rewards memorising 8-bit noise.
_MIN_LOG_SCALE = math.log(1e-3)


# For a 4x4, stride-2, padding-1 transposed convolution, output row 2m + r reads input rows
# m - 1, m, m + 1 (taps j = 0, 1, 2 of a 3x3 convolution) through these kernel rows k.
_SUBPIXEL_TAPS = {0: {0: 3, 1: 1}, 1: {1: 2, 2: 0}}  # phase r -> {conv tap j: transpose tap k}


def subpixel_conv(ct: nn.ConvTranspose2d) -> nn.Sequential:
    """An exact equivalent of a 4x4, stride-2, padding-1 transposed convolution.

    The transposed convolution becomes a 3x3 convolution with four output channels per
    original one (one per output phase, zero where a phase does not use a tap) followed by
    ``PixelShuffle(2)``. Same arithmetic up to float rounding, but oneDNN's ordinary
    convolutions run it several times faster on a CPU than its transposed ones.

    Args:
        ct: the layer to convert; kernel 4, stride 2, padding 1, no output padding, dilation 1,
            groups 1.

    Returns:
        ``nn.Sequential(Conv2d, PixelShuffle)`` mapping (N, Cin, H, W) to (N, Cout, 2H, 2W), on
        the layer's device and dtype.
    """
    shape = (ct.kernel_size, ct.stride, ct.padding, ct.output_padding, ct.dilation, ct.groups)
    if shape != ((4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1):
        raise ValueError(f"subpixel_conv converts 4x4 stride-2 padding-1 layers only; got {ct}")
    w = ct.weight.detach()  # (Cin, Cout, 4, 4)
    cin, cout = w.shape[:2]
    kernel = w.new_zeros(cout * 4, cin, 3, 3)
    for rh, rows in _SUBPIXEL_TAPS.items():
        for rw, cols in _SUBPIXEL_TAPS.items():
            for jh, kh in rows.items():
                for jw, kw in cols.items():
                    kernel[rh * 2 + rw :: 4, :, jh, jw] = w[:, :, kh, kw].T
    conv = nn.Conv2d(cin, cout * 4, 3, padding=1, bias=ct.bias is not None)
    conv = conv.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(kernel)
        if ct.bias is not None:
            conv.bias.copy_(ct.bias.detach().repeat_interleave(4))
    return nn.Sequential(conv, nn.PixelShuffle(2))


def fit_gaussian_mixture(
    x: Tensor, k: int, shrink: float = 1e-3, iterations: int = 100, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Full-covariance Gaussian mixture fitted by EM.

    Args:
        x: (M, D) points; the fit runs in their dtype (float64 advised).
        k: number of components (<= M).
        shrink: ridge added to each covariance diagonal (keeps components from collapsing).
        iterations: EM iterations (the fit is deterministic given ``seed``).
        seed: seeds the initial means, a draw of ``k`` distinct points.

    Returns:
        ``(logits (k,), means (k, D), scale_trils (k, D, D))``.
    """
    m, d = x.shape
    if not 1 <= k <= m:
        raise ValueError(f"a {k}-component mixture needs at least {k} points; got {m}")
    gen = torch.Generator().manual_seed(seed)
    ridge = shrink * torch.eye(d, dtype=x.dtype)
    means = x[torch.randperm(m, generator=gen)[:k]].clone()
    covs = (torch.cov(x.T) + ridge).expand(k, d, d).clone()
    log_w = torch.full((k,), -math.log(k), dtype=x.dtype)
    for _ in range(iterations):
        tril = torch.linalg.cholesky(covs)
        log_p = MultivariateNormal(means, scale_tril=tril).log_prob(x[:, None, :]) + log_w
        resp = (log_p - log_p.logsumexp(1, keepdim=True)).exp()  # (M, k)
        nk = resp.sum(0) + 1e-12
        log_w = (nk / m).log()
        means = (resp.T @ x) / nk[:, None]
        for j in range(k):
            xc = x - means[j]
            covs[j] = (resp[:, j : j + 1] * xc).T @ xc / nk[j] + ridge
    return log_w, means, torch.linalg.cholesky(covs)


class _ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(conv(act(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class ConvVAE(nn.Module):
    """Convolutional VAE: Normal posterior q(z|x), N(0, I) prior, pixel likelihood p(x|z).

    The encoder halves the image with stride-2 4x4 convolutions once per entry of
    ``channels``; the decoder mirrors it with transposed convolutions, optionally with residual
    blocks after each upsampling but the last (which outputs pixels), so the same class
    fits 28x28 (two halvings to 7x7) and 64x64
    (four halvings to 4x4).

    Args:
        size: input height = width (28 or 64; any size divisible by 2**len(channels)).
        in_channels: image channels (1 for gray).
        channels: encoder widths, one per stride-2 stage; the decoder uses them reversed.
        latent_dim: dimension of z.
        hidden: width of the fully connected layer between the conv stack and the latent
            (0 for none).
        likelihood: ``"bernoulli"`` (binary data, logits), ``"gaussian"`` or ``"laplace"``
            (continuous [0, 1] pixels, mean through a sigmoid).
        scale: ``"learned"`` (one global log-scale parameter) or ``"fixed"``; unused for
            Bernoulli.
        fixed_scale: the pixel scale when ``scale="fixed"`` (and the learned scale's start).
        res_blocks: residual blocks after each decoder upsampling but the last.
        sample_components: Gaussians in the fitted sampling mixture (1: one Gaussian).
    """

    def __init__(
        self,
        size: int = 64,
        in_channels: int = 1,
        channels: tuple[int, ...] | list[int] = (32, 64, 128, 256),
        latent_dim: int = 128,
        hidden: int = 0,
        likelihood: Likelihood = "gaussian",
        scale: ScaleMode = "learned",
        fixed_scale: float = 0.1,
        res_blocks: int = 0,
        sample_components: int = 1,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if likelihood not in ("bernoulli", "gaussian", "laplace"):
            raise ValueError(
                f"likelihood must be bernoulli, gaussian or laplace; got {likelihood!r}"
            )
        if scale not in ("learned", "fixed"):
            raise ValueError(f"scale must be 'learned' or 'fixed'; got {scale!r}")
        if not 1 <= sample_components <= 256:
            raise ValueError(f"sample_components must be in [1, 256]; got {sample_components}")
        if size % (2 ** len(channels)) != 0:
            raise ValueError(f"size {size} is not divisible by 2**{len(channels)}")
        self.hparams = dict(
            size=size,
            in_channels=in_channels,
            channels=channels,
            latent_dim=latent_dim,
            hidden=hidden,
            likelihood=likelihood,
            scale=scale,
            fixed_scale=fixed_scale,
            res_blocks=res_blocks,
        )
        if sample_components > 1:
            # Only recorded when used, so configs of single-Gaussian models stay as they were.
            self.hparams["sample_components"] = sample_components
        self.sample_components = sample_components
        self.size = size
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.bottom = size // 2 ** len(channels)
        flat = channels[-1] * self.bottom**2

        enc: list[nn.Module] = []
        prev = in_channels
        for c in channels:
            enc += [nn.Conv2d(prev, c, 4, stride=2, padding=1), nn.SiLU()]
            prev = c
        enc.append(nn.Flatten())
        if hidden:
            enc += [nn.Linear(flat, hidden), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        self.to_posterior = nn.Linear(hidden or flat, 2 * latent_dim)

        dec: list[nn.Module] = []
        if hidden:
            dec += [nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, flat)]
        else:
            dec.append(nn.Linear(latent_dim, flat))
        dec.append(nn.Unflatten(1, (channels[-1], self.bottom, self.bottom)))
        rev = channels[::-1]
        for c, out in itertools.pairwise(rev):
            dec += [nn.SiLU(), nn.ConvTranspose2d(c, out, 4, stride=2, padding=1)]
            dec += [_ResBlock(out) for _ in range(res_blocks)]
        # The last upsampling goes straight to pixels: a full-resolution hidden layer costs
        # more CPU time than all the others together and bought no visible sharpness.
        dec += [nn.SiLU(), nn.ConvTranspose2d(rev[-1], in_channels, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec)

        self.log_scale = nn.Parameter(
            torch.tensor(math.log(fixed_scale)), requires_grad=(scale == "learned")
        )
        self.register_buffer("sample_loc", torch.zeros(latent_dim))
        self.register_buffer("sample_scale_tril", torch.eye(latent_dim))
        if sample_components > 1:
            k = sample_components
            self.register_buffer("mix_logits", torch.zeros(k))
            self.register_buffer("mix_loc", torch.zeros(k, latent_dim))
            self.register_buffer("mix_scale_tril", torch.eye(latent_dim).repeat(k, 1, 1))

    # ---- distributions --------------------------------------------------------------------

    def prior(self) -> Normal:
        """The N(0, I) prior; batch shape (latent_dim,)."""
        zero = self.sample_loc.new_zeros(self.latent_dim)
        return Normal(zero, torch.ones_like(zero))

    def encode(self, x: Tensor) -> Normal:
        """Posterior q(z|x).

        Args:
            x: (N, C, H, W) in [0, 1].

        Returns:
            Normal with batch shape (N, latent_dim).
        """
        mu, raw = self.to_posterior(self.encoder(x)).chunk(2, dim=1)
        # softplus keeps the std positive without exp's blow-ups early in training.
        return Normal(mu, F.softplus(raw) + 1e-4)

    def decoder_output(self, z: Tensor) -> Tensor:
        """Raw decoder output (logits for Bernoulli, pre-sigmoid mean otherwise); (N, C, H, W)."""
        if self.training or torch.is_grad_enabled():
            return self.decoder(z)
        return self._inference_decoder()(z)

    def _inference_decoder(self) -> nn.Module:
        # The decoder with its transposed convolutions rewritten by subpixel_conv, rebuilt
        # whenever a decoder weight changes (in-place loads bump the tensors' versions) or moves.
        params = list(self.decoder.parameters())
        key = (params[0].device, params[0].dtype, *(p._version for p in params))
        cached = self.__dict__.get("_fast_decoder")
        if cached is None or cached[0] != key:
            layers = [
                subpixel_conv(m) if isinstance(m, nn.ConvTranspose2d) else m for m in self.decoder
            ]
            # Kept out of the module tree: not in state_dict, not moved by .to().
            self.__dict__["_fast_decoder"] = cached = (key, nn.Sequential(*layers).eval())
        return cached[1]

    def pixel_scale(self) -> Tensor:
        """The (global) pixel scale of the Gaussian / Laplace likelihood; a scalar tensor."""
        return self.log_scale.clamp(min=_MIN_LOG_SCALE).exp()

    def likelihood_dist(self, z: Tensor) -> Distribution:
        """p(x|z) as an ``Independent`` distribution with event shape (C, H, W).

        Args:
            z: (N, latent_dim).
        """
        out = self.decoder_output(z)
        if self.likelihood == "bernoulli":
            return Independent(Bernoulli(logits=out), 3)
        mean = torch.sigmoid(out)
        scale = self.pixel_scale().expand_as(mean)
        base = Normal(mean, scale) if self.likelihood == "gaussian" else Laplace(mean, scale)
        return Independent(base, 3)

    def decode(self, z: Tensor) -> Tensor:
        """Mean image of p(x|z).

        Args:
            z: (N, latent_dim).

        Returns:
            (N, C, H, W) in [0, 1].
        """
        return torch.sigmoid(self.decoder_output(z))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction: decode the posterior mean; (N, C, H, W) -> (N, C, H, W)."""
        return self.decode(self.encode(x).mean)

    # ---- objectives -----------------------------------------------------------------------

    def loss_terms(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Single-sample reconstruction log-likelihood and analytic KL, per example.

        Args:
            x: (N, C, H, W) in [0, 1] ({0, 1} for Bernoulli).
            generator: optional generator for the reparameterised sample.

        Returns:
            ``(log p(x|z), KL(q(z|x) || p(z)))``, each (N,) in nats.
        """
        q = self.encode(x)
        eps = torch.randn(q.loc.shape, generator=generator, device=x.device, dtype=x.dtype)
        z = q.loc + q.scale * eps
        rec = self.likelihood_dist(z).log_prob(x)
        kl = kl_divergence(q, self.prior()).sum(-1)
        return rec, kl

    def elbo(self, x: Tensor) -> Tensor:
        """Evidence lower bound per example, (N,) nats (one posterior sample)."""
        rec, kl = self.loss_terms(x)
        return rec - kl

    def iw_nll(self, x: Tensor, k: int = 1000, chunk: int = 250) -> Tensor:
        """Importance-weighted estimate of -log p(x) with ``k`` posterior samples.

        Args:
            x: (N, C, H, W).
            k: importance samples per example.
            chunk: samples decoded at once (memory bound: N * chunk images).

        Returns:
            (N,) nats; an upper bound on the true NLL that tightens as ``k`` grows.
        """
        q = self.encode(x)
        prior = self.prior()
        logws = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            z = q.rsample((m,))  # (m, N, D)
            log_q = q.log_prob(z).sum(-1)
            log_p = prior.log_prob(z).sum(-1)
            flat = z.reshape(-1, self.latent_dim)
            xs = x.unsqueeze(0).expand(m, *x.shape).reshape(-1, *x.shape[1:])
            log_lik = self.likelihood_dist(flat).log_prob(xs).view(m, -1)
            logws.append(log_lik + log_p - log_q)
        logw = torch.cat(logws, 0)
        return -(torch.logsumexp(logw, 0) - math.log(k))

    # ---- sampling ----------------------------------------------------------------------------

    def sampling_dist(self, fitted: bool = True) -> Distribution:
        """The latent distribution that :meth:`sample_latents` draws from."""
        if not fitted:
            return self.prior()
        if self.sample_components > 1:
            return MixtureSameFamily(
                Categorical(logits=self.mix_logits),
                MultivariateNormal(self.mix_loc, scale_tril=self.mix_scale_tril),
            )
        return MultivariateNormal(self.sample_loc, scale_tril=self.sample_scale_tril)

    def latents_from_noise(self, eps: Tensor, u: Tensor | None = None) -> Tensor:
        """Map standard-normal noise to fitted-distribution latents (the sampler's last step).

        Args:
            eps: (N, latent_dim) N(0, I) noise, already multiplied by the temperature.
            u: (N,) uniforms in [0, 1) choosing the mixture component; needed only when
                ``sample_components`` > 1.

        Returns:
            (N, latent_dim) on ``eps``'s device.
        """
        if self.sample_components == 1:
            return self.sample_loc.to(eps) + eps @ self.sample_scale_tril.to(eps).T
        if u is None:
            raise ValueError("a mixture sampler needs one uniform per latent (u)")
        cdf = torch.softmax(self.mix_logits.double(), 0).cumsum(0).to(u.device)
        comp = torch.searchsorted(cdf, u.double()).clamp(max=self.sample_components - 1)
        comp = comp.to(self.mix_loc.device)
        loc, tril = self.mix_loc[comp].to(eps), self.mix_scale_tril[comp].to(eps)
        return loc + (tril @ eps.unsqueeze(-1)).squeeze(-1)

    def sample_latents(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        fitted: bool = True,
    ) -> Tensor:
        """Draw latents; noise comes from ``generator`` on the CPU so seeds match across devices.

        Args:
            n: number of latents.
            generator: CPU generator (None: torch's global one).
            temperature: multiplies the spread around the (component) mean.
            fitted: use the fitted sampling distribution (N(0, I) if never fitted) or the prior.

        Returns:
            (n, latent_dim) on the model's device.
        """
        eps = torch.randn(n, self.latent_dim, generator=generator) * temperature
        u = torch.rand(n, generator=generator) if self.sample_components > 1 else None
        eps = eps.to(self.sample_loc.device)
        if not fitted:
            return eps
        return self.latents_from_noise(eps, u)

    @torch.no_grad()
    def fit_sampling_gaussian(
        self, codes: Tensor, shrink: float = 1e-3, iterations: int = 100, seed: int = 0
    ) -> None:
        """Fit the sampling Gaussian (and the mixture, if any) to posterior means.

        Args:
            codes: (M, latent_dim) posterior means of training images.
            shrink: ridge added to every covariance diagonal for a stable Cholesky factor.
            iterations: EM iterations of the mixture fit; 0 makes every component the single
                Gaussian (a cheap stand-in that samples exactly like it).
            seed: seeds the mixture's initial means (a draw of ``sample_components`` codes).
        """
        codes = codes.double()
        loc = codes.mean(0)
        ridge = shrink * torch.eye(self.latent_dim, dtype=codes.dtype)
        cov = torch.cov(codes.T) + ridge
        self.sample_loc.copy_(loc.to(self.sample_loc))
        self.sample_scale_tril.copy_(torch.linalg.cholesky(cov).to(self.sample_scale_tril))
        if self.sample_components > 1:
            k = self.sample_components
            if iterations > 0:
                logits, mix_loc, mix_tril = fit_gaussian_mixture(codes, k, shrink, iterations, seed)
            else:
                logits = torch.zeros(k)
                mix_loc, mix_tril = self.sample_loc.expand(k, -1), self.sample_scale_tril
            self.mix_logits.copy_(logits.to(self.mix_logits))
            self.mix_loc.copy_(mix_loc.to(self.mix_loc))
            self.mix_scale_tril.copy_(mix_tril.to(self.mix_scale_tril))
