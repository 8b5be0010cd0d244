"""`dpjax serve` and `dpjax.client`: a real websocket server (in a subprocess for the end-to-end
rollout, in a thread elsewhere), real clients, the cup task driven through them."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import jax
import numpy as np
import pytest

from dpjax import messages
from dpjax.client import AsyncActor, PolicyClient, PolicyServerError
from dpjax.envs.collect import collect_demos
from dpjax.envs.tasks import make_task
from dpjax.evaluate.rollouts import rollout_gym
from dpjax.policy import load_policy
from dpjax.server import PolicyServer

sys.path.insert(0, os.path.dirname(__file__))
from test_evaluate_cli import tiny_run  # noqa: E402

STEPS = 3  # denoising steps everywhere here
BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    data = collect_demos(tmp / "data", 6, 0, progress=False)
    return tiny_run(data, tmp / "run", "num_steps=8", "eval_every=8", "checkpoint_every=8")


@pytest.fixture(scope="module")
def server(run_dir):
    server = PolicyServer.from_run(run_dir, num_inference_steps=STEPS, batch_window_ms=30)
    with server.start_in_thread() as thread:
        yield thread


def observation(policy, batch, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape).astype(np.float32)
            for k, v in policy.example_observation(batch).items()}  # fmt: skip


def test_actions_are_the_in_process_policys_for_the_same_key(server):
    policy, params = server.server.policy, server.server.params
    with PolicyClient("127.0.0.1", server.port) as client:
        meta = client.metadata
        assert meta["observation_spec"] == {"state": {"shape": [6], "dtype": "float32"}}
        assert (meta["obs_horizon"], meta["action_dim"], meta["num_inference_steps"]) == (
            2,
            2,
            STEPS,
        )
        assert meta["control_hz"] == 10.0 and meta["action_horizon"] == policy.config.action_horizon
        obs = observation(policy, 3)
        key = jax.random.key(11)
        actions = client.act(obs, key=jax.random.key_data(key))
        expected = np.asarray(policy.act(params, obs, key, num_inference_steps=STEPS))
        np.testing.assert_array_equal(actions, expected)
        # One history without the batch axis -> one chunk; seeds reproduce; keys differ.
        single = {k: v[0] for k, v in obs.items()}
        assert client.act(single, seed=5).shape == (policy.config.action_horizon, 2)
        np.testing.assert_array_equal(client.act(single, seed=5), client.act(single, seed=5))
        assert not np.array_equal(client.act(single, seed=5), client.act(single, seed=6))


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda o: {"wrong": o["state"]}, r"unknown keys \['wrong'\]"),
        (lambda o: {}, r"missing keys \['state'\]"),
        (lambda o: {"state": o["state"][:, :1]}, r"expected shape \(B, 2, 6\), got \(2, 1, 6\)"),
        (lambda o: {"state": np.full_like(o["state"], np.nan)}, "NaN"),
    ],
)
def test_bad_observations_get_an_error_and_the_connection_goes_on(server, bad, match):
    policy = server.server.policy
    with PolicyClient("127.0.0.1", server.port) as client:
        obs = observation(policy, 2)
        with pytest.raises(PolicyServerError, match=match):
            client.act(bad(obs))
        assert client.act(obs).shape == (2, policy.config.action_horizon, 2)


def test_malformed_and_oversized_messages_leave_other_clients_served(server):
    from websockets.sync.client import connect

    policy = server.server.policy
    obs = observation(policy, 1)
    url = f"ws://127.0.0.1:{server.port}"
    with PolicyClient("127.0.0.1", server.port) as good, connect(url, max_size=None) as raw:
        messages.unpack(raw.recv())  # metadata
        for data, match in [(b"\xc1\x00junk", "not a msgpack message"),
                            (messages.pack({"no": "type"}), '"type"'),
                            (messages.pack({"type": "fly"}), "unknown message type 'fly'"),
                            (messages.pack({"type": "act", "observation": {"state": {
                                "__ndarray__": ["<f4", [1, 2, 6], b"abc"]}}}), "needs 48 bytes")]:  # fmt: skip
            raw.send(data)
            reply = messages.unpack(raw.recv(timeout=30))
            assert reply["type"] == "error" and match in reply["error"], reply
        # Over the server's limit: that connection is closed (1009), the others go on.
        raw.send(b"\x00" * (messages.MAX_MESSAGE_BYTES + 1))
        with pytest.raises(Exception) as closed:
            raw.recv(timeout=30)
        assert "1009" in str(closed.value)
        # The client refuses to send what the server would refuse, with the limit in words.
        huge = {"state": np.zeros((messages.MAX_MESSAGE_BYTES // 48 + 1, 2, 6), np.float32)}
        with pytest.raises(PolicyServerError, match="over the server's limit"):
            good.act(huge)
        assert good.act(obs).shape[0] == 1
        stats = good.stats()
    assert stats["errors"]["ProtocolError"] >= 4 and stats["requests_served"] >= 1


def test_a_client_leaving_mid_request_costs_only_its_reply(server):
    from websockets.sync.client import connect

    obs = observation(server.server.policy, 1)
    with connect(f"ws://127.0.0.1:{server.port}") as raw:
        raw.recv()
        raw.send(messages.pack({"type": "act", "id": 1, "observation": obs}))
    with PolicyClient("127.0.0.1", server.port) as client:
        assert client.act(obs).shape[0] == 1
    # The left client's handler ends once its reply has found the connection gone (or its
    # request was dropped unrun); the server is serving the other client meanwhile.
    deadline = time.monotonic() + 30
    while server.server.stats.connections != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.server.stats.connections == 0


def test_concurrent_clients_are_batched_and_each_gets_its_own_actions(server):
    policy, params = server.server.policy, server.server.params
    results, errors = {}, []

    def client_loop(i):
        try:
            with PolicyClient("127.0.0.1", server.port) as client:
                obs = observation(policy, 1, seed=i)
                results[i] = (obs, client.act(obs, seed=100 + i))
        except Exception as e:  # reported below
            errors.append(e)

    before = dict(server.server.stats.batch_sizes)
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 4
    for i, (obs, actions) in results.items():
        alone = np.asarray(
            policy.act(params, obs, jax.random.key(100 + i), num_inference_steps=STEPS)
        )
        np.testing.assert_allclose(actions, alone, rtol=1e-5, atol=1e-5)
    grown = {k: v - before.get(k, 0) for k, v in server.server.stats.batch_sizes.items()}
    assert any(size > 1 and count > 0 for size, count in grown.items()), grown
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stats") as response:
        stats = json.loads(response.read())
    assert stats["latency_ms"]["p50"] > 0 and stats["requests_served"] >= 4


class SlowClient:
    """Stands in for PolicyClient: chunk i is all i; `release` lets a request finish."""

    def __init__(self, horizon=4):
        self.metadata = {"action_horizon": horizon, "obs_horizon": 2}
        self.calls, self.release = [], threading.Event()
        self.horizon = horizon

    def act(self, batch):
        self.calls.append(batch)
        assert self.release.wait(10)
        return np.full((self.horizon, 1), float(len(self.calls)))


def test_async_actor_holds_skips_and_counts():
    client = SlowClient()
    actor = AsyncActor(client, prefetch=1)
    client.release.set()
    assert actor.step({"x": np.zeros(1)})[0] == 1.0  # the first chunk is waited for
    assert client.calls[0]["x"].shape == (2, 1)  # the history, padded at the start
    client.release.clear()
    actions = [actor.step({"x": np.ones(1)})[0] for _ in range(4)]
    # Steps 1-3 run chunk 1 (1 left at step 3 -> chunk 2 asked for there); step 4 holds.
    assert actions == [1.0] * 4 and actor.counters["holds"] == 1 and actor._pending[1] == 3
    client.release.set()
    while not actor._pending[0].done():
        time.sleep(0.01)
    action = actor.step(None)  # a dropped frame: the history repeats its last observation
    # Chunk 2 was asked at step 3 and is used from step 5: its first 2 actions are skipped.
    assert action[0] == 2.0 and actor.counters["skipped_actions"] == 2
    assert actor.counters["dropped_observations"] == 1 and actor.counters["chunks"] == 2
    np.testing.assert_array_equal(client.calls[1]["x"], np.ones((2, 1)))
    actor.close()


@pytest.fixture(scope="module")
def pusht_run(tmp_path_factory):
    pytest.importorskip("gym_pusht")
    from dpjax import cli

    tmp = tmp_path_factory.mktemp("serve_pusht")
    assert cli.main(["collect", "pusht", "--episodes", "2", "--out", str(tmp / "data"),
                     "--task-option", "obs_type=keypoints"]) == 0  # fmt: skip
    sets = [f"dataset={tmp / 'data'}", "num_steps=3", "batch_size=8", "eval_every=3",
            "checkpoint_every=3", "val_fraction=0.5", "rollout_every=0",
            "policy.denoiser=mlp", "policy.denoiser.hidden_dims=(32,32)"]  # fmt: skip
    assert cli.main(["train", "pusht_keypoints", "--out", str(tmp / "run"),
                     *[a for s in sets for a in ("--set", s)]]) == 0  # fmt: skip
    return tmp / "run"


@pytest.mark.parametrize("task_name", ["multimodal", "pusht"])
def test_dpjax_serve_drives_a_task_like_the_in_process_evaluation(request, task_name):
    """The server in a subprocess (as the load benchmark starts it); rollouts through the
    client take rollout_gym's in-process actions, episode for episode."""
    sys.path.insert(0, BENCHMARKS)
    from serve_load import start_server

    run_dir = request.getfixturevalue("run_dir" if task_name == "multimodal" else "pusht_run")
    task = make_task(task_name, **({"obs_type": "keypoints"} if task_name == "pusht" else {}))
    kwargs = dict(num_episodes=4, seed=100_000, num_envs=2)
    policy, params, _ = load_policy(run_dir)
    local = rollout_gym(task, policy, params, num_inference_steps=STEPS, **kwargs)
    process, port = start_server(run_dir, 4, ["--steps", str(STEPS)])
    try:
        with PolicyClient("127.0.0.1", port) as client:
            served = rollout_gym(
                task, policy, None,
                act_fn=lambda batch, key, **_: client.act(batch, key=jax.random.key_data(key)),
                **kwargs,
            )  # fmt: skip
            stats = client.stats()
    finally:
        process.terminate()
        process.wait(20)
    assert served["success"] == local["success"] and served["length"] == local["length"]
    for a, b in zip(served["actions"], local["actions"], strict=True):
        np.testing.assert_array_equal(a, b)
    if task_name == "pusht":
        assert served["max_coverage"] == local["max_coverage"]
    assert stats["requests_served"] >= 2 and not stats["errors"]


def test_serve_reports_a_missing_run_clearly(tmp_path, capsys):
    from dpjax import cli

    assert cli.main(["serve", str(tmp_path / "nothing")]) == 2
    assert "dpjax serve: error:" in capsys.readouterr().err


def test_the_client_imports_without_jax():
    """A robot program imports dpjax.client without paying for (or having) JAX."""
    code = ("import sys, dpjax.client; "
            "bad = [m for m in ('jax', 'flax', 'orbax', 'tensorflow_datasets') if m in sys.modules]; "
            "assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_benchmark_prints_its_table(run_dir, capsys):
    sys.path.insert(0, BENCHMARKS)
    import serve_load

    argv = ["--run", str(run_dir), "--clients", "1", "2", "--requests", "3", "--modes", "batched"]
    assert serve_load.main([*argv, "--steps", str(STEPS)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| batched")]
    assert len(rows) == 2 and all(float(r.split("|")[-2]) > 0 for r in rows)
