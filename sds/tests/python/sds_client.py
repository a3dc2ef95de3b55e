"""Interop client: talks to egress-edge's SDS server using Envoy's published protos (xds-protos).

Prints one JSON line per step on stdout:
  {"event": "fetch", ...}    FetchSecrets result
  {"event": "stream", ...}   first StreamSecrets response (then ACKed)
  {"event": "stream", ...}   next pushed response, after the test rotates the file (then ACKed)
Secret values are printed because the test compares them; they are throwaway test values.
"""

import argparse
import json
import queue
import sys

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def data(ds):
    kind = ds.WhichOneof("specifier")
    if kind == "inline_bytes":
        return ds.inline_bytes.decode()
    if kind == "inline_string":
        return ds.inline_string
    return {"unexpected": kind}


def decode(resp):
    out = {}
    for any_msg in resp.resources:
        assert any_msg.type_url == SECRET_TYPE, any_msg.type_url
        s = secret_pb2.Secret()
        assert any_msg.Unpack(s)
        kind = s.WhichOneof("type")
        if kind == "generic_secret":
            g = s.generic_secret
            entry = {"kind": kind}
            if g.HasField("secret"):
                entry["value"] = data(g.secret)
            if g.secrets:
                entry["values"] = {k: data(v) for k, v in g.secrets.items()}
        elif kind == "tls_certificate":
            entry = {
                "kind": kind,
                "chain_head": data(s.tls_certificate.certificate_chain).splitlines()[0],
                "key_len": len(data(s.tls_certificate.private_key)),
            }
        else:
            entry = {"kind": kind}
        out[s.name] = entry
    return {
        "version": resp.version_info,
        "nonce": resp.nonce,
        "type_url": resp.type_url,
        "secrets": out,
    }


def emit(event, payload):
    payload["event"] = event
    print(json.dumps(payload), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--names", required=True)
    args = ap.parse_args()
    names = args.names.split(",")
    node = base_pb2.Node(id="python-interop", cluster="interop")

    with grpc.insecure_channel(args.target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)

        fetched = stub.FetchSecrets(
            discovery_pb2.DiscoveryRequest(node=node, resource_names=names, type_url=SECRET_TYPE),
            timeout=10,
        )
        emit("fetch", decode(fetched))

        requests = queue.Queue()

        def request_iter():
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        requests.put(
            discovery_pb2.DiscoveryRequest(node=node, resource_names=names, type_url=SECRET_TYPE)
        )
        responses = stub.StreamSecrets(request_iter(), timeout=60)
        for i, resp in enumerate(responses):
            emit("stream", decode(resp))
            requests.put(
                discovery_pb2.DiscoveryRequest(
                    node=node,
                    resource_names=names,
                    type_url=SECRET_TYPE,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                )
            )
            if i == 1:
                break
        requests.put(None)
        responses.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
