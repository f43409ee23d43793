"""`NeuronStats`: exact per-condition neuron statistics (counts and fixed-point sums).

Axes: conditions C, layers L, neurons N. Fields (host NumPy arrays, int64):
  tokens [C]                 tokens counted per condition
  active [C, L, N]           tokens with act > 0
  sum_int, sum_frac [C, L, N]     Σ act  = sum_int + sum_frac · 2^-30, with 0 <= sum_frac < 2^30
  sumsq_int, sumsq_frac [C, L, N] Σ act² in the same representation
  clipped [C]                values with |x| >= 2^30 that were saturated (0 in practice)
`sum` / `sumsq` give the float64 [C, L, N] of the design contract; `probs()`, `mean()`, `var()`,
`std()` divide by `tokens` (NaN for a condition without tokens).

Why fixed point and not float sums: each token's activation (and its square) is rounded to a
multiple of 2^-30 on device -- a no-op for |x| >= 2^-7, whose float32 ulp is already >= 2^-30,
and an absolute error <= 2^-31 below that -- and from then on every sum is an integer sum. Integer
addition is associative and commutative, so `merge` of ANY split of the data (any batch
composition, shard order or merge tree) equals one pass bit for bit. Float sums, even float64
added in a canonical order, are reproducible only for one fixed partition of the data.

On device (no int64 without x64) a value's fixed-point integer is carried as NUM_DIGITS signed
base-2^15 digits in int32; a batch of at most MAX_BATCH_TOKENS = 2^16 tokens sums each digit to
|Σ| < 2^31, so nothing overflows. The host folds a batch's digit sums into (int, frac) pairs
(`Partial` -> `update`), normalising the carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvalues.errors import JaxValuesError

FRAC_BITS = 30
DIGIT_BITS = 15
NUM_DIGITS = 4  # 60 bits: magnitudes < 2^30 (act up to 32768 for the squares)
MAX_BATCH_TOKENS = 2**16
CHUNK_ELEMENTS = 2**22  # tokens × neurons reduced per scan step (bounds temporaries)
_FRAC_MASK = (1 << FRAC_BITS) - 1
_CAP = float(2**60 - 2**36)  # largest float32 below 2^60


class Partial(NamedTuple):
    """One batch's reduction (device arrays or NumPy), all rows of one condition."""

    tokens: jax.Array  # [] int32
    active: jax.Array  # [L, N] int32
    sum_digits: jax.Array  # [NUM_DIGITS, L, N] int32
    sumsq_digits: jax.Array  # [NUM_DIGITS, L, N] int32
    clipped: jax.Array  # [] int32


def fixed_point_digits(x):
    """float32 array [...] -> (signed base-2^15 digits of round(x·2^30) [..., NUM_DIGITS] int32,
    clipped [...] bool).

    Every float step is exact: power-of-two scalings, floor of a float, and differences whose
    exact result (an integer < 2^15) is representable."""
    y = jnp.round(x.astype(jnp.float32) * np.float32(2.0**FRAC_BITS))
    a = jnp.abs(y)
    clipped = a > _CAP
    a = jnp.minimum(a, np.float32(_CAP))[..., None]
    lo = jnp.floor(a * _SCALES[:-1])  # floor(a / 2^(15j)), j = 0..D-1
    hi = jnp.floor(a * _SCALES[1:])  # floor(a / 2^(15(j+1)))
    digits = (lo - hi * np.float32(2.0**DIGIT_BITS)).astype(jnp.int32)
    return digits * jnp.sign(y).astype(jnp.int32)[..., None], clipped


_SCALES = np.array([2.0 ** (-DIGIT_BITS * j) for j in range(NUM_DIGITS + 1)], np.float32)


def reduce_acts(acts: Sequence[jax.Array], count) -> Partial:
    """acts: L arrays [B, S, N] float32; count [B, S] (1 = count this token). Jittable.

    One Partial for the whole batch: the row sums of `reduce_acts_rows` (integers, so exact). The
    caller guarantees B·S <= MAX_BATCH_TOKENS (int32 digit sums cannot overflow)."""
    rows = reduce_acts_rows(acts, count)
    return Partial(*(jnp.sum(f, axis=0, dtype=jnp.int32) for f in rows))


def reduce_acts_rows(acts: Sequence[jax.Array], count) -> Partial:
    """The statistics of a batch, one Partial per row: acts L arrays [B, S, N]; count [B, S]. Jittable.

    Returns a Partial whose fields have a leading B axis (tokens [B], active [B, L, N], digit
    sums [B, D, L, N], clipped [B]), so rows of different conditions can share a batch. Tokens
    are reduced in chunks of c positions of every row (c = the largest power of two dividing S
    with B·c·N <= CHUNK_ELEMENTS, a `lax.scan` when there is more than one chunk), so the digit
    arrays of a chunk, not of the whole batch, are what a backend may materialise."""
    b, s = count.shape
    n = acts[0].shape[-1]
    cap = max(1, CHUNK_ELEMENTS // (n * b))
    c = 1
    while c * 2 <= min(cap, s) and s % (c * 2) == 0:
        c *= 2
    steps = s // c
    w = count.astype(jnp.int32)
    wc = w.reshape(b, steps, c).transpose(1, 0, 2)  # [steps, B, c]

    def body(carry, xs):
        x, wk = xs  # [B, c, N], [B, c]
        active = jnp.sum(jnp.where(x > 0, wk[:, :, None], 0), axis=1, dtype=jnp.int32)  # [B, N]
        d, clip = fixed_point_digits(jnp.stack([x, x * x]))  # [2, B, c, N, D]
        digits = jnp.sum(d * wk[None, :, :, None, None], axis=2, dtype=jnp.int32)  # [2, B, N, D]
        clipped = jnp.sum(clip & (wk[None, :, :, None] > 0), axis=(0, 2, 3), dtype=jnp.int32)  # [B]
        return (carry[0] + active, carry[1] + digits, carry[2] + clipped), None

    init = (jnp.zeros((b, n), jnp.int32), jnp.zeros((2, b, n, NUM_DIGITS), jnp.int32), jnp.zeros((b,), jnp.int32))
    active, digits, clipped = [], [], jnp.zeros((b,), jnp.int32)
    for a in acts:
        x = a.astype(jnp.float32).reshape(b, steps, c, n).transpose(1, 0, 2, 3)  # [steps, B, c, N]
        if steps == 1:
            (act, dig, clip), _ = body(init, (x[0], wc[0]))
        else:
            (act, dig, clip), _ = jax.lax.scan(body, init, (x, wc))
        active.append(act)
        digits.append(dig)
        clipped = clipped + clip
    digits = jnp.stack(digits, axis=2).transpose(0, 1, 4, 2, 3)  # [2, B, D, L, N]
    return Partial(tokens=jnp.sum(w, axis=1, dtype=jnp.int32), active=jnp.stack(active, axis=1),
                   sum_digits=digits[0], sumsq_digits=digits[1], clipped=clipped)


def _fold(digits: np.ndarray):
    """[NUM_DIGITS, ...] int digit sums -> (int part, frac numerator) int64 increments."""
    d = np.asarray(digits).astype(np.int64)
    lo = d[0] + (d[1] << DIGIT_BITS)  # value·2^30 = lo + 2^30·hi
    hi = d[2] + (d[3] << DIGIT_BITS)
    return hi, lo


def _add_fixed(int_, frac, d_int, d_frac):
    """In place: (int_, frac) += (d_int, d_frac), then carry frac into [0, 2^30)."""
    frac += d_frac
    carry = frac >> FRAC_BITS  # arithmetic shift = floor division
    frac &= _FRAC_MASK
    int_ += d_int + carry


_FIELDS = ("tokens", "active", "sum_int", "sum_frac", "sumsq_int", "sumsq_frac", "clipped")


@jax.tree_util.register_pytree_node_class
@dataclass(eq=False)
class NeuronStats:
    conditions: tuple[str, ...]
    tokens: np.ndarray
    active: np.ndarray
    sum_int: np.ndarray
    sum_frac: np.ndarray
    sumsq_int: np.ndarray
    sumsq_frac: np.ndarray
    clipped: np.ndarray
    meta: dict = field(default_factory=dict)  # model, token selection, collection report (JSON-able)

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def zeros(cls, conditions: Sequence[str], num_layers: int, num_neurons: int, meta: dict | None = None):
        conditions = tuple(str(c) for c in conditions)
        if not conditions:
            raise JaxValuesError("NeuronStats needs at least one condition")
        if len(set(conditions)) != len(conditions):
            raise JaxValuesError(f"duplicate condition names: {list(conditions)}")
        c, shape = len(conditions), (len(conditions), num_layers, num_neurons)
        z = lambda s: np.zeros(s, np.int64)  # noqa: E731
        return cls(conditions, z(c), z(shape), z(shape), z(shape), z(shape), z(shape), z(c), dict(meta or {}))

    # --- pytree ----------------------------------------------------------------------------
    def tree_flatten(self):
        return tuple(getattr(self, f) for f in _FIELDS), (self.conditions, json.dumps(self.meta, sort_keys=True))

    @classmethod
    def tree_unflatten(cls, aux, children):
        conditions, meta = aux
        return cls(conditions, *children, meta=json.loads(meta))

    def arrays(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in _FIELDS}

    # --- shape ------------------------------------------------------------------------------
    @property
    def num_conditions(self) -> int:
        return len(self.conditions)

    @property
    def num_layers(self) -> int:
        return int(self.active.shape[1])

    @property
    def num_neurons(self) -> int:
        return int(self.active.shape[2])

    def index(self, condition: str | int) -> int:
        if isinstance(condition, (int, np.integer)):
            if not 0 <= condition < self.num_conditions:
                raise JaxValuesError(f"condition index {condition} out of range 0..{self.num_conditions - 1}")
            return int(condition)
        try:
            return self.conditions.index(condition)
        except ValueError:
            raise JaxValuesError(f"unknown condition {condition!r}; the statistics have: "
                                 f"{', '.join(self.conditions)}") from None

    # --- accumulation ------------------------------------------------------------------------
    def update(self, condition: int | str, partial: Partial) -> "NeuronStats":
        """Add one batch's `Partial` to `condition` (in place; returns self)."""
        c = self.index(condition)
        p = Partial(*(np.asarray(x) for x in partial))
        if p.active.shape != self.active.shape[1:]:
            raise JaxValuesError(f"partial has shape {p.active.shape}, statistics expect {self.active.shape[1:]}")
        self.tokens[c] += int(p.tokens)
        self.clipped[c] += int(p.clipped)
        self.active[c] += p.active.astype(np.int64)
        _add_fixed(self.sum_int[c], self.sum_frac[c], *_fold(p.sum_digits))
        _add_fixed(self.sumsq_int[c], self.sumsq_frac[c], *_fold(p.sumsq_digits))
        return self

    def update_rows(self, row_conditions, partial: Partial) -> "NeuronStats":
        """Add a per-row Partial (leading axis B, from `reduce_acts_rows`): row r goes to
        condition row_conditions[r]; rows beyond len(row_conditions) are padding and ignored."""
        p = Partial(*(np.asarray(x) for x in partial))
        for r, c in enumerate(row_conditions):
            self.update(c, Partial(*(f[r] for f in p)))
        return self

    def add_activations(self, condition: int | str, acts, count=None) -> "NeuronStats":
        """Add raw activations to `condition`: [L, T, N] (count [T]) or [L, B, S, N] (count [B, S]);
        count marks the tokens to count (default all). Same reduction as `collect`; tokens are
        padded (count 0) to a power of two so few shapes compile."""
        acts = np.asarray(acts, np.float32)
        if acts.ndim == 4:
            acts = acts.reshape(acts.shape[0], -1, acts.shape[3])
        if acts.ndim != 3:
            raise JaxValuesError(f"activations must be [L, T, N] or [L, B, S, N], got shape {tuple(acts.shape)}")
        t = acts.shape[1]
        count = np.ones(t, np.int32) if count is None else np.asarray(count, np.int32).reshape(-1)
        if count.shape != (t,):
            raise JaxValuesError(f"count has {count.size} entries for {t} tokens")
        for i in range(0, t, MAX_BATCH_TOKENS):
            a, c = acts[:, i:i + MAX_BATCH_TOKENS], count[i:i + MAX_BATCH_TOKENS]
            size = max(16, 1 << (a.shape[1] - 1).bit_length())
            a = np.pad(a, ((0, 0), (0, size - a.shape[1]), (0, 0)))
            c = np.pad(c, (0, size - c.shape[0]))
            self.update(condition, _reduce_jit(tuple(a[:, None]), c[None]))
        return self

    def copy(self) -> "NeuronStats":
        return NeuronStats(self.conditions, *(getattr(self, f).copy() for f in _FIELDS), meta=dict(self.meta))

    def check_compatible(self, other: "NeuronStats"):
        if self.conditions != other.conditions:
            raise JaxValuesError(f"cannot merge statistics over different conditions: {list(self.conditions)} "
                                 f"vs {list(other.conditions)}")
        if self.active.shape != other.active.shape:
            raise JaxValuesError(f"cannot merge statistics of shapes {self.active.shape} and {other.active.shape}")

    def merge(self, other: "NeuronStats") -> "NeuronStats":
        """Exact, commutative and associative: a new NeuronStats with both sets of data."""
        self.check_compatible(other)
        out = self.copy()
        out.tokens += other.tokens
        out.clipped += other.clipped
        out.active += other.active
        _add_fixed(out.sum_int, out.sum_frac, other.sum_int, other.sum_frac)
        _add_fixed(out.sumsq_int, out.sumsq_frac, other.sumsq_int, other.sumsq_frac)
        return out

    def select(self, conditions: Sequence[str | int]) -> "NeuronStats":
        """The statistics of a subset of conditions (in the order given)."""
        idx = [self.index(c) for c in conditions]
        return NeuronStats(tuple(self.conditions[i] for i in idx),
                           *(getattr(self, f)[idx].copy() for f in _FIELDS), meta=dict(self.meta))

    def pooled(self, conditions: Sequence[str | int], name: str | None = None) -> "NeuronStats":
        """One condition holding the exact sum of several (e.g. "all values but v")."""
        sub = self.select(conditions)
        out = NeuronStats.zeros([name or "+".join(sub.conditions)], self.num_layers, self.num_neurons, self.meta)
        for f in ("tokens", "active", "clipped"):
            getattr(out, f)[0] = getattr(sub, f).sum(0)
        for part in ("sum", "sumsq"):
            _add_fixed(getattr(out, part + "_int")[0], getattr(out, part + "_frac")[0],
                       getattr(sub, part + "_int").sum(0), getattr(sub, part + "_frac").sum(0))
        return out

    # --- derived float64 statistics -------------------------------------------------------------
    @property
    def sum(self) -> np.ndarray:
        return self.sum_int.astype(np.float64) + self.sum_frac.astype(np.float64) * 2.0**-FRAC_BITS

    @property
    def sumsq(self) -> np.ndarray:
        return self.sumsq_int.astype(np.float64) + self.sumsq_frac.astype(np.float64) * 2.0**-FRAC_BITS

    def _per_token(self, x):
        t = self.tokens.astype(np.float64)[:, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(t > 0, x / np.where(t > 0, t, 1), np.nan)

    def probs(self) -> np.ndarray:
        """[C, L, N] float64: fraction of counted tokens with act > 0 (NaN without tokens)."""
        return self._per_token(self.active.astype(np.float64))

    def mean(self) -> np.ndarray:
        return self._per_token(self.sum)

    def var(self, ddof: int = 0) -> np.ndarray:
        t = self.tokens.astype(np.float64)[:, None, None]
        ss = self.sumsq - self.sum * self.mean()  # Σx² − T·μ²
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(t > ddof, np.maximum(ss, 0.0) / np.where(t > ddof, t - ddof, 1), np.nan)

    def std(self, ddof: int = 0) -> np.ndarray:
        return np.sqrt(self.var(ddof))

    @property
    def has_data(self) -> np.ndarray:
        return self.tokens > 0

    def equals(self, other: "NeuronStats") -> bool:
        """Bit-for-bit equality of all accumulators (meta ignored)."""
        return self.conditions == other.conditions and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in _FIELDS)

    def __repr__(self):
        return (f"NeuronStats(conditions={self.num_conditions}, layers={self.num_layers}, "
                f"neurons={self.num_neurons}, tokens={int(self.tokens.sum())})")


def merge_all(stats: Sequence[NeuronStats]) -> NeuronStats:
    if not stats:
        raise JaxValuesError("merge_all: no statistics to merge")
    out = stats[0].copy()
    for s in stats[1:]:
        out = out.merge(s)
    return out


_reduce_jit = jax.jit(reduce_acts)
