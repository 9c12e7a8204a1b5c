//! Runs a target on files, without AFL: `replay TARGET FILE...` (a crash reproduces as a
//! panic with its message), or `replay TARGET DIR` for every file of a directory.

#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!("usage: replay TARGET FILE|DIR...");
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for a in args {
        let p = PathBuf::from(a);
        if p.is_dir() {
            let mut more: Vec<PathBuf> = std::fs::read_dir(&p)
                .expect("read dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.is_file())
                .collect();
            more.sort();
            files.extend(more);
        } else {
            files.push(p);
        }
    }
    for f in &files {
        let data = std::fs::read(f).expect("read input");
        if !gantry_fuzz::run(&target, &data) {
            eprintln!("unknown target {target}");
            std::process::exit(2);
        }
    }
    println!("{target}: {} inputs ran", files.len());
}
