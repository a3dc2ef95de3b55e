//! The transparent listener: placeholder.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::rung::Ladder;
use crate::state::Shared;

#[derive(Debug)]
pub struct TransparentListener {
    pub listener: TcpListener,
    pub shared: Arc<Shared>,
    pub ladder: Arc<Ladder>,
}

impl TransparentListener {
    pub async fn run(self) {
        self.shared.draining.cancelled().await;
    }
}
