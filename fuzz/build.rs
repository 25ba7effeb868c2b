//! A RUNPATH to the libtorch the targets link against, as the main crate's build.rs
//! gives its own binaries (its link arguments do not reach dependents).
fn main() {
    // torch-sys (`links = "tch"`) publishes the lib dir it linked against.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
