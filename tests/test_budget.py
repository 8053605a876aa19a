"""The per-stage fine-tune budget: hand-computed splits, exact integer sums, early stops, bad input, and the planned
stage counts against real pipeline runs."""

import pytest
from conftest import image_batches
from test_pipelines import Plain, X

from entropy_importance.pipelines import Stage, StageBudget, create_pipeline, planned_stages, split_budget


@pytest.mark.parametrize("total, stages, structure, share, expected", [
    # paper: the final stage gets round(share x total), the others split the rest (floor((i+1)a/n) - floor(ia/n))
    (10, 4, "paper", 0.5, [1, 2, 2, 5]),
    (7, 3, "paper", 0.25, [2, 3, 2]),        # final round(1.75) = 2, the rest 5 over 2
    (5, 2, "paper", 0.5, [2, 3]),            # final round(2.5) = 3 (halves up)
    (100, 5, "paper", 0.5, [12, 13, 12, 13, 50]),
    (9, 3, "paper", 1.0, [0, 0, 9]),
    (9, 3, "paper", 0.0, [4, 5, 0]),
    # even: everything over every stage, the final one included
    (10, 4, "even", 0.5, [2, 3, 2, 3]),
    (3, 4, "even", 0.9, [0, 1, 1, 1]),       # final_share is not used
    (8, 1, "paper", 0.5, [8]),               # a single stage is the final one: all of it
    (0, 3, "paper", 0.5, [0, 0, 0]),
    (1.0, 3, "paper", 0.5, [0.25, 0.25, 0.5]),
    (3.0, 4, "even", 0.5, [0.75, 0.75, 0.75, 0.75]),
])
def test_hand_computed_splits(total, stages, structure, share, expected):
    shares = split_budget(total, stages, structure=structure, final_share=share)
    assert shares == pytest.approx(expected)
    if isinstance(total, int):
        assert all(isinstance(s, int) for s in shares) and sum(shares) == total


@pytest.mark.parametrize("total", [1, 7, 1000, 4001])
@pytest.mark.parametrize("stages", [1, 2, 5, 58])
@pytest.mark.parametrize("structure", ["even", "paper"])
def test_integer_shares_sum_to_the_total_and_differ_by_at_most_one(total, stages, structure):
    shares = split_budget(total, stages, structure=structure, final_share=0.3)
    assert sum(shares) == total and len(shares) == stages
    others = shares if structure == "even" else shares[:-1]
    assert not others or max(others) - min(others) <= 1


def test_a_pipeline_that_stops_early_leaves_the_unspent_shares_to_the_final_stage():
    budget = StageBudget(10, 4)  # planned [1, 2, 2, 5]
    got = [budget(Stage(0, "round", "round 1")), budget(Stage(1, "final", "final"))]
    assert got == [1, 9] and sum(got) == 10


def test_a_stage_past_the_plan_is_a_clear_error():
    budget = StageBudget(10, 3)
    with pytest.raises(ValueError, match=r"^stage 2 is past the 3 planned stages"):
        budget(Stage(2, "layer", "conv"))


@pytest.mark.parametrize("args, kwargs, message", [
    ((-1, 3), {}, "total must be a finite number >= 0"),
    ((True, 3), {}, "total must be a finite number >= 0"),
    ((float("nan"), 3), {}, "total must be a finite number >= 0"),
    ((10, 0), {}, "stages must be an integer >= 1"),
    ((10, 2.0), {}, "stages must be an integer >= 1"),
    ((10, 3), {"structure": "uneven"}, "structure must be one of even, paper"),
    ((10, 3), {"final_share": 1.5}, r"final_share must be a number in \[0, 1\]"),
])
def test_bad_input_is_one_clear_error(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        StageBudget(*args, **kwargs)


def test_a_luo_wu_run_spends_exactly_the_planned_shares():
    model = Plain().eval()
    pipe = create_pipeline("luo-wu")
    stages = planned_stages(pipe, model, ratio=0.25)
    budget = StageBudget(100, stages)
    spent = []
    _, report = pipe.run(model, X, calibration_data=image_batches(2, 8, 16), ratio=0.25,
                         finetune=lambda m, stage: spent.append((stage.kind, budget(stage))))
    assert stages == len(report.stages) == 5  # four layers and the final fine-tune
    assert spent == [("layer", 12), ("layer", 13), ("layer", 12), ("layer", 13), ("final", 50)]


@pytest.mark.parametrize("name, options, target", [
    ("luo-wu", {"layers": ["features.1.0", "features.3.0"]}, {"ratio": 0.5}),
    ("luo-wu", {}, {"ratios": {"features.0.0": 0.5, "features.2.0": 0.0}}),
    ("luo-wu", {}, {"ratio": 0.0}),
    ("fec", {}, {"ratio": 0.3}),
    ("fec", {"order": "backward"}, {"speed_up": 1.5}),
    ("tang", {}, {"speed_up": 1.5}),
])
def test_planned_stages_match_real_runs(name, options, target):
    model = Plain().eval()
    pipe = create_pipeline(name, **options)
    _, report = pipe.run(model, X, calibration_data=image_batches(2, 8, 16), **target)
    assert planned_stages(pipe, model, **target) == len(report.stages)


def test_planned_stages_of_iterative_pipelines_are_upper_bounds():
    model = Plain().eval()
    assert planned_stages(create_pipeline("efp", rounds=3), model, speed_up=2.0) == 4
    assert planned_stages(create_pipeline("2pfpce", max_steps=7), model, speed_up=2.0) == 8
    _, report = create_pipeline("efp", rounds=3).run(model, X, calibration_data=image_batches(2, 8, 16),
                                                     speed_up=1.5)
    assert len(report.stages) <= 4


def test_an_unknown_pipeline_class_asks_for_the_count():
    from entropy_importance.pipelines import Pipeline

    class Mine(Pipeline):
        name = "mine"

    with pytest.raises(TypeError, match="give StageBudget the stage count"):
        planned_stages(Mine(), Plain())
