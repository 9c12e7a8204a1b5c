//! Names that a layer would read as whiteouts: a build step's outputs and diffs refuse files
//! named `.wh.*` (only real deletions become whiteouts), wherever they are in the path.

use std::fs;
use std::path::Path;

use gantry_layer::Defaults;
use gantry_layer::capture::{outputs_recipe, tree_diff_recipe};
use gantry_layer::recipe::EntryKind;

fn write(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

#[test]
fn regression_an_output_under_a_wh_directory_became_a_whiteout() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    write(&root.join("out/.wh.d/file"), "x");
    // The output's implicit parent /out/.wh.d was a whiteout of /out/d in the layer.
    let e = outputs_recipe(
        &root,
        None,
        &["/out/.wh.d/file".to_owned()],
        &[],
        Defaults::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/out/.wh.d") && e.contains("whiteout"), "{e}");
}

#[test]
fn a_diff_makes_whiteouts_only_from_deletions() {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
    write(&lower.join("etc/gone"), "x");
    write(&lower.join("etc/kept"), "x");
    write(&upper.join("etc/kept"), "x");
    let r = tree_diff_recipe(&lower, &upper, Defaults::new(0)).unwrap();
    let names: Vec<String> = r
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File(_)))
        .map(|e| e.path.to_string())
        .collect();
    assert_eq!(names, ["/etc/.wh.gone"]);

    // A step that made a file literally named like a whiteout: refused, named.
    write(&upper.join("etc/.wh.kept"), "");
    let e = tree_diff_recipe(&lower, &upper, Defaults::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/.wh.kept") && e.contains("whiteout"), "{e}");
    fs::remove_file(upper.join("etc/.wh.kept")).unwrap();
    write(&upper.join(".wh.dir/inside"), "");
    let e = tree_diff_recipe(&lower, &upper, Defaults::new(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/.wh.dir") && e.contains("whiteout"), "{e}");
}
