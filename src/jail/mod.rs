//! Confining a process or a sandbox: the nftables ruleset ([`nft`]) that sends a sandbox's
//! traffic to the transparent listener and the guest resolver.

pub mod nft;
