"""Keepalive pings that the other side accepts: gRPC core answers a third ping sooner than its
policy allows with GOAWAY "too_many_pings", which closes the connection and fails the calls in
flight. Both checks wait out several ping intervals, so `make soak` runs them (about 2.5 minutes).

- irgate's server accepts a ping every 10 s (gRPC clients' floor), idle or not: SDKs and meshes
  ping far more often than gRPC's default 5-minute policy allows.
- irgate's channel to Triton pings no more often than a Triton with default flags accepts (it
  pinged an idle channel every 30 s, and Triton closed it after 90 s).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from irgate.backends.triton import _CHANNEL_OPTIONS
from irgate.local_server import LocalServer
from irgate.models.tritonserver import TritonServer
from irgate_client.v1 import irgate_pb2, irgate_pb2_grpc

pytestmark = pytest.mark.skipif(os.environ.get("IRGATE_SOAK_KEEPALIVE") != "1",
                                reason="waits out several ping intervals: make soak runs it")


def states_while_idle(channel: grpc.Channel, seconds: float) -> list[grpc.ChannelConnectivity]:
    """The channel's connectivity states from ready through `seconds` without a call."""
    states: list[grpc.ChannelConnectivity] = []
    grpc.channel_ready_future(channel).result(timeout=30)
    channel.subscribe(states.append)
    time.sleep(seconds)
    channel.unsubscribe(states.append)
    return states


def test_the_server_accepts_a_ping_every_ten_seconds_on_an_idle_channel(minilm_folder: Path, tmp_path: Path) -> None:
    pinging = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    with LocalServer(tmp_path, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none"]) as server:
        with grpc.insecure_channel(server.address, options=pinging) as channel:
            # gRPC core's default policy sent GOAWAY at the fourth ping (40 s): the channel went idle.
            states = states_while_idle(channel, 45)
            assert states == [grpc.ChannelConnectivity.READY], states
            info = irgate_pb2_grpc.InfoStub(channel).GetInfo(irgate_pb2.GetInfoRequest(), timeout=10)
            assert info.embedder.dimension == 384


def test_the_triton_channel_is_not_sent_away_by_a_default_triton(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    with TritonServer(repository) as triton:
        with grpc.insecure_channel(triton.address, options=_CHANNEL_OPTIONS) as channel:
            # The 30 s idle pings drew GOAWAY after 90 s.
            states = states_while_idle(channel, 100)
            assert states == [grpc.ChannelConnectivity.READY], states
            live = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
            assert live.live
