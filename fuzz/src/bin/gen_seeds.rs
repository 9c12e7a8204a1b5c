//! Writes the seed corpora: `gen_seeds DIR` → `DIR/<target>/<name>`.

#![allow(clippy::print_stdout)]

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    let seeds = gantry_fuzz::seeds::all();
    for (target, name, bytes) in &seeds {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("seed dir");
        std::fs::write(d.join(name), bytes).expect("write seed");
    }
    println!("{} seeds in {}", seeds.len(), dir.display());
}
