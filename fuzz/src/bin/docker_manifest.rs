//! AFL++ entry point of `gantry_fuzz::docker_manifest` (`cargo afl build --release`, see FUZZING.md).

fn main() {
    afl::fuzz!(|data: &[u8]| gantry_fuzz::docker_manifest(data));
}
