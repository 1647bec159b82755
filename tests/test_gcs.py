"""Workdirs and data on cloud storage (``gs://``), for real against a GCS emulator these tests start
(tests/gcs_emulator.py): the lock object, whole-file writes, staging, orbax params, and a training
run killed with SIGKILL and resumed bit for bit, then read by ``sample`` and ``convert``."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from gcs_emulator import Emulator
from helpers import ROOT

from jaxformers import storage

pytest.importorskip("gcsfs")
pytest.importorskip("gcp_storage_emulator")


@pytest.fixture(scope="module")
def gcs():
    with Emulator() as env:
        yield env


def _fresh_listing():
    """gcsfs caches listings per process; another process's writes show after this."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()


def test_paths_and_whole_file_writes(gcs, tmp_path):
    assert (
        storage.is_url("gs://b/x") and not storage.is_url("/x") and not storage.is_url("file://x")
    )
    assert storage.join("gs://bucket/run/", "a", "b.txt") == "gs://bucket/run/a/b.txt"
    assert storage.absolute("gs://bucket/run/") == "gs://bucket/run"
    base = "gs://bucket/t1"
    storage.write_text(storage.join(base, "m.json"), '{"a": 1}')
    storage.write_bytes(storage.join(base, "d", "x.bin"), b"\0\1\2")
    assert storage.read_text(storage.join(base, "m.json")) == '{"a": 1}'
    assert storage.walk_files(base) == ["d/x.bin", "m.json"]
    # a folder moves object by object (no rename on object storage)
    storage.move(storage.join(base, "d"), storage.join(base, "aside", "d"))
    assert storage.walk_files(base) == ["aside/d/x.bin", "m.json"]
    # staging: a local mirror filled from the URL, new local files sent back
    os.environ["JAXFORMERS_CACHE"] = str(tmp_path / "cache")
    try:
        local = storage.download(base, only=["aside"])
        assert local.startswith(str(tmp_path / "cache"))
        assert open(os.path.join(local, "aside", "d", "x.bin"), "rb").read() == b"\0\1\2"
        assert not os.path.exists(os.path.join(local, "m.json"))  # only what was asked
        with open(os.path.join(local, "aside", "new.txt"), "w") as f:
            f.write("made here")
        assert storage.upload(base, only=["aside"]) == 1  # x.bin is there already
        assert storage.read_text(storage.join(base, "aside", "new.txt")) == "made here"
    finally:
        del os.environ["JAXFORMERS_CACHE"]


def _holder(path):
    """The record of the lock object that decides (the highest epoch)."""
    lock = storage.ObjectLock(path)
    epochs = lock._epochs()
    return epochs, json.loads(storage.read_text(lock._name(epochs[-1])))


def _stale(lock, seconds):
    """``lock``'s holder "is paused": no refreshes, and its last one ``seconds`` ago."""
    lock._stop.set()
    lock._thread.join()
    record = json.loads(lock._record())
    storage.write_text(
        lock._name(lock.epoch), json.dumps({**record, "time": time.time() - seconds})
    )


def test_lock_object_is_exclusive_and_expires(gcs):
    path = "gs://bucket/lockrun/.lock"
    a = storage.ObjectLock(path, ttl=60)
    a.acquire()
    epochs, held = _holder(path)
    assert epochs == [0] and held["pid"] == os.getpid() and held["token"] == a.token
    with pytest.raises(RuntimeError, match="in use by another training run"):
        storage.ObjectLock(path, ttl=60).acquire()
    a.release()
    epochs, held = _holder(path)
    assert epochs == [0] and held["released"]  # marked, not deleted: epoch 0 is never reused
    b = storage.ObjectLock(path, ttl=60)
    b.acquire()  # free again
    assert b.epoch == 1 and _holder(path)[0] == [1]  # the older epoch is cleaned up
    _stale(b, 61)  # refreshed 61 s ago: taken over
    c = storage.ObjectLock(path, ttl=60)
    c.acquire()
    assert c.epoch == 2 and _holder(path)[1]["token"] == c.token
    b.release()  # a late release of a lock taken over leaves the new holder's lock alone
    epochs, held = _holder(path)
    assert held["token"] == c.token and not held.get("released")
    c.release()


def test_lock_takeover_has_one_winner_and_the_paused_holder_stops(gcs, monkeypatch):
    """Two runs that find the lock stale at once: one takes it, the other is refused. The holder
    that was paused past the ttl, woken, neither overwrites its successor's object nor writes
    checkpoints or metrics: its refresh and ``check`` find the higher epoch."""
    import threading

    from jaxformers import train

    path = "gs://bucket/racerun/.lock"
    old = storage.ObjectLock(path, ttl=60)
    old.acquire()
    _stale(old, 61)
    takers = [storage.ObjectLock(path, ttl=60) for _ in range(4)]
    outcomes = [None] * len(takers)
    start = threading.Barrier(len(takers))

    def take(i):
        start.wait()
        try:
            takers[i].acquire()
            outcomes[i] = "took"
        except RuntimeError as e:
            outcomes[i] = str(e)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(takers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    winners = [t for t, o in zip(takers, outcomes) if o == "took"]
    assert len(winners) == 1, outcomes
    assert all("in use by another training run" in o for o in outcomes if o != "took")
    winner = winners[0]
    assert winner.epoch == 1 and _holder(path)[1]["token"] == winner.token

    # The paused holder wakes: its refresh finds epoch 1 and writes nothing of the winner's.
    old._stop.clear()
    old.ttl = 0.2
    old._thread = threading.Thread(target=old._refresh, daemon=True)
    old._thread.start()
    old._thread.join(timeout=10)
    assert not old._thread.is_alive() and "took over the lock" in old.lost
    assert _holder(path)[1]["token"] == winner.token
    with pytest.raises(storage.LockLost, match="writes nothing more"):
        old.check()

    # The run's other writers: its metrics do not overwrite the winner's metrics.jsonl.
    lock = train.WorkdirLock.__new__(train.WorkdirLock)
    lock.remote = old

    def no_tensorboard():  # its GCS writer would upload on garbage collection, after the emulator
        raise ImportError

    monkeypatch.setattr(train, "summary_writer_class", no_tensorboard)
    storage.write_text("gs://bucket/racerun/metrics.jsonl", "winner\n")
    writer = train.MetricWriter("gs://bucket/racerun", lock=lock)
    writer.write(5, "train", {"loss": 1.0})
    with pytest.raises(storage.LockLost):
        writer.flush()
    writer.close()  # says so on stderr, writes nothing
    assert storage.read_text("gs://bucket/racerun/metrics.jsonl") == "winner\n"
    old.release()
    assert _holder(path)[1]["token"] == winner.token
    winner.release()


def test_params_export_round_trip(gcs):
    import jax

    from jaxformers import checkpoint

    params = {"w": np.arange(35, dtype=np.float32).reshape(5, 7), "b": {"c": np.ones(3, np.int32)}}
    checkpoint.export_params(params, "gs://bucket/p1/params")
    got = checkpoint.load_params("gs://bucket/p1/params")
    jax.tree.map(np.testing.assert_array_equal, got, params)
    with pytest.raises(FileNotFoundError, match="no exported params"):
        checkpoint.load_params("gs://bucket/nothing/params")


# ------------------------------------------------------------------------------ a whole run


def _env(gcs, tmp_path, data_dir):
    env = dict(os.environ)
    env.update(
        gcs,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAXFORMERS_CACHE=str(tmp_path / "cache"),
        JAXFORMERS_LOCK_TTL="4",  # a killed run's lock expires after 4 s (default 120)
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("JAXFORMERS_DATA_DIR", None)  # the run's data goes into its gs:// workdir
    if "JAXFORMERS_TEST_COMPILE_CACHE" in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXFORMERS_TEST_COMPILE_CACHE"]
    return env


def _train(workdir, corpus):
    sets = ("progress=false", f"data.corpus={corpus}", "steps=3", "log_every=1")
    cmd = [sys.executable, "-m", "jaxformers", "train", "experiments/gpt2_shakespeare.py"]
    cmd += ["--variant", "tiny", "--workdir", workdir, "--set", "checkpoint.every=1"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _losses(text):
    recs = [json.loads(x) for x in text.splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in recs if r["split"] == "train"}


@pytest.mark.slow
def test_train_on_gcs_killed_resumes_bit_for_bit(gcs, tmp_path, corpus, data_dir):
    env = _env(gcs, tmp_path, data_dir)
    run = lambda cmd: subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)

    local = tmp_path / "local"
    p = run(_train(str(local), corpus))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    want = _losses((local / "metrics.jsonl").read_text())
    assert sorted(want) == [1, 2, 3]

    wd = "gs://bucket/run"
    proc = subprocess.Popen(
        _train(wd, corpus), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        t = time.time()
        while True:  # kill once the first checkpoint is on the bucket
            _fresh_listing()
            if storage.exists(f"{wd}/checkpoints/1/commit_success.txt"):  # orbax: finalized
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() - t < 240, "no checkpoint appeared"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    _fresh_listing()
    epochs, held = _holder(f"{wd}/.lock")  # left behind by the killed run
    assert not held.get("released"), (epochs, held)

    # (the lock's refusal and take-over are test_lock_object_is_exclusive_and_expires's part;
    # a fresh run here takes the killed run's lock over once it is 4 s old)
    time.sleep(4.5)
    p = run(_train(wd, corpus))
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "resuming from step" in out
    _fresh_listing()
    got = _losses(storage.read_text(f"{wd}/metrics.jsonl"))
    assert got == want  # bit for bit
    epochs, held = _holder(f"{wd}/.lock")
    assert len(epochs) == 1 and held["released"]  # taken over, then released; older ones gone
    for name in ("model.json", "tokenizer/tokenizer.json", "params/_METADATA"):
        assert storage.exists(f"{wd}/{name}"), name
    assert storage.walk_files(f"{wd}/data/tfds")  # prepared data kept beside the run
    assert any(n.startswith("events.") for n in storage.listdir(f"{wd}/tensorboard"))

    # inference reads the gs:// workdir
    p = run([sys.executable, "-m", "jaxformers", "sample", "--workdir", wd, "--prompt", "KING",
             "--max-new-tokens", "5", "--method", "greedy"])  # fmt: skip
    assert p.returncode == 0 and "KING" in p.stdout, p.stdout + p.stderr[-3000:]
    hf_dir = str(tmp_path / "hf")
    p = run([sys.executable, "-m", "jaxformers", "convert", "--workdir", wd, "--to-hf", hf_dir])
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert os.path.isfile(os.path.join(hf_dir, "model.safetensors"))
    assert os.path.isfile(os.path.join(hf_dir, "tokenizer.json"))
