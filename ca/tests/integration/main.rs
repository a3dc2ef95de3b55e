//! Integration tests of egress-ca: one test binary (one link step) with a module per concern.
//!
//! The modules are `cfg(test)` so that clippy's allow-unwrap-in-tests covers their helpers too.

#[cfg(test)]
mod byo;
#[cfg(test)]
mod cache;
#[cfg(test)]
mod common;
#[cfg(test)]
mod installer;
#[cfg(test)]
mod leaf;
#[cfg(test)]
mod name_constraints;
#[cfg(test)]
mod store;
#[cfg(test)]
mod strict_der;
