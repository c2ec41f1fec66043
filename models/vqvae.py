"""VQ-VAE for small gray images and the autoregressive prior over its code grid.

* :class:`VectorQuantizerEMA`: nearest-codebook-entry quantiser whose codebook follows an
  exponential moving average of the encoder outputs assigned to each entry (van den Oord et al.
  2017, appendix), with dead-code restarts (an entry nobody picked for a while is moved onto a
  random encoder output of the current batch), the commitment loss and the straight-through
  gradient.
* :class:`CausalPrior`: a small causal transformer over the raster-ordered code grid. Picked over
  a gated PixelCNN because sampling must be fast on a CPU: with a key/value cache each new code
  costs one token's worth of work, while a PixelCNN reruns the whole grid for each of the
  ``H*W`` positions.
* :class:`VQVAE`: encoder, quantiser, decoder and prior in one module, so that one weights
  folder holds the whole generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))`` (channels unchanged)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        return x + self.body(x)


class VectorQuantizerEMA(nn.Module):
    """Snap vectors to the nearest of ``num_codes`` codebook entries; EMA codebook updates.

    Args:
        num_codes: codebook size K.
        dim: code vector size D.
        decay: EMA decay of the per-entry counts and sums.
        dead_after: an entry whose EMA count falls below this is restarted (training only).
    """

    def __init__(
        self, num_codes: int, dim: int, decay: float = 0.99, dead_after: float = 0.5
    ) -> None:
        super().__init__()
        self.num_codes, self.dim, self.decay, self.dead_after = num_codes, dim, decay, dead_after
        embed = torch.randn(num_codes, dim) / math.sqrt(dim)
        # Buffers, not parameters: the optimiser never touches the codebook, the EMA does.
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        # 0 until the first training batch has set the codebook to encoder outputs.
        self.register_buffer("ready", torch.zeros((), dtype=torch.long))

    def codes_of(self, flat: torch.Tensor) -> torch.Tensor:
        """Nearest entry index of each row of ``flat`` (M, D) -> (M,)."""
        dist = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * flat @ self.embed.t()
            + self.embed.pow(2).sum(1)[None]
        )
        return dist.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices (N, H, W) -> vectors (N, D, H, W)."""
        return F.embedding(codes, self.embed).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise encoder outputs.

        Args:
            z: (N, D, H, W) encoder outputs.

        Returns:
            ``(z_q, codes, commitment)``: (N, D, H, W) quantised vectors carrying the
            straight-through gradient to ``z``, (N, H, W) indices, and the scalar commitment
            loss ``mean ||z - sg(z_q)||^2``.
        """
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not int(self.ready):
            self._start(flat.detach())
        codes = self.codes_of(flat.detach())
        if self.training:
            self._ema_update(flat.detach(), codes)
        z_q = self.lookup(codes.view(n, h, w))
        commitment = F.mse_loss(z, z_q.detach())
        # Straight-through: the forward pass uses z_q, the gradient flows to z unchanged.
        return z + (z_q - z).detach(), codes.view(n, h, w), commitment

    @torch.no_grad()
    def _start(self, flat: torch.Tensor) -> None:
        # Random entries far from the encoder outputs would never be picked: start the
        # codebook on random outputs of the first training batch instead.
        start = flat[torch.randint(len(flat), (self.num_codes,), device=flat.device)]
        self.embed.copy_(start)
        self.embed_sum.copy_(start)
        self.ready.fill_(1)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.num_codes).type_as(flat)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        # Laplace smoothing keeps rarely used entries from dividing by ~0.
        size = (self.cluster_size + 1e-5) / (total + self.num_codes * 1e-5) * total
        self.embed.copy_(self.embed_sum / size[:, None])
        dead = self.cluster_size < self.dead_after
        n_dead = int(dead.sum())
        if n_dead:
            # Restart dead entries on random encoder outputs of this batch (global torch RNG,
            # which the training loop seeds and checkpoints).
            pick = flat[torch.randint(len(flat), (n_dead,), device=flat.device)]
            self.embed[dead] = pick
            self.embed_sum[dead] = pick
            self.cluster_size[dead] = 1.0
            self.restarts += n_dead


class _Block(nn.Module):
    """Pre-norm causal self-attention + MLP block with an optional key/value cache."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, dim) -> (N, T, dim), each token attending to itself and the earlier ones."""
        n, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, c))
        return x + self.mlp(self.norm2(x))

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token per sequence, the sampler's inner loop: (N, dim) -> (N, dim).

        The same arithmetic as :meth:`forward` over the cached tokens plus this one, in the
        cache's dtype for the attention (float32 or bfloat16; the rest stays float32).
        """
        n, c = x.shape
        h, d = self.heads, c // self.heads
        qkv = self.qkv(self.norm1(x)).view(n, 3, h, 1, d)
        k, v = cache.extend(qkv[:, 1], qkv[:, 2])
        if k.dtype == torch.float32:
            # Two batched products over all heads: faster than SDPA in float32 on CPU. The
            # query is scaled instead of the N x H x L scores.
            q = (qkv[:, 0] * d**-0.5).view(n * h, 1, d)
            w = torch.softmax(torch.bmm(q, k.reshape(n * h, -1, d).transpose(1, 2)), dim=-1)
            a = torch.bmm(w, v.reshape(n * h, -1, d))
        else:
            # Reading the cache is most of the sampler's time; bfloat16 halves it, and SDPA's
            # fused kernel runs it natively on CPUs with bfloat16 units.
            a = F.scaled_dot_product_attention(qkv[:, 0].to(k.dtype), k, v).float()
        x = x + self.proj(a.view(n, c))
        return x + self.mlp(self.norm2(x))


class KVCache:
    """Keys and values of the tokens seen so far, in buffers allocated once per sequence.

    Appending with ``torch.cat`` copied the whole cache at every step: half the sampling time
    of a 16x16 grid.

    Args:
        capacity: tokens the buffers hold (the sequence length).
        dtype: of the buffers; keys and values are cast to it as they are written.
    """

    def __init__(self, capacity: int, dtype: torch.dtype = torch.float32) -> None:
        self.capacity, self.dtype = capacity, dtype
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (N, H, T, D) keys and values; returns views of all of them so far."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KVCache: {end} tokens exceed its capacity of {self.capacity}")
        if self.k is None or self.v is None:
            n, h, _, d = k.shape
            self.k = k.new_empty(n, h, self.capacity, d, dtype=self.dtype)
            self.v = v.new_empty(n, h, self.capacity, d, dtype=self.dtype)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalPrior(nn.Module):
    """Autoregressive prior p(c_1) p(c_2 | c_1) ... over ``tokens`` raster-ordered codes.

    Args:
        num_codes: vocabulary (codebook) size.
        tokens: codes per image (grid height x width).
        dim: model width.
        layers: transformer blocks.
        heads: attention heads.
    """

    def __init__(self, num_codes: int, tokens: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.num_codes, self.tokens = num_codes, tokens
        # One extra embedding row: the start token that the first code is predicted from.
        self.embed = nn.Embedding(num_codes + 1, dim)
        self.pos = nn.Parameter(torch.zeros(tokens, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_codes)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, tokens) codes -> (N, tokens, num_codes) logits of each code given the earlier."""
        start = torch.full_like(codes[:, :1], self.num_codes)
        x = self.embed(torch.cat([start, codes[:, :-1]], 1)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    @torch.no_grad()
    def sample(
        self,
        uniforms: torch.Tensor,
        temperature: float | Sequence[float] = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        attention_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Sample code sequences by inverse-CDF from pre-drawn uniforms.

        The caller draws the uniforms from its seeded generator, so each sequence depends
        only on its own row (not on the batch).

        Args:
            uniforms: (N, tokens) in [0, 1).
            temperature: logits are divided by it; 0 picks the most likely code. One value
                per position (``tokens`` of them) for a schedule.
            top_k: keep only the k most likely codes (0: all).
            top_p: keep the smallest set of codes holding this much probability.
            attention_dtype: of the key/value cache and the attention over it (bfloat16:
                faster on CPUs with bfloat16 units; the prior trained under bfloat16 autocast).

        Returns:
            (N, tokens) long codes.
        """
        n = uniforms.shape[0]
        scalar = isinstance(temperature, (int, float))
        temps = [float(temperature)] * self.tokens if scalar else list(temperature)
        if len(temps) != self.tokens:
            raise ValueError(f"{len(temps)} temperatures for {self.tokens} positions")
        caches = [KVCache(self.tokens, attention_dtype) for _ in self.blocks]
        token = torch.full((n,), self.num_codes, dtype=torch.long, device=uniforms.device)
        out = []
        for i in range(self.tokens):
            x = self.embed(token) + self.pos[i]
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block.step(x, cache)
            logits = self.head(self.norm(x)).float()
            token = pick(logits, uniforms[:, i], float(temps[i]), top_k, top_p)
            out.append(token)
        return torch.stack(out, 1)


def pick(
    logits: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """One draw per row from softmax(logits / temperature), truncated by top-k / top-p.

    Args:
        logits: (N, K).
        u: (N,) uniforms in [0, 1).
        temperature: logits are divided by it; 0 takes the argmax.
        top_k: keep only the k most likely (0: all).
        top_p: keep the smallest most-likely set holding this much probability (1: all).

    Returns:
        (N,) indices.
    """
    if temperature <= 0:
        return logits.argmax(1)
    if top_k <= 0 and top_p >= 1.0:
        # Nothing to truncate: inverse CDF in code order, no sort.
        cdf = torch.softmax(logits / temperature, 1).cumsum(1)
        return (cdf < (u * cdf[:, -1])[:, None]).sum(1).clamp_max(logits.shape[1] - 1)
    probs = torch.softmax(logits / temperature, 1)
    if top_k > 0:
        # topk sorts only the k kept, cheaper than sorting the whole vocabulary every code.
        probs, order = probs.topk(min(top_k, probs.shape[1]), dim=1)
    else:
        probs, order = probs.sort(1, descending=True)
    if top_p < 1.0:
        before = probs.cumsum(1) - probs
        probs = torch.where(before < top_p, probs, torch.zeros_like(probs))
    cdf = probs.cumsum(1)
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(1).clamp_max(probs.shape[1] - 1)
    return order.gather(1, idx[:, None])[:, 0]


class VQVAE(nn.Module):
    """Convolutional VQ-VAE for ``size`` x ``size`` gray images plus its code prior.

    The encoder halves the resolution ``downsamples`` times (64 -> 8 with 3), so an image is a
    ``grid`` x ``grid`` array of indices into a ``num_codes`` x ``code_dim`` codebook.

    Args:
        size: image height = width.
        channels: encoder widths per downsampling (decoder mirrored).
        res_blocks: residual blocks at the code resolution (encoder and decoder each).
        num_codes: codebook size.
        code_dim: codebook vector size.
        decay: codebook EMA decay.
        prior_dim: prior transformer width.
        prior_layers: prior transformer blocks.
        prior_heads: prior attention heads.
    """

    def __init__(
        self,
        size: int = 64,
        channels: tuple[int, ...] | list[int] = (64, 128, 128),
        res_blocks: int = 2,
        num_codes: int = 512,
        code_dim: int = 64,
        decay: float = 0.99,
        prior_dim: int = 128,
        prior_layers: int = 4,
        prior_heads: int = 4,
    ) -> None:
        super().__init__()
        channels = list(channels)
        self.hparams = dict(
            size=size,
            channels=channels,
            res_blocks=res_blocks,
            num_codes=num_codes,
            code_dim=code_dim,
            decay=decay,
            prior_dim=prior_dim,
            prior_layers=prior_layers,
            prior_heads=prior_heads,
        )
        self.size, self.num_codes = size, num_codes
        self.grid = size // 2 ** len(channels)
        enc: list[nn.Module] = []
        for c_in, c_out in zip([1, *channels[:-1]], channels, strict=True):
            enc += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        top = channels[-1]
        enc += [nn.Conv2d(top, top, 3, padding=1)]
        enc += [ResBlock(top, top // 2) for _ in range(res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(top, code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = VectorQuantizerEMA(num_codes, code_dim, decay)
        dec: list[nn.Module] = [nn.Conv2d(code_dim, top, 3, padding=1)]
        dec += [ResBlock(top, top // 2) for _ in range(res_blocks)]
        widths = [*channels[::-1][1:], 32]
        for c_in, c_out in zip(channels[::-1], widths, strict=True):
            dec += [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]
        dec += [nn.ReLU(), nn.Conv2d(32, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.prior = CausalPrior(num_codes, self.grid**2, prior_dim, prior_layers, prior_heads)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) images in [0, 1] -> (N, code_dim, G, G) continuous codes."""
        return self.encoder(x - 0.5)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) images -> (N, G, G) code indices."""
        z = self.encode(x)
        n, d, g, _ = z.shape
        return self.quantizer.codes_of(z.permute(0, 2, 3, 1).reshape(-1, d)).view(n, g, g)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(N, code_dim, G, G) vectors -> (N, 1, S, S) float32 images (not clamped)."""
        # float32 before the offset: under bfloat16 autocast, x + 0.5 would round to 1/256.
        return self.decoder(z_q).float() + 0.5

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, G, G) indices -> (N, 1, S, S) images in [0, 1]."""
        return self.decode(self.quantizer.lookup(codes)).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct: returns ``(x_hat, codes, commitment)`` (see the quantiser)."""
        z_q, codes, commitment = self.quantizer(self.encode(x))
        return self.decode(z_q), codes, commitment
