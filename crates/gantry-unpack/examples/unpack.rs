//! Unpacks layer blobs (plain, gzip or zstd tars), in order, into a new or empty rootfs:
//!
//! ```text
//! cargo run --release -p gantry-unpack --example unpack -- ROOTFS LAYER...
//! ```
//!
//! Prints nothing; fails with the error. Meant for timing against `umoci unpack`. The layers
//! are applied one by one with `unpack_layer` (no diff_ids to verify them against), so a
//! failure leaves a partial tree.

use std::fs::File;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let root = args.next().ok_or("usage: unpack ROOTFS LAYER...")?;
    let root = Path::new(&root);
    std::fs::create_dir_all(root)?;
    if std::fs::read_dir(root)?.next().is_some() {
        return Err(format!("{} is not empty", root.display()).into());
    }
    let opts = gantry_unpack::UnpackOptions::default();
    for path in args {
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        gantry_unpack::unpack_layer(root, &path.to_string_lossy(), file, &opts)?;
    }
    Ok(())
}
