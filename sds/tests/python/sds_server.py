"""Interop server: a minimal SDS server built on grpcio and Envoy's published protos (xds-protos).

Prints "PORT <n>" first, then one JSON line per DiscoveryRequest received. Commands on stdin:
  rotate <value>   serve py-key = <value> under the next version and push it to open streams
  bad              push a response whose py-key is a filename DataSource (a client must NACK it)
"""

import asyncio
import json
import sys

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2  # noqa: F401
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def emit(payload):
    print(json.dumps(payload), flush=True)


class Sds(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self):
        self.version = 1
        self.value = "py-v1"
        self.bad = False
        self.nonce = 0
        self.queues = set()

    def secrets(self):
        key = secret_pb2.Secret(name="py-key")
        if self.bad:
            key.generic_secret.secret.filename = "/etc/only-on-the-server"
        else:
            key.generic_secret.secret.inline_string = self.value
        pair = secret_pb2.Secret(name="py-pair")
        pair.generic_secret.secrets["client_id"].CopyFrom(
            base_pb2.DataSource(inline_bytes=b"py-client-id")
        )
        pair.generic_secret.secrets["client_secret"].CopyFrom(
            base_pb2.DataSource(inline_string="py-client-secret")
        )
        return {"py-key": key, "py-pair": pair}

    def response(self, names):
        self.nonce += 1
        resources = []
        for name, secret in sorted(self.secrets().items()):
            if names and name not in names:
                continue
            packed = any_pb2.Any()
            packed.Pack(secret)
            resources.append(packed)
        return discovery_pb2.DiscoveryResponse(
            version_info=f"py-{self.version}",
            resources=resources,
            type_url=SECRET_TYPE,
            nonce=f"py-nonce-{self.nonce}",
        )

    async def push(self):
        for q in list(self.queues):
            await q.put(("push", None))

    async def StreamSecrets(self, request_iterator, context):
        q = asyncio.Queue()
        self.queues.add(q)

        async def reader():
            try:
                async for req in request_iterator:
                    emit(
                        {
                            "event": "request",
                            "node": req.node.id,
                            "cluster": req.node.cluster,
                            "names": list(req.resource_names),
                            "type_url": req.type_url,
                            "version_info": req.version_info,
                            "nonce": req.response_nonce,
                            "error": req.error_detail.message
                            if req.HasField("error_detail")
                            else None,
                        }
                    )
                    await q.put(("req", req))
            finally:
                await q.put(("eof", None))

        task = asyncio.create_task(reader())
        names = None
        try:
            while True:
                kind, req = await q.get()
                if kind == "eof":
                    return
                if kind == "req":
                    requested = set(req.resource_names)
                    if names is None or requested != names:
                        names = requested
                        yield self.response(names)
                elif kind == "push" and names is not None:
                    yield self.response(names)
        finally:
            self.queues.discard(q)
            task.cancel()

    async def FetchSecrets(self, request, context):
        return self.response(set(request.resource_names))


async def main():
    sds = Sds()
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(sds, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = line.split()
        if cmd and cmd[0] == "rotate":
            sds.version += 1
            sds.value = cmd[1]
            sds.bad = False
            await sds.push()
        elif cmd and cmd[0] == "bad":
            sds.version += 1
            sds.bad = True
            await sds.push()
    await server.stop(grace=None)


if __name__ == "__main__":
    asyncio.run(main())
