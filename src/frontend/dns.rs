//! The guest resolver (`dns.listen`): placeholder until the resolver lands.

use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

use crate::state::Shared;

/// The guest resolver's sockets and what answers are decided with.
#[derive(Debug)]
pub struct GuestResolver {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    pub shared: Arc<Shared>,
}

impl GuestResolver {
    /// Serves until `shared.draining` fires.
    pub async fn run(self) {
        self.shared.draining.cancelled().await;
    }
}
