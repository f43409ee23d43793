"""Decision / semantic neuron kinds kept apart: kind column, per-kind access, the authors' layers."""

import numpy as np
import pandas as pd
import pytest

from jaxvalues.errors import ConfigError
from jaxvalues.identify.neuronset import NeuronSet, authors_layer_split, authors_layers, combined_neurons
from jaxvalues.identify.vape import stance_neurons, stance_select
from jaxvalues.stats.accumulator import NeuronStats


def test_authors_layers_32_exact():
    assert authors_layers(32, "decision") == [0, 1, 2, 3, 4, 27, 28, 29, 30, 31]
    assert authors_layers(32, "semantic") == list(range(5, 27))
    s = authors_layer_split(32)
    assert (s["low"], s["high"], s["scaled"]) == (4, 27, False)
    assert authors_layers(32, "combined") == list(range(32))


@pytest.mark.parametrize("L, low, high", [(24, 3, 20), (30, 4, 25), (3, 0, 2), (1, 0, 0)])
def test_authors_layers_scaled(L, low, high):
    # low = round(4/31·(L−1)), high = round(27/31·(L−1)): 24 -> 2.97, 20.03; 30 -> 3.74, 25.26
    s = authors_layer_split(L)
    assert (s["low"], s["high"]) == (low, high) and s["scaled"] == (L != 32)
    dec, sem = authors_layers(L, "decision"), authors_layers(L, "semantic")
    assert dec == [i for i in range(L) if i <= low or i >= high]
    assert sem == [i for i in range(L) if low < i < high]
    assert sorted(dec + sem) == list(range(L))  # a partition of the layers


def test_authors_layers_bad_input():
    with pytest.raises(ConfigError):
        authors_layers(32, "other")
    with pytest.raises(ConfigError):
        authors_layer_split(0)


def _set():
    rows = [
        {"value": "integrity-support", "layer": 0, "neuron": 1, "score": -0.1, "method": "vape-decision", "rank": 0,
         "kind": "decision"},
        {"value": "integrity-support", "layer": 1, "neuron": 2, "score": -0.2, "method": "vape-decision", "rank": 1,
         "kind": "decision"},
        {"value": "integrity-support", "layer": 1, "neuron": 3, "score": -0.1, "method": "vape-semantic", "rank": 0,
         "kind": "semantic"},
        {"value": "integrity-support", "layer": 2, "neuron": 4, "score": -0.2, "method": "vape-semantic", "rank": 1,
         "kind": "semantic"},
        {"value": "integrity-conflict", "layer": 2, "neuron": 5, "score": -0.1, "method": "vape-decision", "rank": 0,
         "kind": "decision"},
    ]
    return NeuronSet.from_rows(rows, num_layers=3, num_neurons=10)


def test_neurons_and_to_dict_per_kind(tmp_path):
    ns = _set()
    assert ns.kinds == ["decision", "semantic"]
    assert ns.neurons("integrity-support") == {0: [1], 1: [2, 3], 2: [4]}  # all kinds merged
    assert ns.neurons("integrity-support", kind="decision") == {0: [1], 1: [2]}
    assert ns.neurons("integrity-support", kind="semantic") == {1: [3], 2: [4]}
    assert ns.neurons(kind="decision") == {0: [1], 1: [2], 2: [5]}
    assert ns.to_dict(kind="semantic") == {"integrity-support": {1: [3], 2: [4]}, "integrity-conflict": {}}
    assert ns.to_dict(by_kind=True)["integrity-support"] == {"decision": {0: [1], 1: [2]},
                                                             "semantic": {1: [3], 2: [4]}}
    assert ns.to_dict()["integrity-support"] == {0: [1], 1: [2, 3], 2: [4]}
    # L = 3: decision layers {0, 2}, semantic {1}
    assert combined_neurons(ns, "integrity-support") == {0: [1], 1: [3]}
    assert combined_neurons(ns, "integrity-conflict") == {2: [5]}
    with pytest.raises(ConfigError):
        ns.neurons("integrity-support", kind="other")
    back = NeuronSet.load(ns.save(tmp_path / "k.parquet"))
    assert back.to_dict(by_kind=True) == ns.to_dict(by_kind=True)
    assert list(back.table["kind"]) == list(ns.table["kind"])


def test_old_files_without_kind_load(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = _set().table.drop(columns=["kind"])
    path = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pandas(old, preserve_index=False), path)
    ns = NeuronSet.load(path)
    assert "kind" in ns.table.columns and ns.table["kind"].isna().all() and ns.kinds == []
    assert ns.to_dict()["integrity-support"] == {0: [1], 1: [2, 3], 2: [4]}
    assert ns.neurons("integrity-support", kind="decision") == {}
    # rows from code that never sets a kind
    plain = NeuronSet.from_scores("x", np.arange(6.0).reshape(2, 3), "contrast", top_k=2)
    assert plain.table["kind"].isna().all()
    assert len(NeuronSet.concat([plain, ns])) == len(plain) + len(ns)
    assert len(NeuronSet(pd.DataFrame(old))) == 5


def test_stance_neurons_record_kind():
    rng = np.random.default_rng(3)
    names = [f"{v}-{s}" for v in ("integrity", "justice") for s in ("support", "conflict")]
    stats = NeuronStats.zeros(names, 3, 200)
    stats.tokens[:] = 1000
    stats.active[:] = rng.integers(0, 1000, (4, 3, 200))
    ns, _ = stance_neurons(stats)
    assert set(ns.kinds) == {"decision", "semantic"}
    for kind in ("decision", "semantic"):
        rows = ns.table[ns.table["kind"] == kind]
        assert set(rows["method"]) == {f"vape-{kind}"}
        res = stance_select(stats, "integrity", kind)
        want = res.to_neuronset().neurons("integrity-support")
        assert ns.neurons("integrity-support", kind=kind) == want
    assert ns.info["layers"] == authors_layer_split(3)
    assert combined_neurons(ns, "integrity-support") == {
        layer: ids for layer, ids in (
            (lay, sorted(set(ns.neurons("integrity-support", kind="decision").get(lay, [])) if lay in (0, 2)
                         else set(ns.neurons("integrity-support", kind="semantic").get(lay, []))))
            for lay in range(3)) if ids}
