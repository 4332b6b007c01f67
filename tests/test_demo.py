"""`vidadapt demo` end to end on a very small synthetic set (the real demo is `make demo`)."""

import json

from vidadapt.cli import main
from vidadapt.commands.demo import CONFIGS, RUNS, plan, training_clips
from vidadapt.config import load_config

SMALL = [
    "--set", "data.synthetic.num_train=26", "--set", "data.synthetic.num_val=13",
    "--set", "data.batch_size=13", "--set", "optim.epochs=1", "--set", "data.num_workers=0",
]


def test_demo_writes_table_chart_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the synthetic set is generated under .cache/ here
    out = tmp_path / "demo.json"
    args = ["--only", "linear", "aim_st", "--work-dir", "runs", "--json", str(out), *SMALL]
    code = main(["demo", *args])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"linear", "aim_st"}
    for r in report["results"].values():
        assert set(r) == {"top1", "tunable_params", "seconds"}
        assert 0 <= r["top1"] <= 100 and r["seconds"] > 0
    # linear: the head only (128 * 13 + 13); AIM S+T adds adapters, temporal embedding, ln_post.
    assert report["results"]["linear"]["tunable_params"] == 128 * 13 + 13
    assert report["results"]["aim_st"]["tunable_params"] > 50_000
    assert (tmp_path / "runs" / "demo.png").stat().st_size > 1000
    table = capsys.readouterr().out
    assert table.startswith("demo: 2 trainings, 52 training clips in all")
    assert "AIM S+T" in table and "linear probe" in table



def test_the_demo_trains_on_a_third_of_the_recipes_clips():
    """A 2-core machine three times slower than the README's ran the recipes' 16 epochs past
    15 minutes: the demo's budget is at most a third of that work, and it says so first."""
    runs = plan(list(RUNS), [])
    recipes = [load_config(CONFIGS / RUNS[name][0], RUNS[name][1]) for name, _ in runs]
    assert sum(map(training_clips, recipes)) == 6 * 16 * 1300
    assert 3 * sum(training_clips(cfg) for _, cfg in runs) <= sum(map(training_clips, recipes))
    assert all(cfg.optim.epochs == 5 and cfg.data.batch_size == 16 for _, cfg in runs)
