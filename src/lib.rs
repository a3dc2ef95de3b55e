//! egress-edge
