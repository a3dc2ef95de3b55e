"""Interop control plane: an independent ADS server (state of the world) for egress-edge's fleet
types, plus a minimal SDS server, built on grpcio and Envoy's published protos (xds-protos).
The fleet messages are compiled at start-up from egress-edge's fleet.proto with grpcio-tools
(`python -m grpc_tools.protoc`) into a temporary directory; nothing of egress-edge's own code
is used.

Usage: fleet_interop.py --proto-root DIR [--secret NAME=VALUE ...]

Prints "PORT <n>" first (the gRPC server on 127.0.0.1), then one JSON line per event:
  {"event": "versions", ...}                   protobuf runtime and gencode versions
  {"event": "subscribe"|"ack"|"nack", ...}     each ADS DiscoveryRequest: type, version,
                                               nonce, resource_names, error (a NACK's
                                               error_detail.message), heartbeat (whether the
                                               nonce answered was a heartbeat)
  {"event": "sent", ...}                       each ADS DiscoveryResponse sent (bodies: how
                                               many of its resources carry a message)
  {"event": "sds", ...}                        each SDS DiscoveryRequest
  {"event": "done", "cmd": ...}                a command from stdin has been carried out

Fleet types are held (subscriptions are not answered) until released. Commands on stdin, one
JSON object a line:
  {"cmd": "release", "type": T}                answer the subscriptions to T from now on
  {"cmd": "set", "type": T, "version": V, "resources": [R, ...]}
        serve T's set as version V and push it to every subscribed stream; each R is
        {"msg": {...}} (the message in protobuf JSON form, sent as a plain Any) plus, to send
        it wrapped in envoy.service.discovery.v3.Resource, "name" and optionally "ttl" (s)
  {"cmd": "heartbeat", "types": [T, ...], "interval": S}
        every S seconds, re-send on each stream the set of each T that stream last ACKed, with
        the ACKed version, and each wrapped resource that has a TTL as a Resource without a
        body (a TTL refresh); interval 0 stops (the "done" line comes after the last one)
  {"cmd": "quit"}
T is one of Revocation, Profile, Sandbox, KillSwitch.
"""

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2, duration_pb2, json_format

FLEET_PACKAGE = "egress_edge.fleet.v1"
TYPES = ["Revocation", "Profile", "Sandbox", "KillSwitch"]
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def emit(payload):
    print(json.dumps(payload), flush=True)


async def feed(request_iterator, q):
    """Puts a stream's requests on its work queue, then ("eof", None). The server's quit puts
    "eof" there too, so every handler returns by itself instead of being cancelled."""
    try:
        async for req in request_iterator:
            await q.put(("req", req))
    finally:
        await q.put(("eof", None))


def compile_fleet(proto_root):
    """Compiles fleet.proto with grpcio-tools into a temp dir; returns the generated module."""
    out = tempfile.mkdtemp(prefix="fleet-proto-")
    proto = "egress_edge/fleet/v1/fleet.proto"
    run = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", proto_root, f"--python_out={out}", proto],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        sys.exit(f"protoc failed on {proto}: {run.stderr}")
    sys.path.insert(0, out)
    # The generated module checks that the protobuf runtime (xds-protos' dependency) can run
    # code from this protoc (grpcio-tools') on import, and raises if the versions disagree.
    module = importlib.import_module(f"{FLEET_PACKAGE}.fleet_pb2")
    gencode = "?"
    with open(os.path.join(out, proto.replace(".proto", "_pb2.py"))) as f:
        for line in f:
            if line.startswith("# Protobuf Python Version:"):
                gencode = line.split(":", 1)[1].strip()
    import google.protobuf

    emit({"event": "versions", "runtime": google.protobuf.__version__, "gencode": gencode})
    return module


class Stream:
    """One ADS stream: its queue of work, the types it subscribed to, the responses sent on it
    (by nonce) and the last response of each type it ACKed."""

    def __init__(self):
        self.queue = asyncio.Queue()
        self.subscribed = set()
        self.sent = {}
        self.acked = {}


class Fleet(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, pb):
        self.classes = {t: getattr(pb, t) for t in TYPES}
        self.urls = {f"type.googleapis.com/{FLEET_PACKAGE}.{t}": t for t in TYPES}
        # Per type: the version and resource specs served; the types whose subscriptions are
        # answered.
        self.sets = {t: ("", []) for t in TYPES}
        self.released = set()
        self.streams = set()
        self.nonce = 0
        # Bumped when heartbeats stop, so one already queued for a stream is not sent.
        self.beat_generation = 0

    def next_nonce(self):
        self.nonce += 1
        return f"py-{self.nonce}"

    def any_of(self, ty, spec, version, body=True):
        """One resource as an Any: the plain message, or a Resource wrapper (without a body
        when `body` is false: a heartbeat)."""
        packed = any_pb2.Any()
        msg = json_format.ParseDict(spec["msg"], self.classes[ty]())
        packed.Pack(msg)
        if "name" not in spec:
            return packed
        wrapper = discovery_pb2.Resource(name=spec["name"], version=version)
        if "ttl" in spec:
            ttl = duration_pb2.Duration()
            ttl.FromNanoseconds(int(spec["ttl"] * 1e9))
            wrapper.ttl.CopyFrom(ttl)
        if body:
            wrapper.resource.CopyFrom(packed)
        out = any_pb2.Any()
        out.Pack(wrapper)
        return out

    def response(self, stream, ty, version, specs, heartbeat):
        nonce = self.next_nonce()
        # A heartbeat refreshes the TTL of each wrapped resource that has one, without a body.
        bodies = [not (heartbeat and "ttl" in s and "name" in s) for s in specs]
        resources = [self.any_of(ty, s, version, body=b) for s, b in zip(specs, bodies)]
        stream.sent[nonce] = (ty, version, specs, heartbeat)
        emit(
            {
                "event": "sent",
                "type": ty,
                "version": version,
                "nonce": nonce,
                "resources": len(resources),
                "bodies": sum(bodies),
                "heartbeat": heartbeat,
            }
        )
        url = next(u for u, t in self.urls.items() if t == ty)
        return discovery_pb2.DiscoveryResponse(
            version_info=version, resources=resources, type_url=url, nonce=nonce
        )

    async def push(self, ty):
        for s in list(self.streams):
            await s.queue.put(("push", ty))

    async def heartbeat(self, types):
        for s in list(self.streams):
            await s.queue.put(("heartbeat", (self.beat_generation, types)))

    async def StreamAggregatedResources(self, request_iterator, context):
        stream = Stream()
        self.streams.add(stream)
        q = stream.queue

        task = asyncio.create_task(feed(request_iterator, q))
        try:
            while True:
                kind, arg = await q.get()
                if kind == "eof":
                    return
                if kind == "req":
                    req = arg
                    ty = self.urls.get(req.type_url)
                    answered = stream.sent.get(req.response_nonce)
                    error = req.error_detail.message if req.HasField("error_detail") else None
                    event = "subscribe" if not req.response_nonce else ("nack" if error else "ack")
                    emit(
                        {
                            "event": event,
                            "type": ty or req.type_url,
                            "version": req.version_info,
                            "nonce": req.response_nonce,
                            "names": list(req.resource_names),
                            "node": req.node.id,
                            "error": error,
                            "code": req.error_detail.code if error else None,
                            "heartbeat": bool(answered and answered[3]),
                        }
                    )
                    if ty is None:
                        continue
                    if event == "subscribe":
                        stream.subscribed.add(ty)
                        if ty in self.released:
                            version, specs = self.sets[ty]
                            yield self.response(stream, ty, version, specs, False)
                    elif event == "ack" and answered:
                        stream.acked[ty] = (answered[1], answered[2])
                elif kind == "push":
                    ty = arg
                    if ty in stream.subscribed and ty in self.released:
                        version, specs = self.sets[ty]
                        yield self.response(stream, ty, version, specs, False)
                elif kind == "heartbeat" and arg[0] == self.beat_generation:
                    for ty in arg[1]:
                        if ty in stream.acked:
                            version, specs = stream.acked[ty]
                            yield self.response(stream, ty, version, specs, True)
        finally:
            self.streams.discard(stream)
            task.cancel()


class Sds(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, secrets):
        self.secrets = secrets
        self.nonce = 0
        self.queues = set()

    def response(self, names):
        self.nonce += 1
        resources = []
        for name in sorted(names):
            if name not in self.secrets:
                continue
            secret = secret_pb2.Secret(name=name)
            secret.generic_secret.secret.inline_string = self.secrets[name]
            packed = any_pb2.Any()
            packed.Pack(secret)
            resources.append(packed)
        return discovery_pb2.DiscoveryResponse(
            version_info="py-sds-1",
            resources=resources,
            type_url=SECRET_TYPE,
            nonce=f"py-sds-{self.nonce}",
        )

    async def StreamSecrets(self, request_iterator, context):
        q = asyncio.Queue()
        self.queues.add(q)
        task = asyncio.create_task(feed(request_iterator, q))
        names = None
        try:
            while True:
                kind, req = await q.get()
                if kind == "eof":
                    return
                emit(
                    {
                        "event": "sds",
                        "names": list(req.resource_names),
                        "version": req.version_info,
                        "nonce": req.response_nonce,
                        "error": req.error_detail.message
                        if req.HasField("error_detail")
                        else None,
                    }
                )
                requested = set(req.resource_names)
                if names != requested:
                    names = requested
                    yield self.response(names)
        finally:
            self.queues.discard(q)
            task.cancel()

    async def FetchSecrets(self, request, context):
        return self.response(set(request.resource_names))


async def heartbeats(fleet, types, interval):
    while True:
        await fleet.heartbeat(types)
        await asyncio.sleep(interval)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--secret", action="append", default=[])
    args = ap.parse_args()
    pb = compile_fleet(args.proto_root)
    fleet = Fleet(pb)
    sds = Sds(dict(s.split("=", 1) for s in args.secret))
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(fleet, server)
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(sds, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)

    loop = asyncio.get_running_loop()
    beating = None
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        name = cmd["cmd"]
        if name == "quit":
            for q in [s.queue for s in fleet.streams] + list(sds.queues):
                await q.put(("eof", None))
            await server.stop(grace=5)
            emit({"event": "done", "cmd": name, "at": time.time()})
            return
        if name == "release":
            fleet.released.add(cmd["type"])
            await fleet.push(cmd["type"])
        elif name == "set":
            fleet.sets[cmd["type"]] = (cmd["version"], cmd["resources"])
            await fleet.push(cmd["type"])
        elif name == "heartbeat":
            fleet.beat_generation += 1
            if beating:
                beating.cancel()
                try:
                    await beating
                except asyncio.CancelledError:
                    pass
                beating = None
            if cmd["interval"] > 0:
                beating = asyncio.create_task(heartbeats(fleet, cmd["types"], cmd["interval"]))
        else:
            sys.exit(f"unknown command {name!r}")
        emit({"event": "done", "cmd": name, "at": time.time()})
    await server.stop(grace=None)


if __name__ == "__main__":
    asyncio.run(main())
