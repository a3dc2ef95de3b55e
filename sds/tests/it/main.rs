//! Integration tests of egress-sds over real sockets, real TLS and a real server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ads;
mod common;
mod file_parsing;
mod mtls;
mod nack;
mod stream;
mod unix;
