"""The teacher cache in real runs: equal to the live teacher, keyed on everything, reused."""

import json

import numpy as np
import pytest
import torch

from kdistill.cache import CacheError
from kdistill.cli.main import main
from kdistill.config import apply_overrides
from kdistill.data import build_data
from kdistill.experiment import build_teacher, code_trust, prepare_teacher_cache, run
from kdistill.teachers.cached import CachedTeacher

from .conftest import digits_config

QUIET = {"progress": False, "log": lambda _: None}


def cached_config(tmp_path, teacher_run, *extra):
    return digits_config(
        tmp_path,
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        "kd.teacher_cache.enabled=true",
        "data.augment.crop_padding=1",
        "data.augment.hflip=true",
        *extra,
    )


def prepare(cfg, **kw):
    data = build_data(cfg.data)
    teacher = build_teacher(cfg, data, lambda _: None, code_trust(cfg))
    cache = prepare_teacher_cache(
        cfg,
        data,
        teacher,
        torch.device("cpu"),
        progress=False,
        log=kw.pop("log", lambda _: None),
        **kw,
    )
    return data, teacher, cache


@pytest.mark.parametrize("topk", [None, 3])
def test_cached_outputs_equal_the_live_teacher_on_the_same_views(tmp_path, teacher_run, topk):
    extra = ["kd.teacher_cache.dtype=float32"] + ([f"kd.teacher_cache.topk={topk}"] if topk else [])
    cfg = cached_config(tmp_path, teacher_run, *extra)
    data, teacher, cache = prepare(cfg)
    assert cache.layout.views_per_sample == 18  # 3x3 offsets x 2 flips: the whole space
    from kdistill.experiment import build_train_loader

    loader = build_train_loader(cfg, data, torch.device("cpu"), cache=cache)
    cached = CachedTeacher(cache, temperature=cfg.kd.temperature)
    batch = next(iter(loader))
    live = teacher.live(batch.inputs)
    got = cached(batch.inputs, sample_ids=batch.sample_ids, views=batch.views)
    if topk is None:
        torch.testing.assert_close(got.logits, live.logits, rtol=1e-5, atol=1e-5)
    else:
        p_live = torch.softmax(live.logits / cfg.kd.temperature, dim=1)
        top = p_live.topk(topk, dim=1)
        torch.testing.assert_close(
            got.probs.gather(1, top.indices), top.values, rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(got.probs.sum(1), torch.ones(len(got.probs)))


def test_float16_cache_is_close(tmp_path, teacher_run):
    cfg = cached_config(
        tmp_path, teacher_run, "data.augment.hflip=false", "data.augment.crop_padding=0"
    )
    data, teacher, cache = prepare(cfg)
    assert cache.layout.views_per_sample == 1 and np.asarray(cache.logits).dtype == np.float16
    from kdistill.experiment import build_eval_loaders, build_train_loader

    batch = next(iter(build_train_loader(cfg, data, torch.device("cpu"))))
    got = CachedTeacher(cache)(batch.inputs, sample_ids=batch.sample_ids, views=batch.views)
    torch.testing.assert_close(got.logits, teacher.live(batch.inputs).logits, rtol=2e-3, atol=2e-2)
    del build_eval_loaders


@pytest.mark.parametrize(
    "change",
    [
        "data.normalize=false",  # preprocessing
        "data.augment.crop_padding=2",  # augmentation views
        "data.split_seed=1",  # dataset / sample ids
        "kd.teacher_cache.views=4",  # how many views are stored
        "kd.teacher_cache.dtype=float32",  # storage
    ],
)
def test_everything_that_changes_outputs_changes_the_fingerprint(tmp_path, teacher_run, change):
    base = cached_config(tmp_path, teacher_run)
    _, _, a = prepare(base)
    _, _, b = prepare(apply_overrides(base, [change]))
    assert a.fingerprint != b.fingerprint and a.path != b.path


def test_a_changed_teacher_weight_invalidates_an_explicit_cache_dir(tmp_path, teacher_run):
    cfg = cached_config(tmp_path, teacher_run, f"kd.teacher_cache.dir={tmp_path / 'cache'}")
    data, teacher, cache = prepare(cfg)
    with torch.no_grad():
        next(teacher.members[0].model.parameters()).view(-1)[0] += 1e-3  # one weight, slightly
    strict = apply_overrides(cfg, ["kd.teacher_cache.on_mismatch=error"])
    with pytest.raises(CacheError, match="needs .*another teacher"):
        prepare_teacher_cache(
            strict, data, teacher, torch.device("cpu"), progress=False, log=lambda _: None
        )
    messages = []
    rebuilt = prepare_teacher_cache(
        cfg, data, teacher, torch.device("cpu"), progress=False, log=messages.append
    )
    assert rebuilt.fingerprint != cache.fingerprint
    assert any("rebuilding" in m for m in messages)


def test_a_damaged_cache_is_said_to_be_damaged_and_rebuilt(tmp_path, teacher_run):
    cfg = cached_config(tmp_path, teacher_run, f"kd.teacher_cache.dir={tmp_path / 'cache'}")
    data, teacher, cache = prepare(cfg)
    logits = cache.path / "logits.npy"
    logits.write_bytes(logits.read_bytes()[:-8])
    messages = []
    rebuilt = prepare_teacher_cache(
        cfg, data, teacher, torch.device("cpu"), progress=False, log=messages.append
    )
    assert rebuilt.fingerprint == cache.fingerprint
    (line,) = [m for m in messages if "rebuilding" in m]
    assert line.startswith(f"the teacher cache {cache.path} is damaged (teacher-cache file ")
    assert line.endswith("; rebuilding it") and "delete" not in line and "--rebuild" not in line


def test_training_reads_the_cache_and_runs_share_it(tmp_path, teacher_run):
    messages = []
    first = run(cached_config(tmp_path, teacher_run), progress=False, log=messages.append)
    assert any("computing" in m for m in messages)
    assert first.summary["teacher_cache"].startswith(str(tmp_path))
    messages.clear()
    # another temperature and weights: same teacher outputs, so the cache is reused as is
    second = run(
        cached_config(tmp_path, teacher_run, "kd.temperature=8", "kd.alpha=0.5"),
        progress=False,
        log=messages.append,
    )
    assert any("reading" in m for m in messages) and not any("computing" in m for m in messages)
    assert second.summary["teacher_cache"] == first.summary["teacher_cache"]
    assert second.summary["test_top1"] > 0.5 and "test_agreement" in second.summary


def test_cached_and_online_training_agree(tmp_path, teacher_run):
    extra = [
        "kd.teacher_cache.dtype=float32",
        "train.deterministic=true",
        "data.augment.hflip=false",
        "data.augment.crop_padding=0",
    ]
    cached = run(cached_config(tmp_path / "c", teacher_run, *extra), **QUIET)
    online = run(
        apply_overrides(
            cached_config(tmp_path / "o", teacher_run, *extra), ["kd.teacher_cache.enabled=false"]
        ),
        **QUIET,
    )
    assert cached.summary["test_top1"] == pytest.approx(online.summary["test_top1"], abs=0.006)


def test_batch_statistics_teachers_fall_back_to_online(tmp_path, teacher_run):
    messages = []
    cfg = cached_config(tmp_path, teacher_run, "kd.bn_policy=batch_stats")
    _, _, cache = prepare(cfg, log=messages.append)
    assert cache is None and any("NOT used" in m for m in messages)


def test_cache_verbs(tmp_path, teacher_run, capsys):
    cache_dir = tmp_path / "cache"
    args = [
        "cache",
        "build",
        "digits/distill",
        f"kd.teachers.0.checkpoint={teacher_run.run_dir}",
        f"kd.teacher_cache.dir={cache_dir}",
        "--out",
        str(tmp_path),
        "-q",
    ]
    assert main(args) == 0
    assert "teacher cache ready" in capsys.readouterr().out
    assert main(["cache", "info", str(cache_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["layout"]["num_samples"] == 1438
        and info["description"]["teachers"][0]["arch"] == "lenet5"
    )
    assert main(["cache", "build", "digits/scratch", "--out", str(tmp_path)]) == 1
    assert "no kd section" in capsys.readouterr().err


@pytest.mark.parametrize("reduce", ["probs", "logits"])
def test_cached_ensemble_equals_the_live_ensemble(tmp_path, teacher_run, reduce):
    t = teacher_run.run_dir
    cfg = cached_config(
        tmp_path,
        teacher_run,
        f"kd.teachers=[{{checkpoint: {t}}}, {{checkpoint: {t}, args: {{}}}}]",
        f"kd.ensemble_reduce={reduce}",
        "kd.ensemble_weights=[1, 3]",
        "kd.teacher_cache.dtype=float32",
        "kd.teacher_cache.views=2",
    )
    data, teacher, cache = prepare(cfg)
    with torch.no_grad():  # make the two members differ, so the merge matters
        next(teacher.members[1].model.parameters()).mul_(0.5)
    cache = prepare_teacher_cache(
        cfg, data, teacher, torch.device("cpu"), progress=False, log=lambda _: None
    )
    assert cache.layout.members == 2 and cache.layout.views_per_sample == 2
    from kdistill.experiment import build_train_loader

    batch = next(iter(build_train_loader(cfg, data, torch.device("cpu"), cache=cache)))
    live = teacher.live(batch.inputs)
    got = CachedTeacher(cache, reduce=reduce, weights=[1, 3], temperature=cfg.kd.temperature)(
        batch.inputs, sample_ids=batch.sample_ids, views=batch.views
    )
    torch.testing.assert_close(got.scores, live.scores, rtol=1e-5, atol=1e-6)


def test_channels_last_and_bf16_teachers_match(teacher_run):
    from kdistill.experiment import load_model
    from kdistill.teachers import FrozenTeacher

    model = load_model(teacher_run.run_dir).model
    x = torch.randn(16, 1, 8, 8)
    plain = FrozenTeacher(model)(x).logits
    torch.testing.assert_close(
        FrozenTeacher(load_model(teacher_run.run_dir).model, channels_last=True)(x).logits,
        plain,
        rtol=1e-4,
        atol=1e-4,
    )
    fast = FrozenTeacher(load_model(teacher_run.run_dir).model, dtype=torch.bfloat16)(x).logits
    assert fast.dtype == torch.float32 and (fast.argmax(1) == plain.argmax(1)).float().mean() > 0.9


def test_auto_precision_reads_a_cache_built_in_the_other_precision(
    tmp_path, teacher_run, monkeypatch
):
    """A cache built in fp32 (say, before auto was the default) is read where auto now picks
    bf16, instead of being computed again; the teacher then runs in fp32 and the log says why."""
    from kdistill.experiment import precision

    cfg = cached_config(tmp_path, teacher_run, "kd.teacher_precision=fp32")
    _, _, built = prepare(cfg)
    monkeypatch.setattr(precision, "native_bf16", lambda device: "the CPU has amx_bf16")
    monkeypatch.setattr(precision, "PROBE_MARGIN", 10.0)  # bf16 "wins" the probe
    lines = []
    auto = apply_overrides(cfg, ["kd.teacher_precision=auto"])
    _, teacher, cache = prepare(auto, log=lines.append)
    assert cache.path == built.path and cache.fingerprint == built.fingerprint
    assert not any("computing" in line for line in lines)
    assert teacher.precision.precision == "fp32" and all(m.dtype is None for m in teacher.members)
    assert "holds its outputs in fp32" in teacher.precision.reason
    # without such a cache, auto keeps its own choice (and builds in bf16)
    other = apply_overrides(auto, ["kd.teacher_cache.views=2"])
    _, teacher, cache = prepare(other)
    assert teacher.precision.precision == "bf16" and cache.path != built.path
