//! gantry's integration tests: one binary, one module per feature. Every test runs the real
//! binary in its own [`gantry_test::TestEnv`] and checks the results with the real peers
//! (umoci, skopeo, oci-image-tool, runc, gzip, zstd). A missing tool fails the test.

mod bad_input;
mod commands;
mod crash;
mod examples;
mod faithful_images;
mod faithful_layers;
mod golden;
mod interop;
mod layout_base;
mod project;
mod registry;
mod registry_auth;
mod registry_faults;
mod remote_cache;
mod reproducibility;
mod steps;
mod store;
mod transports;
mod unpack_hardening;

/// The binary under test.
pub(crate) const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");

pub(crate) fn env() -> gantry_test::TestEnv {
    gantry_test::TestEnv::new(GANTRY)
}
