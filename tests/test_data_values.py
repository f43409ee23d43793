"""The 12 values: order, names, groups, lookup and suggestions."""

import pytest

from jaxvalues.data.values import GROUPS, VALUE_IDS, VALUES, find_value, get_value, suggest_value, value_ids
from jaxvalues.errors import DataError


def test_order_names_and_groups_follow_the_authors():
    assert VALUE_IDS == ("prosperity", "democracy", "civility", "harmony", "freedom", "equality", "justice",
                         "rule_of_law", "patriotism", "dedication", "integrity", "friendliness")
    assert "".join(v.zh for v in VALUES) == "富强民主文明和谐自由平等公正法治爱国敬业诚信友善"
    assert [v.index for v in VALUES] == list(range(12))
    assert GROUPS == {"national": VALUE_IDS[:4], "social": VALUE_IDS[4:8], "personal": VALUE_IDS[8:]}
    assert get_value("rule_of_law").en == "Rule of Law" and get_value("rule_of_law").name("zh") == "法治"


@pytest.mark.parametrize("name", ["rule_of_law", "Rule of Law", "RULE-OF-LAW", " rule of law ", "法治", 7])
def test_lookup_by_id_english_chinese_or_index(name):
    assert get_value(name).id == "rule_of_law"


def test_unknown_names_suggest_the_closest():
    assert suggest_value("integrety") == "integrity"
    assert suggest_value("Freedum") == "freedom"
    assert find_value("honesty") is None and find_value(12) is None
    with pytest.raises(DataError, match=r"unknown value 'patriotsm' \(did you mean 'patriotism'\?\)"):
        get_value("patriotsm")
    with pytest.raises(DataError, match="expected one of: prosperity"):
        get_value("zzzzzz")


def test_value_ids_resolves_lists_and_single_names():
    assert value_ids(None) == VALUE_IDS
    assert value_ids("诚信") == ("integrity",)
    assert value_ids(["Harmony", "友善"]) == ("harmony", "friendliness")
