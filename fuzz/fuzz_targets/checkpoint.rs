//! Checkpoint loading: the safetensors header, the checksum, the `amlmil`
//! manifest and the tensors, then building the model the manifest declares and
//! loading the tensors into it (as a session does). Every input must give `Ok`
//! or `Err`; a manifest declaring a huge model must not allocate it.
#![no_main]

use std::io::Write;
use std::path::Path;

use amlmil::checkpoint::{Checkpoint, Manifest};
use libfuzzer_sys::fuzz_target;
use tch::Device;

fuzz_target!(init: amlmil_fuzz::init("checkpoint"), |data: &[u8]| {
    let name = Path::new("fuzz.safetensors");
    let ck = Checkpoint::from_bytes(data, name);
    amlmil_fuzz::report("Checkpoint::from_bytes", &ck);
    let Ok(ck) = ck else {
        return;
    };
    // The loaders are path-based: hand them the same bytes as a file.
    let mut file = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile()
        .expect("temporary file");
    file.write_all(data).expect("write temporary file");
    match ck.manifest {
        Manifest::Encoder(_) => {
            let r = amlmil::frozen::load_encoder(file.path(), Device::Cpu);
            amlmil_fuzz::report("load_encoder", &r);
        }
        Manifest::Mil(_) => {
            let r = amlmil::frozen::load_mil(file.path(), Device::Cpu);
            amlmil_fuzz::report("load_mil", &r);
        }
    }
});
