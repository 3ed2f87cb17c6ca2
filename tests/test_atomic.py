"""Files a later run reads are written whole or not at all (``stdiff.atomic``): a write cut short
by a full disk leaves the previous checkpoint, metrics.json and samples as they were."""

import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import QUICKSTART, ROOT

from stdiff.atomic import AtomicCheckpointIO, WriteError, atomic_write


class FullDisk:
    """A file object that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_a_write_cut_short_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": 1}')
    expected = r"cannot write .*metrics.json: No space left on device \(the previous file is unchanged\)"
    with pytest.raises(WriteError, match=expected) as err, atomic_write(target, "w") as f:
        f.write('{"new": ')
        FullDisk(3).write(b"more than three bytes")  # the disk fills mid-write
    assert err.value.errno == errno.ENOSPC
    assert target.read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # the temporary file removed
    with atomic_write(target, "w") as f:  # and a write that completes replaces it
        f.write('{"new": 2}')
    assert target.read_text() == '{"new": 2}' and len(list(tmp_path.iterdir())) == 1


def test_an_error_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, path)
    good = path.read_bytes()

    def save_then_fail(obj, f):  # torch.save writes part of the file, then the disk is full
        f.write(good[: len(good) // 3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(WriteError, match="last.ckpt: No space left on device"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 4}, path)
    assert path.read_bytes() == good
    assert os.listdir(path.parent) == ["last.ckpt"]


def _tiny_filesystems() -> bool:
    """Whether this machine lets a process mount a tmpfs in a user namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, check=False)  # fmt: skip
    return probe.returncode == 0


@pytest.mark.skipif(not _tiny_filesystems(), reason="needs `unshare -Urm` and tmpfs (Linux user namespaces)")
def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path):
    """A real small filesystem (a 64 MiB tmpfs mounted in a namespace of the test's own), filled
    after the step-2 checkpoint: the step-4 checkpoint cannot be written, the run says so, and
    last.ckpt is still the step-2 one, loadable; no temporary file is left."""
    mount, kept = tmp_path / "disk", tmp_path / "kept"
    mount.mkdir()
    fit = [sys.executable, "-m", "stdiff", "fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={mount}",
           "--trainer.max_steps=6", "--checkpoint.every_n_train_steps=2", "--data.init_args.batch_size=8",
           "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
           "--best_checkpoint.enabled=false", "--trainer.callbacks+=hooks.FillDisk", "--trainer.callbacks.at=3"]  # fmt: skip
    # the run's files live only as long as the namespace: copied out before it ends
    script = 'mount -t tmpfs -o size=64m tmpfs "$1" && shift 2 && "$@" 2>"$KEPT.err"; echo $? >"$KEPT.rc"; rm -f "$MOUNT"/lightning_logs/*/filler; cp -a "$MOUNT" "$KEPT"'
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONWARNINGS": "ignore", "MOUNT": str(mount), "KEPT": str(kept)}
    subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", str(mount), "-", *fit], env=env, timeout=300, check=True)
    err = (tmp_path / "kept.err").read_text()
    assert (tmp_path / "kept.rc").read_text().strip() == "1", err[-3000:]
    assert "No space left on device (the previous file is unchanged)" in err, err[-3000:]
    assert "Traceback" not in err
    (run,) = (kept / "lightning_logs").glob("version_*")
    assert sorted(os.listdir(run / "checkpoints")) == ["last.ckpt"]  # no temporary left beside it
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
