//! Compiles the minimal Envoy SDS protos in `proto/` with protox (pure Rust, so no system
//! `protoc` is needed) and generates prost messages plus tonic client and server stubs.
//! It does not fetch anything: the `.proto` files are checked in.

use std::error::Error;

const PROTOS: &[&str] = &[
    "proto/envoy/config/core/v3/base.proto",
    "proto/google/rpc/status.proto",
    "proto/envoy/service/discovery/v3/discovery.proto",
    "proto/envoy/extensions/transport_sockets/tls/v3/common.proto",
    "proto/envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "proto/envoy/service/secret/v3/sds.proto",
    "proto/envoy/service/discovery/v3/ads.proto",
    "proto/egress_edge/fleet/v1/fleet.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        // Well-known types are generated locally (only Any is used) so that Any can get a
        // redacting Debug: its `value` carries encoded secrets.
        .compile_well_known_types(true)
        .skip_debug([".google.protobuf.Any", ".envoy.config.core.v3.DataSource"])
        .include_file("sds_protos.rs")
        .compile_fds(fds)?;
    Ok(())
}
