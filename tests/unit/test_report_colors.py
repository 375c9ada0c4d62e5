from types import SimpleNamespace

from kdistill.reporting.figures import SHADES, group_colors


def test_groups_of_one_role_get_distinct_shades_of_its_color():
    groups = [SimpleNamespace(role=r) for r in ("teacher", "scratch", "distilled", "distilled")]
    colors = group_colors(groups)
    assert colors[:3] == [SHADES["teacher"][0], SHADES["scratch"][0], SHADES["distilled"][0]]
    assert colors[3] == SHADES["distilled"][1] != colors[2]
