"""The CPU stand-ins for sgl_kernel and torchvision (tests/sglang/stubs): importable, never
callable. A call records itself for the session-end check and raises, so a test can never pass
on a fake kernel; this file proves both halves of that guard."""

from __future__ import annotations

import json
import os

import pytest

from _standin import LOG_ENV, recorded_calls as standin_calls


def test_stand_ins_are_on_the_path_for_every_process():
    import sgl_kernel
    import torchvision.transforms.functional  # noqa: F401  (a submodule resolves too)
    assert "tests/sglang/stubs" in sgl_kernel.__file__
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0].endswith("tests/sglang/stubs")


def test_a_called_stand_in_raises_and_is_recorded():
    from _standin import StandIn, StandInCalled
    fake = StandIn("sgl_kernel.probe_only")
    before = len(standin_calls())
    with pytest.raises(StandInCalled, match="must never be called"):
        fake()
    calls = standin_calls()
    assert len(calls) == before + 1 and calls[-1]["name"] == "sgl_kernel.probe_only"
    # This deliberate call is removed again, so the session-end check sees only real ones.
    with open(os.environ[LOG_ENV], "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in calls[:-1])
