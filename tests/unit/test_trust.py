"""CodeTrust: import paths are code, allowed only when the user wrote them or trusts files."""

import pytest

from kdistill.config import RunConfig, apply_overrides
from kdistill.trust import NO_TRUST, CodeTrust, UntrustedCodeError, is_import_path


def test_registered_names_are_always_allowed_import_paths_only_when_given():
    assert not is_import_path("lenet5") and is_import_path("pkg.mod:fn")
    assert NO_TRUST.allows("lenet5") and not NO_TRUST.allows("pkg.mod:fn")
    mine = CodeTrust.of(["pkg.mod:fn", "mlp", None])
    assert mine.paths == frozenset({"pkg.mod:fn"})
    assert mine.allows("pkg.mod:fn") and not mine.allows("os:system")
    assert CodeTrust.of([], trust_code=True).allows("os:system")
    with pytest.raises(UntrustedCodeError, match=r"teacher.safetensors names .*'os:system'"):
        mine.check("os:system", "teacher.safetensors")


def test_a_config_trusts_the_code_it_writes():
    cfg = apply_overrides(
        RunConfig(),
        [
            "model.arch=my.models:student",
            "kd.teachers.0.checkpoint=t.safetensors",
            "kd.teachers.0.arch=my.models:teacher",
            "train.callbacks=[my.callbacks:Log]",
        ],
    )
    assert cfg.user_code() == ("my.models:student", "my.models:teacher", "my.callbacks:Log")
    assert RunConfig().user_code() == ()
