//! Generated Envoy SDS wire types and tonic stubs (from `proto/`, compiled by `build.rs`).
//!
//! It adds only redacting `Debug` impls for the two types that carry secret bytes
//! (`DataSource` and `Any`); it does not convert to or validate the domain model (see `secret`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/sds_protos.rs"));

/// Type URL of `envoy.extensions.transport_sockets.tls.v3.Secret` inside `google.protobuf.Any`.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Type URL of `envoy.service.discovery.v3.Resource`, the wrapper that carries a TTL.
pub const RESOURCE_TYPE_URL: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

pub use egress_edge::fleet::v1 as fleet;
pub use envoy::config::core::v3::{DataSource, Node, data_source::Specifier};
pub use envoy::extensions::transport_sockets::tls::v3 as tls;
pub use envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
pub use envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
pub use envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse, Resource};
pub use envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
pub use envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
pub use google::protobuf::Any;
pub use google::rpc::Status as RpcStatus;

// `value` is an encoded Secret: print its size only, so a stray `{:?}` of a DiscoveryResponse
// cannot leak a credential.
impl std::fmt::Debug for Any {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Any")
            .field("type_url", &self.type_url)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

impl std::fmt::Debug for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSource")
            .field("specifier", &self.specifier)
            .finish()
    }
}

// File names and variable names are not secret, inline contents are.
impl std::fmt::Debug for Specifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Specifier::Filename(p) => f.debug_tuple("Filename").field(p).finish(),
            Specifier::EnvironmentVariable(v) => {
                f.debug_tuple("EnvironmentVariable").field(v).finish()
            }
            Specifier::InlineBytes(b) => write!(f, "InlineBytes(<redacted, {} bytes>)", b.len()),
            Specifier::InlineString(s) => {
                write!(f, "InlineString(<redacted, {} bytes>)", s.len())
            }
        }
    }
}
