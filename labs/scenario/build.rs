//! Embeds every scenarios/*.toml (adding a scenario is adding a file).
use std::{env, fs, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../scenarios")
        .canonicalize()
        .unwrap();
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// Every scenarios/*.toml: (path shown in messages, contents).\npub const BUILTIN: &[(&str, &str)] = &[\n",
    );
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let shown = format!("scenarios/{}", f.file_name().unwrap().to_string_lossy());
        out.push_str(&format!("    ({shown:?}, include_str!({:?})),\n", f.display().to_string()));
    }
    out.push_str("];\n");
    // Mesh files the scenarios apply (scenarios/mesh/*.toml), by their path under scenarios/.
    let mesh_dir = dir.join("mesh");
    println!("cargo:rerun-if-changed={}", mesh_dir.display());
    let mut meshes: Vec<_> = fs::read_dir(&mesh_dir)
        .map(|d| {
            d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect()
        })
        .unwrap_or_default();
    meshes.sort();
    out.push_str("/// Every scenarios/mesh/*.toml: (path under scenarios/, contents).\npub const MESH_FILES: &[(&str, &str)] = &[\n");
    for f in meshes {
        println!("cargo:rerun-if-changed={}", f.display());
        let shown = format!("mesh/{}", f.file_name().unwrap().to_string_lossy());
        out.push_str(&format!("    ({shown:?}, include_str!({:?})),\n", f.display().to_string()));
    }
    out.push_str("];\n");
    fs::write(PathBuf::from(env::var("OUT_DIR").unwrap()).join("scenarios.rs"), out).unwrap();
}
