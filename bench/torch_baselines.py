"""The PyTorch baselines the benchmarks compare against (transformers models, forward hooks).

Collection (per condition: count act > 0, Σ act, Σ act² over the counted tokens, LAPE-style):
- `NaiveCollector`: what a researcher writes first: the full causal LM (LM head included),
  `torch.no_grad()`, hooks on every FFN activation module, examples of a condition taken in
  dataset order in batches of `batch_size`, right-padded to the longest row of the batch.
- `CarefulCollector`: the strongest variant: the base model without the LM head,
  `torch.inference_mode()`, exactly jaxvalues' batch plan (`plan_batches` + `assemble`: same
  padded shapes, rows of several conditions per batch), and hooks that reduce each row with
  batched matrix-vector products (weights = the row's counted tokens) into its condition.

Evaluation (label logits of the two options at the last token, 13 conditions):
- `naive_choice_logits`: one forward per (intervention, batch of prompts) through the full model
  with a hook that zeroes the intervention's neurons, then `logits[:, -1]` (full vocabulary).
- `careful_choice_logits`: base model, inference_mode, jaxvalues' (condition, prompt) batches and
  buckets, per-row multipliers in the hook, hidden state of the last token times the label rows.
"""

from __future__ import annotations

import numpy as np


def _layers(model):
    inner = model.model if hasattr(model, "model") else model
    return inner.layers


def act_modules(model):
    return [layer.mlp.act_fn for layer in _layers(model)]


def _positions(mask):
    import torch

    return torch.clamp(torch.cumsum(mask, -1) - 1, min=0)


class _Stats:
    def __init__(self, num_conditions, num_layers, num_neurons):
        self.active = np.zeros((num_conditions, num_layers, num_neurons), np.int64)
        self.sum = np.zeros((num_conditions, num_layers, num_neurons), np.float64)
        self.sumsq = np.zeros((num_conditions, num_layers, num_neurons), np.float64)
        self.tokens = np.zeros(num_conditions, np.int64)


class NaiveCollector:
    def __init__(self, model, num_conditions: int, batch_size: int, pad_id: int):
        self.model, self.c, self.batch_size, self.pad_id = model, num_conditions, batch_size, pad_id
        self.mods = act_modules(model)

    def run(self, examples, counts):
        import torch

        model, n_layers = self.model, len(self.mods)
        num_neurons = model.config.intermediate_size
        stats = _Stats(self.c, n_layers, num_neurons)
        acc = [None] * 3
        cur = {}

        def make_hook(i):
            def hook(mod, inp, out):
                w = cur["w"]
                acc[0][i] += ((out > 0) & (w > 0)).sum((0, 1))
                acc[1][i] += (out * w).sum((0, 1), dtype=torch.float64)
                acc[2][i] += (out * out * w).sum((0, 1), dtype=torch.float64)
            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(self.mods)]
        try:
            with torch.no_grad():
                for c in range(self.c):
                    idx = [i for i, ex in enumerate(examples) if ex.condition == c]
                    acc[0] = torch.zeros(n_layers, num_neurons, dtype=torch.int64)
                    acc[1] = torch.zeros(n_layers, num_neurons, dtype=torch.float64)
                    acc[2] = torch.zeros(n_layers, num_neurons, dtype=torch.float64)
                    for s in range(0, len(idx), self.batch_size):
                        rows = idx[s:s + self.batch_size]
                        width = max(len(examples[i]) for i in rows)
                        ids = np.full((len(rows), width), self.pad_id, np.int64)
                        attn = np.zeros((len(rows), width), np.int64)
                        w = np.zeros((len(rows), width), np.float32)
                        for r, i in enumerate(rows):
                            k = len(examples[i])
                            ids[r, :k], attn[r, :k], w[r, :k] = examples[i].ids, 1, counts[i]
                        cur["w"] = torch.from_numpy(w)[..., None]
                        model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attn))
                        stats.tokens[c] += int(w.sum())
                    stats.active[c] = acc[0].numpy()
                    stats.sum[c] = acc[1].numpy()
                    stats.sumsq[c] = acc[2].numpy()
        finally:
            for h in handles:
                h.remove()
        return stats


class CarefulCollector:
    def __init__(self, model, num_conditions: int, batch_size: int, pad_id: int, max_tokens: int | None = None,
                 buckets=None):
        self.base = model.model  # no LM head
        self.c, self.batch_size, self.pad_id = num_conditions, batch_size, pad_id
        self.max_tokens, self.buckets = max_tokens, buckets
        self.mods = act_modules(model)
        self.num_neurons = model.config.intermediate_size

    def run(self, examples, counts):
        import torch

        from jaxvalues.stats.accumulator import MAX_BATCH_TOKENS
        from jaxvalues.stats.batching import assemble, plan_batches

        ids_l = [np.asarray(ex.ids, np.int32) for ex in examples]
        plan = plan_batches([len(x) for x in ids_l], [ex.condition for ex in examples], self.batch_size,
                            self.max_tokens or MAX_BATCH_TOKENS, self.buckets)
        n_layers = len(self.mods)
        stats = _Stats(self.c, n_layers, self.num_neurons)
        active = torch.zeros(self.c, n_layers, self.num_neurons, dtype=torch.int64)
        sums = torch.zeros(self.c, n_layers, self.num_neurons, dtype=torch.float64)
        sqs = torch.zeros(self.c, n_layers, self.num_neurons, dtype=torch.float64)
        cur = {}

        def make_hook(i):
            def hook(mod, inp, out):
                w = cur["w"]  # [B, S] float 0/1: counted tokens; rows may belong to different conditions
                per_row = torch.stack([torch.einsum("bs,bsn->bn", w, (out > 0).float()),
                                       torch.einsum("bs,bsn->bn", w, out),
                                       torch.einsum("bs,bsn->bn", w, out * out)])  # [3, B, N]
                rows, conds = cur["rows"], cur["conds"]
                per_row = per_row[:, rows].double()
                active[:, i].index_add_(0, conds, per_row[0].round().long())
                sums[:, i].index_add_(0, conds, per_row[1])
                sqs[:, i].index_add_(0, conds, per_row[2])
            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(self.mods)]
        try:
            with torch.inference_mode():
                for b in plan:
                    bi, ba, bc = assemble(b, ids_l, counts, self.pad_id)
                    w = (bc * ba).astype(np.float32)
                    cur["w"] = torch.from_numpy(w)
                    cur["rows"] = torch.arange(len(b.indices))
                    cur["conds"] = torch.tensor(b.row_conditions, dtype=torch.long)
                    self.base(input_ids=torch.from_numpy(bi.astype(np.int64)),
                              attention_mask=torch.from_numpy(ba.astype(np.int64)))
                    for r, c in enumerate(b.row_conditions):
                        stats.tokens[c] += int(w[r].sum())
        finally:
            for h in handles:
                h.remove()
        stats.active[:], stats.sum[:], stats.sumsq[:] = active.numpy(), sums.numpy(), sqs.numpy()
        return stats


# ------------------------------------------------------------------------------------ evaluation


def _zero_hooks(model, neurons: dict[int, np.ndarray]):
    import torch

    mods = act_modules(model)
    handles = []
    for layer, idx in neurons.items():
        t = torch.as_tensor(np.asarray(idx, np.int64))

        def hook(mod, inp, out, t=t):
            out[..., t] = 0.0
            return out
        handles.append(mods[layer].register_forward_hook(hook))
    return handles


def naive_choice_logits(model, prompts, conditions: list[dict | None], batch_size: int) -> np.ndarray:
    """-> [C, P, 2] (aligned, violating) label logits. conditions: {layer: neuron idx} or None."""
    import torch

    p_n = prompts.num_rows
    out = np.zeros((len(conditions), p_n, 2), np.float32)
    rows = np.arange(p_n)
    with torch.no_grad():
        for c, neurons in enumerate(conditions):
            handles = _zero_hooks(model, neurons or {})
            try:
                for s in range(0, p_n, batch_size):
                    r = rows[s:s + batch_size]
                    mask = prompts.attention_mask[r]
                    width = int(mask.sum(1).max())  # tokenizer-style padding to the batch's longest
                    ids = torch.from_numpy(prompts.input_ids[r][:, -width:].astype(np.int64))
                    m = torch.from_numpy(mask[:, -width:].astype(np.int64))
                    logits = model(input_ids=ids, attention_mask=m, position_ids=_positions(m)).logits[:, -1]
                    lab = torch.from_numpy(prompts.label_ids[r].astype(np.int64))
                    out[c, r] = torch.gather(logits, 1, lab).numpy()
            finally:
                for h in handles:
                    h.remove()
    return out


def careful_choice_logits(model, prompts, bank, batch_size: int, seq_multiple: int = 32) -> np.ndarray:
    """Base model + label rows only, jaxvalues' batches; bank: the conditions as a jaxvalues
    `ConditionBank` (act*mult + add, the same per-batch arrays jaxvalues builds)."""
    import torch

    from jaxvalues.evaluate.batching import bucket, flat_batches

    base = model.model
    w_out = model.get_output_embeddings().weight
    mods = act_modules(model)
    cur = {}

    def make_hook(i):
        def hook(mod, inp, out):
            return torch.addcmul(cur["add"][i][:, None, :], out, cur["mult"][i][:, None, :])
        return hook

    c_n, p_n = len(bank), prompts.num_rows
    out = np.zeros((c_n, p_n, 2), np.float32)
    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(mods)]
    try:
        with torch.inference_mode():
            for pi, ci, n in flat_batches(prompts.lengths, c_n, batch_size):
                ids, mask = bucket(prompts.input_ids[pi], prompts.attention_mask[pi], seq_multiple)
                mult, add = bank.batch(ci)
                cur["mult"], cur["add"] = torch.from_numpy(np.ascontiguousarray(mult)), torch.from_numpy(
                    np.ascontiguousarray(add))
                m = torch.from_numpy(mask.astype(np.int64))
                h = base(input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=m,
                         position_ids=_positions(m)).last_hidden_state[:, -1]  # left-padded: last = real
                lab = torch.from_numpy(prompts.label_ids[pi].astype(np.int64))  # [B, 2]
                lg = torch.einsum("bd,bkd->bk", h, w_out[lab])
                out[ci[:n], pi[:n]] = lg.numpy()[:n]
    finally:
        for h_ in handles:
            h_.remove()
    return out
