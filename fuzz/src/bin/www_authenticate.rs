//! AFL++ entry point of `gantry_fuzz::www_authenticate` (`cargo afl build --release`, see FUZZING.md).

fn main() {
    afl::fuzz!(|data: &[u8]| gantry_fuzz::www_authenticate(data));
}
