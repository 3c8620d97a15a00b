"""make verify: its fixed sample resolves to committed runs, and the comparison tells a bitwise
repeat from a changed history."""

from paperlib import sweeps
from paperlib.config import preset
from paperlib.paths import COMMITTED_RUNS
from paperlib.store import load_result
from paperlib.verify import SAMPLE, _registered, compare


def test_every_sampled_run_is_a_committed_run_of_its_figure():
    for fig_id, where in SAMPLE:
        _, _, configs = _registered(fig_id)
        matches = [c for c in configs if all(getattr(c, k) == v for k, v in where.items())]
        assert matches, (fig_id, where)
        assert load_result(matches[0], COMMITTED_RUNS) is not None, (fig_id, where)


def test_compare_tells_a_bitwise_repeat_from_a_changed_history(tmp_path):
    cfg = preset("smoke", dataset="synthetic", device="cpu")
    (a,) = sweeps.run_all([cfg], root=tmp_path / "a", workers=1)
    (b,) = sweeps.run_all([cfg], root=tmp_path / "b", workers=1)
    same = compare(a, b)
    assert same["bitwise"] and same["train_loss_max_rel"] == 0.0
    (c,) = sweeps.run_all([cfg.replace(seed=1)], root=tmp_path / "c", workers=1)
    other = compare(a, c)
    assert not other["bitwise"] and other["train_loss_max_rel"] > 0
