//! Unpacks layer blobs (plain, gzip or zstd tars), in order, into a new or empty rootfs:
//!
//! ```text
//! cargo run --release -p gantry-unpack --example unpack -- ROOTFS LAYER...
//! ```
//!
//! Prints nothing; fails with the error. Meant for timing against `umoci unpack`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let root = args.next().ok_or("usage: unpack ROOTFS LAYER...")?;
    let mut layers: Vec<(String, Box<dyn Read>)> = Vec::new();
    for path in args {
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        layers.push((path.to_string_lossy().into_owned(), Box::new(file)));
    }
    gantry_unpack::unpack_image(
        Path::new(&root),
        layers,
        &gantry_unpack::UnpackOptions::default(),
    )?;
    Ok(())
}
