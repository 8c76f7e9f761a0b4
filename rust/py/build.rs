//! Without the `extension-module` feature (the unit tests, `cargo test -p nodedb-cluster-py`)
//! the crate links libpython: give it the interpreter's library directory as rpath, since pyenv
//! and venv interpreters live outside the loader's default path. Maturin's builds (with the
//! feature) link no libpython and get nothing here.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_EXTENSION_MODULE");
    if std::env::var_os("CARGO_FEATURE_EXTENSION_MODULE").is_some() {
        return;
    }
    if let Some(dir) = pyo3_build_config::get().lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
