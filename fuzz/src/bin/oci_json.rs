//! AFL++ entry point of `gantry_fuzz::oci_json` (`cargo afl build --release`, see FUZZING.md).

fn main() {
    afl::fuzz!(|data: &[u8]| gantry_fuzz::oci_json(data));
}
