"""The wire protocol between agents and the controller (docs/protocol.md).

Vocabulary:

frame
    ``length u32 || type u8 || payload`` on a TCP connection (:mod:`.frames`): a control
    message (JSON) or data (raw or lz4).
control message
    a JSON object with a ``type`` member, validated by its schema (:mod:`.messages`).
cluster key
    32 random bytes every agent and controller of a cluster shares (:mod:`.auth`).
handshake
    hello, challenge, auth, welcome: both ends prove the cluster key with HMAC-SHA256
    before anything else is read (:mod:`.auth`).
channel
    an authenticated connection: send and receive messages and data, make requests
    (:mod:`.transport`).
request, response
    a command and its answer; ``{"accepted": true}`` when the work goes on afterwards.
stream
    bulk data after an accepted transfer request, closed by ``end`` and acknowledged by
    ``ack`` once durable (:mod:`.stream`).
transfer
    wlog-transfer (storage → proxy), wdiff-transfer (proxy → archive), dirty-full-sync
    (storage → archive).

The modules other than :mod:`.transport` do no I/O.
"""

LISTEN_PATTERN = r"[^\s:]+:[0-9]{1,5}"  # HOST:PORT of a metrics endpoint (an agent's or a device's metrics_listen)
