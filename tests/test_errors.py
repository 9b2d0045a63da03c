"""One error type, one resolution check, and exit codes: 0 ok, 2 bad input (one line), 130 interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryostack.density.checks import check_resolution
from cryostack.errors import CryostackError, DataAccessError, InputError

SPIKE = Path(__file__).resolve().parents[1] / "src" / "cryostack" / "examples" / "spike_ntd"


def test_every_user_error_is_a_cryostack_error():
    from cryostack.data.corpus import TestSplitAccessError
    from cryostack.io.sequences import SequenceMismatchError

    for cls in (InputError, DataAccessError, TestSplitAccessError, SequenceMismatchError):
        assert issubclass(cls, CryostackError)
    assert str(InputError("a.mrc", "bad\n  header")) == "a.mrc: bad header"


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (None, {}, "needs the map's resolution"),
        (0.0, {}, "outside the sensible range 0.5–50 Å"),
        (100.0, {}, "outside the sensible range"),
        (1.5, {"voxel_size_A": 1.0}, "finer than Nyquist"),
    ],
)
def test_resolution_check_is_one_line_naming_the_file(value, kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        check_resolution(value, where="map.mrc", **kwargs)
    assert str(err.value).startswith("map.mrc: ") and "\n" not in str(err.value)
    assert check_resolution(3.2, voxel_size_A=1.0) == 3.2


@pytest.mark.parametrize("command", ["validate", "simulate-map"])
def test_resolution_out_of_range_is_exit_2_in_every_command(tmp_path, command):
    args = [sys.executable, "-m", "cryostack.cli.main", command, "--model", str(SPIKE / "6vyb_Ndom.pdb")]
    if command == "validate":
        args += ["--map", str(SPIKE / "emd_21457_seg.mrc"), "--resolution", "0.1"]
    else:
        args += ["--like", str(SPIKE / "emd_21457_seg.mrc"), "--resolution", "0.1", "--out", str(tmp_path / "m.mrc")]
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 2 and "sensible range 0.5–50 Å" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    args = [
        sys.executable,
        "-m",
        "cryostack.cli.main",
        "validate",
        "--model",
        str(SPIKE / "6vyb_Ndom.pdb"),
        "--map",
        str(SPIKE / "emd_21457_seg.mrc"),
        "--resolution",
        "3.2",
        "--json",
        str(tmp_path / "v.json"),
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal never ignores Ctrl-C
    )  # fmt: skip
    # Commands import torch only once running, so a mapped libtorch means the command has started.
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and "libtorch" not in maps.read_text():
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("validation finished before the interrupt")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted:")
    assert not (tmp_path / "v.json").exists()
