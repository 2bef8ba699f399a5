"""The orchestrator's rules with fake stages (milliseconds): skip, resume, --from, --until, refusal, relocation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sipe.run.pipeline import Pipeline, RunConfigChanged, Stage, flatten


class Fake:
    """Three stages a -> b -> c; each writes one file in the run folder and returns its path."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.calls: list[str] = []

    def stage(self, name: str):
        def fn() -> str:
            self.calls.append(name)
            path = self.out / name / "result.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
            return str(path)

        return fn

    def pipeline(self, config: dict, enabled_b: bool = True) -> Pipeline:
        stages = [Stage("a", self.stage("a"), ("data", "a"), ("a",)),
                  Stage("b", self.stage("b"), ("b",), ("b",), enabled=enabled_b, why="b is off"),
                  Stage("c", self.stage("c"), ("eval.split",), ("c",))]
        return Pipeline(self.out, stages, config)


CONFIG = {"data": {"root": "x"}, "a": {"lr": 1}, "b": {"n": 2}, "eval": {"split": "val", "other": 0}}


def _with(**changes: dict) -> dict:
    return {**CONFIG, **changes}


def test_a_rerun_skips_every_recorded_stage(tmp_path):
    fake = Fake(tmp_path / "run")
    results = fake.pipeline(CONFIG).run()
    assert fake.calls == ["a", "b", "c"]
    assert results["c"] == str(tmp_path / "run" / "c" / "result.txt")
    again = fake.pipeline(CONFIG)
    assert again.complete() and again.run() == results
    assert fake.calls == ["a", "b", "c"] and again.ran == []


def test_an_interrupted_stage_resumes_and_the_done_ones_are_skipped(tmp_path):
    fake = Fake(tmp_path / "run")
    fake.pipeline(CONFIG).run(until="a")
    (tmp_path / "run" / "b").mkdir()  # b started, then the process died before its record
    pipe = fake.pipeline(CONFIG)
    assert dict(pipe.status()) == {"a": "done (0.0 s)", "b": "interrupted: resumes", "c": "to do"}
    pipe.run()
    assert fake.calls == ["a", "b", "c"] and pipe.ran == ["b", "c"]


def test_until_stops_and_from_redoes_a_stage_and_the_later_ones(tmp_path):
    fake = Fake(tmp_path / "run")
    fake.pipeline(CONFIG).run(until="b")
    assert fake.calls == ["a", "b"] and not (tmp_path / "run" / "c").exists()
    fake.pipeline(CONFIG).run()
    (tmp_path / "run" / "c" / "stale.txt").write_text("old")
    fake.pipeline(CONFIG).run(start="b")
    assert fake.calls == ["a", "b", "c", "b", "c"]
    assert not (tmp_path / "run" / "c" / "stale.txt").exists()  # --from removes the stage's outputs first
    with pytest.raises(Exception, match="unknown stage 'z'"):
        fake.pipeline(CONFIG).run(start="z")


def test_a_changed_key_is_refused_with_the_first_stage_it_affects_and_that_from_is_accepted(tmp_path):
    fake = Fake(tmp_path / "run")
    fake.pipeline(CONFIG).run()
    with pytest.raises(RunConfigChanged, match=r"b\.n: 2 -> 3\); use another --out or --from b$"):
        fake.pipeline(_with(b={"n": 3})).run()
    # A dotted section: eval.split belongs to c; eval.other to no stage, so it changes nothing that was made.
    with pytest.raises(RunConfigChanged, match="--from c$"):
        fake.pipeline(_with(eval={"split": "test", "other": 0})).run()
    assert fake.pipeline(_with(eval={"split": "val", "other": 1})).complete() is True
    assert fake.calls == ["a", "b", "c"]
    fake.pipeline(_with(b={"n": 3})).run(start="b")
    assert fake.calls == ["a", "b", "c", "b", "c"]
    # A change that concerns only a disabled stage names the next one that runs.
    fake2 = Fake(tmp_path / "run2")
    fake2.pipeline(CONFIG, enabled_b=False).run()
    with pytest.raises(RunConfigChanged, match="--from c$"):
        fake2.pipeline(_with(b={"n": 3}), enabled_b=False).run()


def test_a_moved_run_folder_is_complete_and_its_results_point_inside_it(tmp_path):
    fake = Fake(tmp_path / "run")
    config = _with(data={"root": str(tmp_path / "run" / "data")})  # a path inside the run folder
    fake.pipeline(config).run()
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / ".stages").glob("*.json")]
    assert str(tmp_path) not in json.dumps(records)
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = Fake(tmp_path / "moved")
    pipe = moved.pipeline(_with(data={"root": str(tmp_path / "moved" / "data")}))
    assert pipe.complete()
    results = pipe.run()
    assert moved.calls == [] and results["a"] == str((tmp_path / "moved" / "a" / "result.txt").resolve())
    moved.pipeline(_with(data={"root": str(tmp_path / "moved" / "data")})).run(start="c")
    assert moved.calls == ["c"] and (tmp_path / "moved" / "c" / "result.txt").is_file()


def test_a_relative_run_folder_records_its_results_relative_to_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake = Fake(Path("runs") / "mine")  # as `sipe run --out runs/mine` gives it
    fake.pipeline(CONFIG).run()
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "mine" / ".stages").glob("?.json")]
    assert {r["result"] for r in records} == {f"<run>/{s}/result.txt" for s in "abc"}
    (tmp_path / "runs" / "mine").rename(tmp_path / "runs" / "moved")
    results = Fake(Path("runs") / "moved").pipeline(CONFIG).run()
    assert results["a"] == str(tmp_path / "runs" / "moved" / "a" / "result.txt")


def test_a_key_added_later_keeps_old_folders_complete_while_it_holds_the_old_behaviour(tmp_path):
    fake = Fake(tmp_path / "run")
    fake.pipeline(CONFIG).run()  # a folder made before "b.mode" existed
    legacy = {"b.mode": "old"}

    def newer(mode: str) -> Pipeline:
        return Pipeline(fake.out, fake.pipeline(CONFIG).stages, _with(b={"n": 2, "mode": mode}), legacy=legacy)

    assert newer("old").complete()
    with pytest.raises(RunConfigChanged, match=r"b\.mode: None -> 'new'\); use another --out or --from b$"):
        newer("new").run()
    newer("new").run(start="b")
    assert fake.calls == ["a", "b", "c", "b", "c"]
    assert newer("new").complete() and not newer("old").complete()
    # A folder made while the key existed keeps its records when the key is named legacy later.
    recent = Fake(tmp_path / "recent")
    config = _with(b={"n": 2, "mode": "old"})
    Pipeline(recent.out, recent.pipeline(config).stages, config).run()
    assert Pipeline(recent.out, recent.pipeline(config).stages, config, legacy=legacy).complete()


def test_a_recorded_key_that_becomes_incidental_keeps_the_folder_complete(tmp_path, monkeypatch):
    import sipe.run.pipeline as pipeline

    fake = Fake(tmp_path / "run")
    config = _with(a={"lr": 1, "plan": False})  # in stage a's section, so in its key while significant
    later = pipeline._INCIDENTAL
    monkeypatch.setattr(pipeline, "_INCIDENTAL", tuple(k for k in later if k != "plan"))
    fake.pipeline(config).run()  # "plan" recorded with the folder, as sipe run did before it became incidental
    assert not fake.pipeline(_with(a={"lr": 1, "plan": True})).complete()
    monkeypatch.setattr(pipeline, "_INCIDENTAL", later)
    assert fake.pipeline(_with(a={"lr": 1, "plan": True})).complete()
    assert not Fake(tmp_path / "new").pipeline(config).complete()  # a new folder: nothing recorded


def test_every_legacy_key_of_sipe_run_is_a_key_of_its_config():
    from sipe.config import to_dict
    from sipe.run.config import RunConfig, SyntheticSection
    from sipe.run.stages import LEGACY_VALUES

    keys = flatten(to_dict(RunConfig(synthetic=SyntheticSection())))
    assert set(LEGACY_VALUES) <= set(keys), set(LEGACY_VALUES) - set(keys)
