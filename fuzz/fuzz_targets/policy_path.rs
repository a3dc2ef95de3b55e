#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress_edge::fuzzing::policy_path(data));
