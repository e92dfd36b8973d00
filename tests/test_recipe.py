import pytest

from compressor.errors import UserError
from compressor.recipe import build_passes, load_recipe, parse_assignments, parse_recipe


def test_a_good_recipe_validates(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "target: edge\nbudget: {layers: 0.5}\npasses:\n  - inherit: {strategy: uniform}\n"
        "  - distill: {train.steps: 10, train: {lr: 0.001}, loss: {divergence: rkl}}\n  - export: {}\n"
    )
    recipe = load_recipe(path)
    assert recipe.target == "edge" and recipe.budget.layers == 0.5
    steps = build_passes(recipe.passes, "r.yaml")
    assert [s.name for s in steps] == ["inherit", "distill", "export"]
    train = steps[1].config.train
    assert (train.steps, train.lr, steps[1].config.loss.divergence) == (10, 0.001, "rkl")


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"passes": [{"distill": {"stpes": 5}}]}, "passes[0].distill.stpes: unknown key"),
        ({"passes": [{"inherit": {}}, {"distill": {"train": {"steps": "many"}}}]}, "passes[1].distill.train.steps"),
        ({"passes": [{"distill": {"train.stpes": 5}}]}, "passes[0].distill.train.stpes: unknown key"),
        ({"passes": [{"distill": {"steps": 5}}]}, "passes[0].distill: steps: this setting is now train.steps"),
        ({"passes": [{"distill": {"loss": "rkl"}}]}, "loss: this setting is now loss.divergence"),
        ({"passes": [{"lora_kd": {"rank": 4}}]}, "rank: this setting is now lora.rank"),
        ({"budegt": {"layers": 0.5}}, "budegt: unknown key"),
        ({"budget": {"layers": 0}}, "budget.layers"),
        ({"budget": {"layers": 0.5, "params": 0.5}}, "give one of layers, params, flops or latency"),
        ({"target": "tpu"}, "target"),
        ({"passes": [{"prune_everything": {}}]}, "unknown pass 'prune_everything'"),
        ({"passes": [{"inherit": {}, "distill": {}}]}, "one-key mapping"),
        ({"data": {"train": "x.txt", "evl": "y.txt"}}, "data.evl: unknown key"),
    ],
)
def test_recipe_errors_name_the_key_path(raw, message):
    with pytest.raises(UserError) as info:
        parse_recipe(raw, "recipe.yaml")
    assert message in str(info.value) and str(info.value).startswith("recipe.yaml: ")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("passes: [inherit: {\n")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        load_recipe(path)


def test_set_assignments_are_typed():
    assert parse_assignments(["steps=10", "lr=1e-3", "indices=[0, 2]"]) == {"steps": 10, "lr": 1e-3, "indices": [0, 2]}
    with pytest.raises(UserError, match="key=value"):
        parse_assignments(["steps"])
