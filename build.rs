//! Compiles every `src/bpf/*.bpf.c` into an object and a libbpf-rs skeleton
//! in OUT_DIR. Warnings fail the build. Any change to a program, a shared
//! header or the vendored headers re-runs it, so a skeleton never goes
//! stale after a header edit.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn watch_dir(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            watch_dir(&path);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("c" | "h")) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let bpf_dir = root.join("src/bpf");
    let include = root.join("include");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang-19".to_string());
    println!("cargo:rerun-if-env-changed=CLANG");
    watch_dir(&bpf_dir);
    watch_dir(&include);

    let mut programs: Vec<PathBuf> = fs::read_dir(&bpf_dir)
        .expect("src/bpf")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".bpf.c")))
        .collect();
    programs.sort();

    for src in programs {
        let file = src.file_name().and_then(|f| f.to_str()).expect("utf-8 file name");
        let name = file.trim_end_matches(".bpf.c");
        let obj = out.join(format!("{name}.bpf.o"));
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .obj(&obj)
            .clang(&clang)
            .clang_args([
                "-I".to_string(),
                include.display().to_string(),
                "-I".to_string(),
                bpf_dir.display().to_string(),
                "-Wall".to_string(),
                "-Wextra".to_string(),
                "-Werror".to_string(),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
        // The same program with the trace compiled out (-DDP_NO_TRACE):
        // only the benchmark loads it, to measure what the trace costs
        // while no trace runs.
        SkeletonBuilder::new()
            .source(&src)
            .obj(out.join(format!("{name}.notrace.bpf.o")))
            .clang(&clang)
            .clang_args([
                "-I".to_string(),
                include.display().to_string(),
                "-I".to_string(),
                bpf_dir.display().to_string(),
                "-Wall".to_string(),
                "-Wextra".to_string(),
                "-Werror".to_string(),
                "-DDP_NO_TRACE".to_string(),
            ])
            .build()
            .unwrap_or_else(|e| panic!("building {} without the trace: {e:#}", src.display()));
    }
}
