"""The WebSocket event channel at its edges (issue 16 "WebSocket", issue 18's channel limits):
subprotocols, what counts as delivered (the client's pong), several channels of one AE, the
channel limits, the accepted URL forms, the AE title check, and a client that never reads."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.config import ConfigError, load

from tests.event_receiver import GLOBAL, Ups, WsListener, frame_uid, unassigned
from tests.helpers import GatewayProcess
from tests.raw_websocket import CLOSE, PING, TEXT, RawWebSocket


@pytest.fixture
def proc(tmp_path):
    proc = GatewayProcess(tmp_path, extra={"events": {"max_channels_per_ae": 3,
                                                      "max_channels": 5}}).start()
    yield proc
    proc.stop()


def ws_base(proc) -> str:
    return "ws" + proc.base[proc.base.index(":"):]


# ---- subprotocols -----------------------------------------------------------------------------

async def test_an_offered_subprotocol_is_echoed_or_the_handshake_refused(proc, http):
    ups = Ups(http, proc.base)
    await ups.subscribe(GLOBAL, "BROWSER")
    # a browser's new WebSocket(url, ["other", "dicom+json"]) gets the one the server takes
    listener = await WsListener.open(http, ups.ws_url("BROWSER"),
                                     protocols=("other", "dicom+json"))
    try:
        assert listener.ws.protocol == "dicom+json"
        uid = await ups.create(unassigned())
        await listener.wait(1, uid=uid)
    finally:
        await listener.close()
    # none the server takes: no 101 at all (a browser would drop a 101 without one), but a 400
    # saying which it takes
    raw = await RawWebSocket.connect(ups.ws_url("BROWSER"), protocols=("mqtt", "wamp"))
    try:
        assert raw.status == 400
        assert "dicom+json" in raw.headers["warning"] and "mqtt" in raw.headers["warning"]
    finally:
        raw.abort()
    # none offered: a plain channel, no Sec-WebSocket-Protocol
    raw = await RawWebSocket.connect(ups.ws_url("BROWSER"))
    try:
        assert raw.status == 101 and "sec-websocket-protocol" not in raw.headers
    finally:
        raw.abort()


# ---- delivered = confirmed by the client --------------------------------------------------------

async def test_events_written_to_a_channel_its_client_drops_unread_come_again(proc, http):
    """A browser that drops the 101 (say, for a missing subprotocol) never sees the frames the
    gateway wrote into that socket: they are not delivered until a client confirms them (its
    pong to the ping after them), so the next channel gets them."""
    ups = Ups(http, proc.base)
    await ups.subscribe(GLOBAL, "DROPPER")
    uids = [await ups.create(unassigned()) for _ in range(3)]  # queued: no channel open
    raw = await RawWebSocket.connect(ups.ws_url("DROPPER"))
    assert raw.status == 101
    got = [await raw.frame() for _ in range(4)]  # the gateway wrote them, and its ping
    assert [f.opcode for f in got] == [TEXT, TEXT, TEXT, PING]
    assert [frame_uid(f.json) for f in got[:3]] == uids
    raw.abort()  # gone without answering the ping
    await proc.wait_for_log("event channel closed", ae="DROPPER")

    listener = await WsListener.open(http, ups.ws_url("DROPPER"))
    try:
        frames = await listener.wait(3, uid=uids)
        assert [frame_uid(f) for f in frames] == uids
        # now confirmed: a channel after this one starts after them
        await ups.drain(listener, "DROPPER")
    finally:
        await listener.close()
    await proc.wait_for_log("event channel closed", ae="DROPPER", count=2)
    again = await WsListener.open(http, ups.ws_url("DROPPER"))
    try:
        later = await ups.create(unassigned())
        await again.wait(1, uid=later)
        assert not again.received(uid=uids)
    finally:
        await again.close()


# ---- several channels of one AE, and the limits ---------------------------------------------------

async def test_several_channels_of_one_ae_each_get_every_event_up_to_the_limit(proc, http):
    ups = Ups(http, proc.base)
    await ups.subscribe(GLOBAL, "REPLICA")
    await ups.subscribe(GLOBAL, "OTHER")
    channels = [await WsListener.open(http, ups.ws_url("REPLICA")) for _ in range(3)]
    others = []
    try:
        # a fourth channel of the AE: refused before the upgrade, saying why
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await WsListener.open(http, ups.ws_url("REPLICA"))
        assert refused.value.status == 429
        assert "events.max_channels_per_ae" in refused.value.headers["Warning"]
        uids = [await ups.create(unassigned()) for _ in range(4)]
        for channel in channels:
            frames = await channel.wait(4, uid=uids)
            assert [frame_uid(f) for f in frames] == uids
        for channel in channels:  # nobody knocked anybody off
            assert not channel.closed
        # the process total (5): two more channels of another AE fit, a third does not
        others = [await WsListener.open(http, ups.ws_url("OTHER")) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await WsListener.open(http, ups.ws_url("OTHER"))
        assert refused.value.status == 503
        assert "events.max_channels" in refused.value.headers["Warning"]
        await others.pop().close()
        await proc.wait_for_log("event channel closed", ae="OTHER")
        others.append(await WsListener.open(http, ups.ws_url("OTHER")))  # room again
        # once one channel of the AE leaves, the others go on receiving
        await channels.pop().close()
        later = await ups.create(unassigned())
        for channel in channels:
            await channel.wait(1, uid=later)
    finally:
        for listener in channels + others:
            await listener.close()


async def test_the_ae_cursor_advances_only_when_every_channel_has_confirmed(proc, http):
    """Two channels of one AE: one confirms (a library client answers pings), the other reads
    nothing. The events count as delivered only for both, so once both are gone the AE's next
    channel gets them again; events both confirmed are not repeated."""
    ups = Ups(http, proc.base)
    await ups.subscribe(GLOBAL, "PAIR")
    both = await WsListener.open(http, ups.ws_url("PAIR"))
    first = await ups.create(unassigned())
    await both.wait(1, uid=first)
    await both.close_confirmed(proc, "PAIR")  # stored: both (here: the only) channels have it
    await proc.wait_for_log("event channel closed", ae="PAIR")

    reader = await WsListener.open(http, ups.ws_url("PAIR"))
    sleeper = await RawWebSocket.connect(ups.ws_url("PAIR"))
    assert sleeper.status == 101
    try:
        uids = [await ups.create(unassigned()) for _ in range(2)]
        await reader.wait(2, uid=uids)  # confirmed by this one, never by the sleeper
    finally:
        await reader.close()
        sleeper.abort()
    await proc.wait_for_log("event channel closed", ae="PAIR", count=3)

    again = await WsListener.open(http, ups.ws_url("PAIR"))
    try:
        frames = await again.wait(2, uid=uids)
        assert [frame_uid(f) for f in frames] == uids
        assert not again.received(uid=first)
    finally:
        await again.close()


# ---- URL forms and the AE title ---------------------------------------------------------------------

async def test_the_channel_url_forms_of_ps3_18_8_10(proc, http):
    ups = Ups(http, proc.base)
    await ups.subscribe(GLOBAL, "FORMS")
    root = ws_base(proc)
    base = proc.base.removeprefix(root.replace("ws", "http", 1))  # the configured base path
    forms = [ups.ws_url("FORMS"),                              # what Subscribe returns
             f"{root}{base}/subscribers/FORMS",                # {+WSSERVICE}/subscribers/{AE}
             f"{root}/ws/subscribers/FORMS",                   # at the server root
             f"{root}/aets/UPS_GATEWAY/ws/subscribers/FORMS",  # dcm4chee
             f"{root}{base}/workitems/{GLOBAL}/subscribers/FORMS"]  # the subscription's URL
    for url in forms:
        listener = await WsListener.open(http, url)
        try:
            uid = await ups.create(unassigned())
            await listener.wait(1, uid=uid)
        finally:
            await listener.close()
        await proc.wait_for_log("event channel closed", ae="FORMS", count=forms.index(url) + 1)
    # the bare service root cannot say whose events it wants: told to name the AE
    for url in (f"{root}{base}", f"{root}/"):
        raw = await RawWebSocket.connect(url)
        try:
            assert raw.status == 400 and "subscribers/{AETitle}" in raw.headers["warning"]
        finally:
            raw.abort()


@pytest.mark.parametrize("ae", ["A" * 4000, "BAD%00AE", "%20LEADING", "BACK%5CSLASH", "A" * 17])
async def test_the_channel_checks_the_ae_title_as_subscribe_does(proc, http, ae):
    ups = Ups(http, proc.base)
    subscribe = await ups.subscribe(GLOBAL, ae, expect=None)
    assert subscribe.status == 400
    raw = await RawWebSocket.connect(ups.ws_url(ae))
    try:
        assert raw.status == 400
        assert "is not a valid AE title" in raw.headers["warning"]
    finally:
        raw.abort()
    assert not proc.records("event channel opened")


# ---- a client that never reads --------------------------------------------------------------------

async def test_a_client_that_never_reads_is_closed_with_a_code_and_its_events_wait(tmp_path,
                                                                                   http):
    proc = GatewayProcess(tmp_path, extra={"events": {"channel_send_buffer_bytes": 8192,
                                                      "channel_ack_timeout_seconds": 1.0}}).start()
    try:
        ups = Ups(http, proc.base)
        await ups.subscribe(GLOBAL, "SLEEPER")
        raw = await RawWebSocket.connect(ups.ws_url("SLEEPER"), receive_buffer=4096)
        assert raw.status == 101
        uid = await ups.create(unassigned())
        tx = await ups.claim(uid)
        for step in range(30):  # ≈1 KB each: several times the channel's send buffer
            await ups.progress(uid, tx, step, text=f"{step:04d}" + "x" * 1000)
        record = await proc.wait_for_log("event channel closed: its client confirms nothing",
                                         ae="SLEEPER")
        assert record["unconfirmed"] <= 8192 + 2048  # at most the buffer and one more batch
        await proc.wait_for_log("event channel closed", ae="SLEEPER")
        frames = await raw.frames_until_closed()  # what it would have read, had it read
        texts = [f for f in frames if f.opcode == TEXT]
        assert len(texts) < 32  # the gateway stopped writing at the send buffer's bound
        assert frames[-1].opcode == CLOSE and frames[-1].close_code == 4001
        raw.abort()

        listener = await WsListener.open(http, ups.ws_url("SLEEPER"))
        try:
            got = await listener.wait(32, uid=uid)  # created, claimed, 30 progress reports
            steps = [f["00741002"]["Value"][0]["00741006"]["Value"][0][:4]
                     for f in got if "00741002" in f]
            assert steps == [f"{step:04d}" for step in range(30)]
        finally:
            await listener.close()
    finally:
        proc.stop()


# ---- the settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [
    ("MAX_CHANNELS_PER_AE", "0"), ("MAX_CHANNELS", "0"), ("CHANNEL_SEND_BUFFER_BYTES", "100"),
    ("CHANNEL_ACK_TIMEOUT_SECONDS", "0"), ("WEBSOCKET_SUBPROTOCOLS", '["two words"]'),
    ("WEBSOCKET_SUBPROTOCOLS", '[""]')])
def test_channel_settings_are_checked(name, value):
    with pytest.raises(ConfigError, match=f"events.{name.lower()}"):
        load(None, {f"UPSGW_EVENTS__{name}": value})
    defaults = load(None, {}).events
    assert (defaults.max_channels_per_ae, defaults.max_channels,
            defaults.channel_send_buffer_bytes, defaults.channel_ack_timeout_seconds,
            defaults.websocket_subprotocols) == (8, 1000, 1048576, 30.0, ["dicom+json", "json"])
