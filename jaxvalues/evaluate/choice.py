"""The choice protocol: P(aligned) from the two option-label logits at the answer position.

Conventions:
- A *row* is one rendered prompt: one dilemma in one option order. `ChoicePrompts` holds rows as
  plain arrays: left-padded `input_ids`/`attention_mask` [P, S], `label_ids` [P, 2] = (token of
  the aligned option's label, token of the violating option's label), `dilemma` [P] (index into
  `meta`, one dict per dilemma: record_id, pair_id, value, lang) and `order` [P]
  (0 = aligned_first: the aligned action is option A; 1 = aligned_second: it is option B).
- P(aligned) of a row = softmax over its two label logits, taken at the last real token
  (= sigmoid(logit_aligned − logit_violating)); only the label rows of the unembedding are
  multiplied (`lm_logits(..., rows=...)`), never the full vocabulary.
- Per dilemma: p_aligned = mean over the two orders (cancels position bias);
  position_bias = (p_aligned_first − p_aligned_second) / 2 = mean P(label "A") − 0.5
  (> 0: the model favours A whatever it holds); chose_aligned = p_aligned > 0.5.
- Conditions (interventions) × rows are flattened and cut into batches of a fixed size; each
  sequence carries its own (mult, add) [L, B, N], so every condition runs through one jitted
  program. Its compilations depend only on (batch size, bucketed length, label-vocab size):
  `ChoiceScorer.compilations()` reads the jitted function's `_cache_size()`.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxvalues.errors import ConfigError, JaxValuesError
from jaxvalues.models.decoder import lm_apply, lm_logits
from jaxvalues.evaluate.batching import (ConditionBank, bucket, common_prefix_lengths, flat_batches, num_batches,
                                         round_up)
from jaxvalues.models.lm import pad_batch

ORDER_NAMES = ("aligned_first", "aligned_second")


@dataclass(frozen=True)
class ChoicePrompts:
    input_ids: np.ndarray  # [P, S] int32, left-padded
    attention_mask: np.ndarray  # [P, S] int32
    label_ids: np.ndarray  # [P, 2] int32: (aligned label token, violating label token)
    dilemma: np.ndarray  # [P] int: index into meta
    order: np.ndarray  # [P] int: 0 aligned_first (aligned = A), 1 aligned_second (aligned = B)
    meta: list = field(default_factory=list)  # per dilemma: {record_id, pair_id, value, lang}

    def __post_init__(self):
        p = self.input_ids.shape[0]
        for name in ("attention_mask", "label_ids", "dilemma", "order"):
            if getattr(self, name).shape[0] != p:
                raise JaxValuesError(f"ChoicePrompts.{name} has {getattr(self, name).shape[0]} rows, "
                                     f"expected {p} (one per prompt)")
        if p and np.any(np.diff(self.attention_mask, axis=1) < 0):
            raise JaxValuesError("ChoicePrompts.attention_mask: prompts must be left-padded (0s then 1s per row)")
        if self.label_ids.ndim != 2 or self.label_ids.shape[1] != 2:
            raise JaxValuesError(f"ChoicePrompts.label_ids must be [P, 2], got {self.label_ids.shape}")
        if p and int(self.dilemma.max()) >= len(self.meta):
            raise JaxValuesError(f"ChoicePrompts.dilemma indexes dilemma {int(self.dilemma.max())} "
                                 f"but meta lists {len(self.meta)}")

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(1)

    @classmethod
    def from_tokens(cls, seqs: Sequence[Sequence[int]], label_ids, dilemma, order, meta,
                    pad_id: int = 0) -> "ChoicePrompts":
        """Rows from token lists (left-padded here)."""
        if not seqs:
            raise JaxValuesError("no prompts to evaluate (empty dataset after filtering?)")
        ids, mask = pad_batch([list(s) for s in seqs], pad_id, "left")
        return cls(ids, mask, np.asarray(label_ids, np.int32).reshape(-1, 2), np.asarray(dilemma, np.int64),
                   np.asarray(order, np.int64), list(meta))


def build_choice_prompts(records, tokenizer, *, orders=ORDER_NAMES, chat: bool | None = None,
                         pad_id: int | None = None, template_kwargs: dict | None = None) -> ChoicePrompts:
    """Render evaluation records with `jaxvalues.data.prompts` (both orders) and tokenize them."""
    from jaxvalues.data.prompts import label_token_ids, render_evaluation

    if tokenizer is None:
        raise ConfigError("the choice protocol needs the model's tokenizer (the model has none)")
    seqs, labels, dil, ords, meta = [], [], [], [], []
    for i, rec in enumerate(records):
        meta.append({"record_id": rec.id, "pair_id": rec.pair_id, "value": rec.value, "lang": rec.lang})
        for order in orders:
            r = render_evaluation(rec, tokenizer, order, chat=chat, template_kwargs=template_kwargs)
            ids = label_token_ids(tokenizer, rec.lang, r)
            seqs.append(tokenizer(r.text, add_special_tokens=r.add_special_tokens)["input_ids"])
            labels.append((ids[r.aligned_label], ids[r.violating_label]))
            dil.append(i)
            ords.append(ORDER_NAMES.index(order))
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None)
        pad_id = getattr(tokenizer, "eos_token_id", 0) if pad_id is None else pad_id
    return ChoicePrompts.from_tokens(seqs, labels, dil, ords, meta, pad_id=int(pad_id or 0))


# ---------------------------------------------------------------------------------- the program


def _label_logits(graphdef, state, ids, mask, mult, add, vocab, idx, mass: bool = False, answer_only: bool = True):
    """ids/mask [B, S]; mult/add [L, B, N]; vocab [U] label token ids; idx [B, 2] into vocab.
    -> [B, 2] logits of (aligned, violating) at each row's last real token; with `mass` (static)
    [B, 3]: the third column is log Σ_vocab exp(logit) at that position (one full LM-head row per
    sequence, never at the other positions), so log P(label) = logit − column 3."""
    s = ids.shape[1]
    last = s - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)  # works for left and right padding
    if answer_only:  # static: the last layer at the answer position only
        return _head(graphdef, state, lm_apply(graphdef, state, ids, mask, mult, add, answer=last)[0][:, 0],
                     vocab, idx, mass)
    hidden, _, _ = lm_apply(graphdef, state, ids, mask, mult, add)  # [B, S, D]
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
    return _head(graphdef, state, h, vocab, idx, mass)


def _head(graphdef, state, h, vocab, idx, mass):
    """h [B, D] answer-position hidden -> [B, 2] label logits (or [B, 3] with the log-sum-exp)."""
    if mass:
        full = lm_logits(graphdef, state, h).astype(jnp.float32)  # [B, V]
        lab = jnp.take_along_axis(full, vocab[idx], axis=1)  # [B, 2]
        return jnp.concatenate([lab, jax.nn.logsumexp(full, axis=1, keepdims=True)], axis=1)
    lg = lm_logits(graphdef, state, h, rows=vocab)  # [B, U]
    return jnp.take_along_axis(lg, idx, axis=1)  # [B, 2]


def _shared_label_logits(graphdef, state, pids, pmask, sids, smask, mult, add, vocab, idx, mass: bool = False,
                         answer_only: bool = True):
    """Shared-prefix scoring. pids/pmask [B, Sp]: one left-padded prefix per (condition, dilemma)
    unit; sids/smask [k·B, Ss]: the k suffixes of each unit (unit major), right-padded;
    mult/add [L, B, N] per unit; idx [k·B, 2]. -> [k·B, 2] (or [k·B, 3] with `mass`) as
    `_label_logits` gives for the whole rows prefix + suffix.

    The prefix runs once with a KV cache of its own length; the cache is repeated k times and the
    suffix attends to it (its left padding stays masked through `pmask`). Suffix positions continue
    from the prefix's real length, so positions, masks and sliding windows equal the unshared row's."""
    b, sp = pids.shape
    k = sids.shape[0] // b
    nl = len(mult)
    cfg = nnx.merge(graphdef, state).cfg
    zeros = jnp.zeros((b, sp, cfg.num_kv_heads, cfg.head_dim), jnp.float32)
    cache0 = tuple((zeros, zeros) for _ in range(nl))
    _, _, cache = lm_apply(graphdef, state, pids, pmask, mult, add, kv_cache=cache0, cache_index=0)
    ss = sids.shape[1]
    pad = jnp.zeros((k * b, ss, cfg.num_kv_heads, cfg.head_dim), jnp.float32)
    cache = tuple((jnp.concatenate([jnp.repeat(ck, k, axis=0), pad], axis=1),
                   jnp.concatenate([jnp.repeat(cv, k, axis=0), pad], axis=1)) for ck, cv in cache)
    pmask_r = jnp.repeat(pmask, k, axis=0)
    mask_buf = jnp.concatenate([pmask_r, smask], axis=1)  # [k·B, Sp + Ss]
    plen = pmask_r.sum(1).astype(jnp.int32)
    positions = plen[:, None] + jnp.maximum(jnp.cumsum(smask.astype(jnp.int32), axis=1) - 1, 0)
    mult_r, add_r = jnp.repeat(mult, k, axis=1), jnp.repeat(add, k, axis=1)
    last = jnp.maximum(smask.sum(1).astype(jnp.int32) - 1, 0)  # right-padded suffix: last real token
    hidden, _, _ = lm_apply(graphdef, state, sids, mask_buf, mult_r, add_r, positions=positions, kv_cache=cache,
                            cache_index=sp, answer=last if answer_only else None)
    h = hidden[:, 0] if answer_only else jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [k·B, D]
    return _head(graphdef, state, h, vocab, idx, mass)


_PROGRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _program(lm, shared: bool = False):
    fns = _PROGRAMS.get(lm)
    if fns is None:
        fns = _PROGRAMS[lm] = (jax.jit(partial(_label_logits, lm.graphdef), static_argnames=("mass", "answer_only")),
                               jax.jit(partial(_shared_label_logits, lm.graphdef),
                                       static_argnames=("mass", "answer_only")))
    return fns[1 if shared else 0]


class _PrefixPlan:
    """Host-side plan of the shared-prefix path for one ChoicePrompts: per dilemma its rows (k slots,
    −1 = none), the shared-prefix length and its rows' suffix tokens."""

    def __init__(self, prompts: "ChoicePrompts"):
        d_n = len(prompts.meta)
        self.lp = common_prefix_lengths(prompts.input_ids, prompts.attention_mask, prompts.dilemma, d_n)
        per = [np.flatnonzero(prompts.dilemma == d) for d in range(d_n)]
        self.k = max(1, max((len(r) for r in per), default=1))
        self.slots = np.full((d_n, self.k), -1, np.int64)
        for d, r in enumerate(per):
            self.slots[d, :len(r)] = r
        lengths = prompts.lengths.astype(np.int64)
        s = prompts.input_ids.shape[1]
        self.prefix = [prompts.input_ids[r[0], s - lengths[r[0]]: s - lengths[r[0]] + self.lp[d]] if len(r) else
                       np.zeros(0, np.int32) for d, r in enumerate(per)]
        self.suffix = {}
        for d, r in enumerate(per):
            for row in r:
                self.suffix[int(row)] = prompts.input_ids[row, s - lengths[row] + self.lp[d]:]
        self.slen = np.array([max((len(self.suffix[int(x)]) for x in r), default=0) for r in per], np.int64)
        self.has_rows = np.array([len(r) > 0 for r in per])

    def units(self, prompts, num_conditions: int, rows):
        """bool [C, D]: the (condition, dilemma) units with at least one row to score."""
        if rows is None:
            return np.broadcast_to(self.has_rows, (num_conditions, len(self.has_rows))).copy()
        rows = np.asarray(rows, bool)
        if rows.shape != (num_conditions, prompts.num_rows):
            raise JaxValuesError(f"rows mask must be [conditions, prompts] = [{num_conditions}, {prompts.num_rows}], "
                                 f"got {list(rows.shape)}")
        out = np.zeros((num_conditions, len(self.has_rows)), bool)
        np.logical_or.at(out, (slice(None), prompts.dilemma), rows)
        return out

    def order_key(self) -> np.ndarray:
        return self.lp * 1_000_000 + self.slen  # sort by prefix length, then suffix length


class ChoiceScorer:
    """Label logits for many (condition, prompt) rows with one compiled program per length bucket.

    share_prefix (default True): the rows of one dilemma (its option orders) share the KV cache
    of their longest common token prefix, computed once per (condition, dilemma) unit; only the
    suffixes are scored per row. Buckets: prefix length to `prefix_multiple`, suffix length to
    `suffix_multiple`; `batch_size` counts scored rows (units per batch = batch_size // rows per
    dilemma, at least 1). Label logits equal the unshared path (share_prefix=False) to float
    rounding (tests/test_evaluate_prefix.py)."""

    def __init__(self, lm, batch_size: int = 16, seq_multiple: int = 32, *, share_prefix: bool = True,
                 prefix_multiple: int = 32, suffix_multiple: int = 16, mesh=None, answer_only: bool = True):
        if batch_size < 1 or seq_multiple < 1 or prefix_multiple < 1 or suffix_multiple < 1:
            raise ConfigError(f"batch_size and the length multiples must be >= 1, got {batch_size}, {seq_multiple}, "
                              f"{prefix_multiple}, {suffix_multiple}")
        self.lm, self.batch_size, self.seq_multiple = lm, int(batch_size), int(seq_multiple)
        self.share_prefix, self.answer_only = bool(share_prefix), bool(answer_only)
        self.prefix_multiple, self.suffix_multiple = int(prefix_multiple), int(suffix_multiple)
        self._fn = _program(lm)
        self._shared_fn = _program(lm, shared=True)
        self._last_plan = None  # (prompts, plan) of the latest prompts scored
        # data parallel over a mesh (e.g. jaxvalues.sharding.data_mesh()): batches over `data`,
        # the batch (units per batch on the shared path) rounded up to a multiple of its size
        self.mesh = mesh if mesh is not None else getattr(lm, "mesh", None)
        self._ndev = 1 if self.mesh is None else int(self.mesh.shape["data"])
        if self.mesh is None:
            self._state = lm.state
        elif getattr(lm, "mesh", None) is self.mesh:
            self._state = lm.state
        else:
            from jaxvalues.sharding import place_state

            self._state = place_state(lm.state, self.mesh)
        self.batch_size = round_up(self.batch_size, self._ndev)

    def compilations(self) -> int:
        """How many programs the jitted scorer has compiled (shared by all scorers of this model;
        both paths: the unshared one per (batch, length) bucket, the shared-prefix one per
        (units, prefix bucket, suffix bucket))."""
        return int(self._fn._cache_size()) + int(self._shared_fn._cache_size())

    def _plan(self, prompts) -> _PrefixPlan:
        if self._last_plan is None or self._last_plan[0] is not prompts:
            self._last_plan = (prompts, _PrefixPlan(prompts))
        return self._last_plan[1]

    def _units_per_batch(self, plan) -> int:
        return round_up(max(1, self.batch_size // plan.k), self._ndev)

    def num_batches(self, prompts: ChoicePrompts, num_conditions: int, rows: np.ndarray | None = None) -> int:
        """Batches `logits` will run for these prompts and conditions (for a shared progress bar)."""
        if self.share_prefix:
            plan = self._plan(prompts)
            return num_batches(int(plan.units(prompts, num_conditions, rows).sum()), self._units_per_batch(plan))
        pairs = num_conditions * prompts.num_rows if rows is None else int(np.asarray(rows, bool).sum())
        return num_batches(pairs, self.batch_size)

    def logits(self, prompts: ChoicePrompts, conditions: Sequence, rows: np.ndarray | None = None,
               on_batch: Callable[[], None] | None = None, mass: bool = False) -> np.ndarray:
        """-> [C, P, 2] float32 logits (aligned label, violating label) per condition and row;
        with `mass=True` [C, P, 3], the third entry the log-sum-exp over the full vocabulary at the
        answer position (see `label_mass`).

        rows: optional bool [C, P]; pairs left False are not computed and come back NaN.
        on_batch: called after every batch (drives a caller's progress bar, see `num_batches`)."""
        cfg = self.lm.config
        bank = ConditionBank(conditions, cfg.num_layers, cfg.num_neurons)
        c_n, p_n = len(conditions), prompts.num_rows
        vocab, inv = np.unique(prompts.label_ids, return_inverse=True)
        inv = inv.reshape(-1, 2).astype(np.int32)
        u = round_up(len(vocab), 8)  # fixed label-vocab size: no recompilation across datasets
        vocab = np.concatenate([vocab, np.full(u - len(vocab), vocab[0])]).astype(np.int32)
        out = np.full((c_n, p_n, 3 if mass else 2), np.nan if rows is not None else 0.0, np.float32)
        vocab_j = jnp.asarray(vocab)
        if self.share_prefix:
            self._shared(prompts, bank, c_n, rows, on_batch, mass, vocab_j, inv, out)
            return out
        for pi, ci, n in flat_batches(prompts.lengths, c_n, self.batch_size, rows):
            ids, mask = bucket(prompts.input_ids[pi], prompts.attention_mask[pi], self.seq_multiple)
            mult, add = bank.batch(ci)
            res = self._fn(self._state, self._put(ids), self._put(mask), *self._put_iv(mult, add),
                           vocab_j, self._put(inv[pi]), mass=bool(mass), answer_only=self.answer_only)
            out[ci[:n], pi[:n]] = np.asarray(res)[:n]
            if on_batch is not None:
                on_batch()
        return out

    def _put(self, x):
        if self.mesh is None:
            return jnp.asarray(x)
        from jaxvalues.sharding import place_batch

        return place_batch(self.mesh, np.asarray(x))

    def _put_iv(self, mult, add):
        if self.mesh is None:
            return jnp.asarray(mult), jnp.asarray(add)
        from jaxvalues.sharding import intervention_sharding

        sh = intervention_sharding(self.mesh, self.lm.config, 3)
        return jax.device_put(mult, sh), jax.device_put(add, sh)

    def _shared(self, prompts, bank, c_n, rows, on_batch, mass, vocab_j, inv, out):
        plan = self._plan(prompts)
        k = plan.k
        units = plan.units(prompts, c_n, rows)
        rows_b = None if rows is None else np.asarray(rows, bool)
        ub = self._units_per_batch(plan)
        for di, ci, n in flat_batches(plan.order_key(), c_n, ub, units):
            sp = round_up(int(plan.lp[di].max()), self.prefix_multiple)
            ss = round_up(int(plan.slen[di].max()), self.suffix_multiple)
            pids = np.zeros((ub, sp), np.int32)
            pmask = np.zeros((ub, sp), np.int32)
            sids = np.zeros((ub * k, ss), np.int32)
            smask = np.zeros((ub * k, ss), np.int32)
            srow = np.zeros(ub * k, np.int64)
            for j, d in enumerate(di):
                pre = plan.prefix[d]
                if len(pre):
                    pids[j, sp - len(pre):] = pre
                    pmask[j, sp - len(pre):] = 1
                first = plan.slots[d, 0]
                for t in range(k):
                    r = plan.slots[d, t]
                    r = first if r < 0 else r
                    suf = plan.suffix[int(r)]
                    sids[j * k + t, :len(suf)] = suf
                    smask[j * k + t, :len(suf)] = 1
                    srow[j * k + t] = r
            mult, add = bank.batch(ci)
            res = np.asarray(self._shared_fn(self._state, self._put(pids), self._put(pmask), self._put(sids),
                                             self._put(smask), *self._put_iv(mult, add), vocab_j,
                                             self._put(inv[srow]), mass=bool(mass),
                                             answer_only=self.answer_only))
            for j in range(n):
                c, d = int(ci[j]), int(di[j])
                for t in range(k):
                    r = int(plan.slots[d, t])
                    if r >= 0 and (rows_b is None or rows_b[c, r]):
                        out[c, r] = res[j * k + t]
            if on_batch is not None:
                on_batch()


# ------------------------------------------------------------------------------- dilemma table


def label_mass(logits: np.ndarray) -> np.ndarray:
    """[..., 3] (aligned, violating, log-sum-exp) -> P(A) + P(B) over the full vocabulary, float64."""
    lg = np.asarray(logits, np.float64)
    if lg.shape[-1] != 3:
        raise JaxValuesError(f"label_mass needs logits scored with mass=True ([..., 3]), got {lg.shape}")
    return np.exp(lg[..., 0] - lg[..., 2]) + np.exp(lg[..., 1] - lg[..., 2])


def p_aligned_rows(logits: np.ndarray) -> np.ndarray:
    """[..., 2] (aligned, violating) logits -> P(aligned) = softmax(...)[0], float64."""
    lg = np.asarray(logits, np.float64)
    return 1.0 / (1.0 + np.exp(lg[..., 1] - lg[..., 0]))


def choice_table(prompts: ChoicePrompts, logits: np.ndarray, names: Sequence[str]):
    """Tidy per-(condition, dilemma) DataFrame from [C, P, 2] logits.

    Columns: condition, record_id, pair_id, value, lang, p_aligned_first, p_aligned_second,
    p_aligned, position_bias, chose_aligned. An order a dilemma was not rendered in is NaN and
    p_aligned is then the other order alone; a dilemma not scored at all under a condition
    (ChoiceScorer.logits(rows=...)) has NaN p_aligned and chose_aligned False."""
    import pandas as pd

    if len(names) != logits.shape[0]:
        raise JaxValuesError(f"{len(names)} condition names for {logits.shape[0]} conditions")
    p = p_aligned_rows(logits)  # [C, P]
    d_n = len(prompts.meta)
    per = np.full((len(names), d_n, 2), np.nan)
    per[:, prompts.dilemma, prompts.order] = p
    with warnings.catch_warnings():  # a dilemma not scored under a condition (rows mask) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        p_mean = np.nanmean(per, axis=2)
    bias = (per[..., 0] - per[..., 1]) / 2.0
    frames = []
    meta = pd.DataFrame(prompts.meta)
    for c, name in enumerate(names):
        f = meta.copy()
        f.insert(0, "condition", name)
        f["p_aligned_first"] = per[c, :, 0]
        f["p_aligned_second"] = per[c, :, 1]
        f["p_aligned"] = p_mean[c]
        f["position_bias"] = bias[c]
        f["chose_aligned"] = p_mean[c] > 0.5
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def evaluate_choice(lm, prompts: ChoicePrompts, conditions: Mapping[str, object], *, batch_size: int = 16,
                    seq_multiple: int = 32, scorer: ChoiceScorer | None = None):
    """Run every named condition (None = no intervention) over all prompts -> choice_table."""
    if not conditions:
        raise ConfigError("evaluate_choice: no conditions given (use {'baseline': None} for the model as is)")
    scorer = scorer or ChoiceScorer(lm, batch_size, seq_multiple)
    names = list(conditions)
    return choice_table(prompts, scorer.logits(prompts, [conditions[n] for n in names]), names)
