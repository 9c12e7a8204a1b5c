//! AFL++ entry point of `gantry_fuzz::tar_layer` (`cargo afl build --release`, see FUZZING.md).

fn main() {
    afl::fuzz!(|data: &[u8]| gantry_fuzz::tar_layer(data));
}
