"""Actor <-> learner transport (rl_agent/transport.py, actor_node.py, learner_node.py).

Pure protocol (no ROS): chunk codec and validation, at-least-once delivery with acks and resends across a learner
restart, demo retention, bounded outbox, deduplication, silence messages, NaN rejection in the learner core.
Over real DDS: rl_actor and rl_learner as separate processes on the twin; the learner is SIGKILLed -> the actor keeps
acting and says so; a new learner comes up -> resent transitions arrive and parameters flow again; a NaN chunk is
rejected with a clear log line; the operator's mark_success service ends an episode as a success.
"""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import yaml

from rl_agent import transport as tp
from rl_helpers import LATENT_SHAPE, REACH_TASKS, SMALL_SAC, shared_tiny_checkpoint, small_sac_config
from rl_helpers import NodeProcess as Proc

SHAPE = (6, 16)


def make_chunk(rng, t=5, nan_at=None, shape=SHAPE):
    lat = rng.standard_normal((t + 1, *shape)).astype(np.float32)
    if nan_at is not None:
        lat[nan_at, 0, 0] = np.nan
    return {"latents": lat, "state": rng.standard_normal((t + 1, 8)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (t, 7)).astype(np.float32), "rewards": np.zeros(t, np.float32),
            "dones": np.zeros(t, bool), "intervened": np.zeros(t, bool)}


# ---------------------------------------------------------------------------------------------- pure protocol
def test_chunk_codec_roundtrip_and_validation():
    rng = np.random.default_rng(0)
    c = make_chunk(rng)
    out, meta = tp.decode_chunk(tp.encode_chunk(c, {"params_version": 3}), SHAPE)
    assert meta == {"params_version": 3}
    assert out["latents"].dtype == np.float16 and out["latents"].shape == (6, *SHAPE)
    np.testing.assert_allclose(out["latents"], c["latents"], atol=1e-2)
    np.testing.assert_array_equal(out["actions"], c["actions"])
    with pytest.raises(tp.TransportError, match=r"latents contain NaN/inf \(rows \[2\]\)"):
        tp.decode_chunk(tp.encode_chunk(make_chunk(rng, nan_at=2)), SHAPE)
    with pytest.raises(tp.TransportError, match="this learner expects"):
        tp.decode_chunk(tp.encode_chunk(c), (7, 16))
    with pytest.raises(tp.TransportError, match="not an npz"):
        tp.decode_chunk(b"garbage")
    bad = dict(c, actions=c["actions"] * 3)
    with pytest.raises(tp.TransportError, match="outside"):
        tp.decode_chunk(tp.encode_chunk(bad))


def test_chunk_builder_cuts_episodes_and_shares_the_boundary_observation():
    rng = np.random.default_rng(1)
    obs = [{"latents": rng.standard_normal(SHAPE).astype(np.float32), "state": np.full(8, i, np.float32)}
           for i in range(8)]
    b = tp.ChunkBuilder(chunk_steps=3)
    b.start(obs[0])
    chunks = [b.add(np.zeros(7), 0.0, obs[i + 1], i == 6) for i in range(7)]
    chunks = [c for c in chunks if c is not None] + [b.flush()]
    assert [len(c["actions"]) for c in chunks] == [3, 3, 1]
    assert [c["state"][0, 0] for c in chunks] == [0, 3, 6]  # the last obs of a chunk starts the next
    assert chunks[-1]["dones"].tolist() == [True] and b.flush() is None


def test_outbox_inbox_deliver_across_a_learner_restart_and_keep_demos():
    ob = tp.Outbox(max_bytes=10_000, resend_after_s=1.0)
    learner = tp.Inbox()
    d1 = ob.add(tp.KIND_DEMOS, b"d" * 100, now=0.0)
    seqs = [ob.add(tp.KIND_TRANSITIONS, b"t" * 100, now=0.0) for _ in range(3)]
    assert (d1, seqs) == (1, [1, 2, 3])
    for s in (1, 2):  # chunk 3 was lost in flight
        assert learner.accept("a", tp.KIND_TRANSITIONS, s)
    assert learner.accept("a", tp.KIND_DEMOS, 1)
    assert not learner.accept("a", tp.KIND_TRANSITIONS, 2)  # duplicate
    w = learner.watermarks("a")
    assert w == {tp.KIND_TRANSITIONS: 2, tp.KIND_DEMOS: 1}
    for k, v in w.items():
        ob.ack(k, v)
    assert ob.pending() == 1 and ob.pending(tp.KIND_TRANSITIONS) == 1
    assert ob.due(w, now=0.5) == []  # not due yet
    assert [(p.kind, p.seq) for p in ob.due(w, now=1.5)] == [(tp.KIND_TRANSITIONS, 3)]
    # The learner dies; the actor goes on: chunks 4, 5 are kept. A NEW learner (no checkpoint) knows nothing.
    ob.add(tp.KIND_TRANSITIONS, b"t" * 100, now=2.0)
    ob.add(tp.KIND_TRANSITIONS, b"t" * 100, now=2.0)
    fresh = tp.Inbox()
    assert fresh.accept("a", tp.KIND_TRANSITIONS, 6)  # a live chunk may arrive before the resends
    ob.add(tp.KIND_TRANSITIONS, b"t" * 100, now=5.0)
    due = ob.due({}, now=5.0)  # its heartbeat carries no watermark for this actor: everything unacked + demos
    assert [(p.kind, p.seq) for p in due] == [(tp.KIND_DEMOS, 1), (tp.KIND_TRANSITIONS, 3),
                                              (tp.KIND_TRANSITIONS, 4), (tp.KIND_TRANSITIONS, 5)]
    assert all(fresh.accept("a", p.kind, p.seq) for p in due)  # none is mistaken for a duplicate
    assert fresh.watermarks("a")[tp.KIND_TRANSITIONS] == 0  # 1, 2 never come again ...
    assert ob.floor(tp.KIND_TRANSITIONS) == 2
    fresh.skip_to("a", tp.KIND_TRANSITIONS, ob.floor(tp.KIND_TRANSITIONS))  # ... the actor's heartbeat says so
    w = fresh.watermarks("a")
    assert w == {tp.KIND_DEMOS: 1, tp.KIND_TRANSITIONS: 6}
    for k, v in w.items():
        ob.ack(k, v)
    assert ob.pending() == 0 and ob.due(w, now=10.0) == []
    assert ob.floor(tp.KIND_TRANSITIONS) == 6
    # A learner checkpoint keeps the watermarks.
    restored = tp.Inbox()
    restored.load_state_dict(json.loads(json.dumps(fresh.state_dict())))
    assert not restored.accept("a", tp.KIND_TRANSITIONS, 6) and restored.accept("a", tp.KIND_TRANSITIONS, 7)


def test_outbox_is_bounded_and_drops_oldest_transitions_never_demos():
    ob = tp.Outbox(max_bytes=1000, resend_after_s=0.0)
    ob.add(tp.KIND_DEMOS, b"d" * 300, now=0.0)
    for _ in range(5):
        ob.add(tp.KIND_TRANSITIONS, b"t" * 300, now=0.0)
    assert ob.bytes <= 1000 and ob.dropped == 3
    kept = [(p.kind, p.seq) for p in ob.due({}, now=1.0)]
    assert kept == [(tp.KIND_DEMOS, 1), (tp.KIND_TRANSITIONS, 4), (tp.KIND_TRANSITIONS, 5)]


def test_liveness_reports_silence_once_and_the_end_of_it():
    now = [0.0]
    live = tp.Liveness(timeout_s=2.0, clock=lambda: now[0])
    assert live.silence() is None and not live.alive
    live.heard()
    now[0] = 1.0
    assert live.alive and not live.newly_silent()
    now[0] = 3.5
    assert not live.alive and live.newly_silent() and not live.newly_silent()
    now[0] = 9.0
    assert live.heard() == pytest.approx(9.0) and live.alive and live.outages == 1


def test_actor_core_keeps_acting_with_last_params_and_says_so():
    from rl_agent.actor_node import ActorCore
    from rl_agent.agent import SACAgent
    from rl_agent.agent_setup import actor_params_of

    cfg = small_sac_config()
    agent = SACAgent.create(0, LATENT_SHAPE, config=cfg)
    other = SACAgent.create(1, LATENT_SHAPE, config=cfg)
    now = [0.0]
    core = ActorCore(agent, "a0", tp.Outbox(), learner_timeout_s=2.0, silent_report_s=5.0)
    core.live = tp.Liveness(2.0, clock=lambda: now[0])
    assert core.on_params("L1", 7, tp.FORMAT_FLAX, tp.encode_params(actor_params_of(other)))
    obs = {"latents": np.ones(LATENT_SHAPE, np.float32), "state": np.zeros(8, np.float32)}
    np.testing.assert_allclose(core.current_agent().eval_actions(obs), other.eval_actions(obs), atol=1e-6)
    assert not core.on_params("L1", 6, tp.FORMAT_FLAX, tp.encode_params(actor_params_of(agent)))  # older
    wrong = actor_params_of(other)
    wrong["head"]["out"]["kernel"] = np.zeros((3, 3), np.float32)  # another head's shapes
    assert not core.on_params("L2", 1, tp.FORMAT_FLAX, tp.encode_params(wrong))
    nan = actor_params_of(other)
    nan["head"]["out"]["bias"] = np.full_like(nan["head"]["out"]["bias"], np.nan)
    assert not core.on_params("L2", 2, tp.FORMAT_FLAX, tp.encode_params(nan))
    assert core.params_version == 7
    core.on_learner_heartbeat({"acks": {}})
    now[0] = 3.0
    msg = core.silence_message(now=3.0)
    assert msg.startswith("learner silent for 3.0 s; acting with params v7")
    assert core.silence_message(now=4.0) is None and core.silence_message(now=8.5) is not None
    assert core.on_learner_heartbeat({"acks": {}}) == pytest.approx(3.0)


def test_learner_core_rejects_nan_chunks_with_a_clear_message_and_trains(tmp_path):
    from rl_agent.agent import SACAgent
    from rl_agent.buffers import LatentReplayBuffer
    from rl_agent.learner_core import LearnerConfig, LearnerCore

    cfg = small_sac_config()
    logs = []

    def make_core(config):
        return LearnerCore(SACAgent.create(0, LATENT_SHAPE, config=cfg),
                           lambda cap: LatentReplayBuffer(cap, LATENT_SHAPE), config, tmp_path, log=logs.append)
    core = make_core(LearnerConfig(learning_starts=5, push_every=2, online_capacity=500, demo_capacity=500))
    rng = np.random.default_rng(0)
    chunk = lambda **kw: tp.encode_chunk(make_chunk(rng, shape=LATENT_SHAPE, **kw))  # noqa: E731
    assert not core.ingest("bad", tp.KIND_TRANSITIONS, 1, tp.FORMAT_NPZ, chunk(nan_at=3))
    assert core.rejected == 1 and len(core.online) == 0
    assert "REJECTED transitions chunk seq 1 from bad: latents contain NaN/inf (rows [3])" in logs[-1]
    assert core.inbox.watermarks("bad") == {tp.KIND_TRANSITIONS: 1}  # acked: never resent
    assert core.ingest("a", tp.KIND_DEMOS, 1, tp.FORMAT_NPZ, chunk())
    assert not core.ingest("a", tp.KIND_DEMOS, 2, tp.FORMAT_NPZ, tp.encode_chunk(make_chunk(rng)))  # wrong shape
    assert "this learner expects (36, 64)" in logs[-1]
    c = make_chunk(rng, shape=LATENT_SHAPE)
    c["intervened"][1:3] = True
    assert core.ingest("a", tp.KIND_TRANSITIONS, 1, tp.FORMAT_NPZ, tp.encode_chunk(c))
    assert not core.ingest("a", tp.KIND_TRANSITIONS, 1, tp.FORMAT_NPZ, tp.encode_chunk(c))  # resend: dropped
    assert (len(core.demo), len(core.online)) == (5 + 2, 5)  # the two intervened steps also went to demo
    assert core.train_step() and core.train_step() and core.due_push()
    version, data = core.params_payload()
    assert version == 1 and len(data) > 1000
    core.save_checkpoint()
    again = make_core(LearnerConfig())
    assert again.restore() and again.updates == 2 and len(again.online) == 5
    assert not again.ingest("a", tp.KIND_TRANSITIONS, 1, tp.FORMAT_NPZ, tp.encode_chunk(c))


# ---------------------------------------------------------------------------------------------- over DDS
@pytest.mark.ros
def test_actor_survives_learner_death_and_params_flow_again(ros_context, spin_thread, tmp_path, tmp_path_factory):
    import rclpy
    from irevla_interfaces.msg import Blob
    from std_srvs.srv import Trigger


    def wait_for(pred, timeout, what=""):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError((what() if callable(what) else what) or f"not within {timeout} s")
            time.sleep(0.1)

    def logs():
        return "\n".join(f"--- {p.log_path.name}:\n{p.text()[-4000:]}" for p in (l1, actor, l2) if p is not None)

    ckpt = shared_tiny_checkpoint(tmp_path_factory)
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({"session": {"sac": SMALL_SAC}}))
    common = ["-p", f"checkpoint:={ckpt}", "-p", f"config:={cfg}"]

    def learner(name):
        return Proc(["rl_agent.learner_node", "--ros-args", *common, "-p", f"out_dir:={tmp_path / 'learner'}",
                     "-p", f"learner_id:={name}", "-p", "push_every:=5", "-p", "learning_starts:=10",
                     "-p", "checkpoint_every_updates:=1000000"], tmp_path / f"{name}.log")

    node = rclpy.create_node("rl_transport_probe", context=ros_context)
    _, _, hb_qos = tp.qos_profiles()
    data_qos = tp.qos_profiles()[0]
    status = {"actor": None, "learner": {}}
    node.create_subscription(Blob, tp.TOPIC_ACTOR_STATUS,
                             lambda m: status.__setitem__("actor", json.loads(bytes(m.data))), hb_qos)
    node.create_subscription(Blob, tp.TOPIC_LEARNER_STATUS,
                             lambda m: status["learner"].__setitem__(m.sender, json.loads(bytes(m.data))), hb_qos)
    evil = node.create_publisher(Blob, tp.TOPIC_TRANSITIONS, data_qos)
    mark = node.create_client(Trigger, tp.SRV_MARK_SUCCESS)
    spin_thread([node])

    l1 = learner("L1")
    actor = Proc(["rl_agent.actor_node", "--ros-args", *common, "-p", "task:=reach_point",
                  "-p", f"task_file:={REACH_TASKS}", "-p", f"out_dir:={tmp_path / 'actor'}", "-p", "actor_id:=a0",
                  "-p", "demos:=2", "-p", "demo_source:=expert", "-p", "rate_hz:=0.0", "-p", "chunk_steps:=5",
                  "-p", "learner_timeout_s:=2.0", "-p", "silent_report_s:=2.0"],
                 tmp_path / "actor.log")
    l2 = None
    try:
        def actor_params_from(name):
            a = status["actor"]
            return a is not None and a.get("params_from") == name and a["params_version"] >= 1

        wait_for(lambda: actor_params_from("L1"), 240, lambda: "no params from learner L1 reached the actor\n" + logs())
        # The operator's service ends an episode as a success (a mark that lands between episodes is cleared by
        # the reset, so mark again if needed).
        assert mark.wait_for_service(timeout_sec=30)
        for _ in range(3):
            fut = mark.call_async(Trigger.Request())
            wait_for(lambda: fut.done(), 30)
            assert fut.result().success
            try:
                wait_for(lambda: "success (operator) in" in actor.text(), 20)
                break
            except TimeoutError:
                continue
        assert "success (operator) in" in actor.text(), logs()

        # A NaN chunk is rejected by the learner with a clear line; it lives on.
        rng = np.random.default_rng(0)
        bad = make_chunk(rng, nan_at=1)
        bad["latents"] = np.full((6, *status["learner"]["L1"].get("latent_shape", (36, 64))), np.nan, np.float32)
        msg = Blob(sender="evil", kind=tp.KIND_TRANSITIONS, seq=1, format=tp.FORMAT_NPZ)
        msg.data = tp.encode_chunk(bad)
        evil.publish(msg)
        wait_for(lambda: "REJECTED transitions chunk seq 1 from evil" in l1.text(), 30, logs)
        assert "NaN/inf" in l1.text()
        wait_for(lambda: status["learner"]["L1"]["rejected"] == 1, 10)

        # Kill the learner: the actor keeps acting with its last params and says so.
        steps_at_kill = status["actor"]["env_steps"]
        version_at_kill = status["actor"]["params_version"]
        l1.kill(signal.SIGKILL)
        wait_for(lambda: "learner silent for" in actor.text(), 30, logs)
        line = [ln for ln in actor.text().splitlines() if "learner silent for" in ln][0]
        assert "acting with params v" in line
        wait_for(lambda: status["actor"]["env_steps"] > steps_at_kill + 20, 60, lambda: "the actor stopped\n" + logs())
        assert actor.p.poll() is None
        pending = status["actor"]["pending"]
        assert pending > 0 and status["actor"]["params_version"] >= version_at_kill

        # A new learner: the actor resends what the dead one never acknowledged; params flow again.
        l2 = learner("L2")
        wait_for(lambda: actor_params_from("L2"), 240, lambda: "params did not flow again\n" + logs())
        assert "is back after" in actor.text()
        wait_for(lambda: status["learner"].get("L2", {}).get("received", {}).get("demos", 0) > 0, 30)
        wait_for(lambda: status["actor"]["pending"] < pending, 60, lambda: "resent chunks not acknowledged\n" + logs())
        got = status["learner"]["L2"]["received"]["transitions"]
        assert got >= 5 * pending - 5  # the kept chunks (5 steps each) arrived at the new learner
        print(f"actor/learner over DDS: actor steps {status['actor']['env_steps']}, pending at restart {pending}, "
              f"L2 received {status['learner']['L2']['received']}, params v{status['actor']['params_version']}")
    finally:
        for p in (actor, l1, l2):
            if p is not None:
                try:
                    p.kill(signal.SIGTERM)
                except Exception:
                    p.p.kill()
    # The learner stopped cleanly (SIGTERM): its last checkpoint carries the RL head inside a whole VLA checkpoint
    # (hand-back), which loads like any other and acts with the trained head.
    head_ckpt = tmp_path / "learner" / "rl_head_ckpt"
    meta = json.loads((head_ckpt / "meta.json").read_text())
    assert meta.get("stage") == 1 and meta.get("rl_updates", 0) > 0, meta
    from policy.model import load_vla
    before, after = load_vla(ckpt), load_vla(head_ckpt)
    diff = max(float((a - b).abs().max()) for a, b in zip(before.head.parameters(), after.head.parameters()))
    assert diff > 0, "the handed-back head is the stage-0 head"
