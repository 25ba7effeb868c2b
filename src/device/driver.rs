//! What the NVIDIA driver says about the GPUs: name, memory, compute
//! capability, multiprocessors and the driver's CUDA version, for `amlmil info`
//! and [`crate::runtime_info`]. libtorch's C API (and so tch) exposes only the
//! device count, so this reads the CUDA driver API from `libcuda.so.1` at run
//! time (libloading): a machine without the driver simply has no devices here,
//! and nothing links against the driver.
use serde::Serialize;

/// One GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CudaDeviceInfo {
    /// The ordinal `cuda:N` names.
    pub index: usize,
    pub name: String,
    pub total_memory_bytes: u64,
    /// `major.minor` (`9.0` for Hopper).
    pub compute_capability: String,
    pub multiprocessors: i32,
}

/// The driver's CUDA version and its devices, or why they cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CudaDriverInfo {
    /// `13.0` for a driver that supports CUDA 13.0.
    pub cuda_driver_version: String,
    pub devices: Vec<CudaDeviceInfo>,
}

type CuResult = i32;
const ATTR_MULTIPROCESSOR_COUNT: i32 = 16;
const ATTR_COMPUTE_CAPABILITY_MAJOR: i32 = 75;
const ATTR_COMPUTE_CAPABILITY_MINOR: i32 = 76;

/// Reads the driver once per call (a few microseconds after the first, which
/// initialises the driver). `Err` names why there is nothing to read: no
/// `libcuda.so.1` (no NVIDIA driver), a missing symbol, or a failing call with
/// its CUDA error code.
pub fn cuda_driver_info() -> Result<CudaDriverInfo, String> {
    // SAFETY: loading the system's CUDA driver library runs its initialisers,
    // which are those every CUDA program runs; the symbols below are the
    // driver API's stable C entry points with these exact signatures.
    unsafe {
        // Loaded once and never unloaded: the driver keeps threads and state
        // after cuInit that must not outlive its code.
        static LIB: std::sync::OnceLock<Result<libloading::Library, String>> =
            std::sync::OnceLock::new();
        let lib = LIB
            .get_or_init(|| {
                libloading::Library::new("libcuda.so.1")
                    .map_err(|e| format!("no NVIDIA driver ({e})"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let sym = |name: &str| format!("libcuda.so.1 has no {name}");
        let init: libloading::Symbol<unsafe extern "C" fn(u32) -> CuResult> =
            lib.get(b"cuInit\0").map_err(|_| sym("cuInit"))?;
        let version: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> CuResult> = lib
            .get(b"cuDriverGetVersion\0")
            .map_err(|_| sym("cuDriverGetVersion"))?;
        let count: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> CuResult> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|_| sym("cuDeviceGetCount"))?;
        let get: libloading::Symbol<unsafe extern "C" fn(*mut i32, i32) -> CuResult> =
            lib.get(b"cuDeviceGet\0").map_err(|_| sym("cuDeviceGet"))?;
        let name: libloading::Symbol<unsafe extern "C" fn(*mut u8, i32, i32) -> CuResult> = lib
            .get(b"cuDeviceGetName\0")
            .map_err(|_| sym("cuDeviceGetName"))?;
        let memory: libloading::Symbol<unsafe extern "C" fn(*mut usize, i32) -> CuResult> = lib
            .get(b"cuDeviceTotalMem_v2\0")
            .map_err(|_| sym("cuDeviceTotalMem_v2"))?;
        let attribute: libloading::Symbol<unsafe extern "C" fn(*mut i32, i32, i32) -> CuResult> =
            lib.get(b"cuDeviceGetAttribute\0")
                .map_err(|_| sym("cuDeviceGetAttribute"))?;
        let check = |what: &str, r: CuResult| match r {
            0 => Ok(()),
            code => Err(format!("{what} failed with CUDA driver error {code}")),
        };
        check("cuInit", init(0))?;
        let mut v = 0;
        check("cuDriverGetVersion", version(&mut v))?;
        let mut n = 0;
        check("cuDeviceGetCount", count(&mut n))?;
        let mut devices = Vec::with_capacity(n.max(0) as usize);
        for index in 0..n.max(0) {
            let mut dev = 0;
            check("cuDeviceGet", get(&mut dev, index))?;
            let mut buf = [0u8; 256];
            check(
                "cuDeviceGetName",
                name(buf.as_mut_ptr(), buf.len() as i32, dev),
            )?;
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let mut bytes = 0usize;
            check("cuDeviceTotalMem", memory(&mut bytes, dev))?;
            let attr = |a: i32| {
                let mut x = 0;
                check("cuDeviceGetAttribute", attribute(&mut x, a, dev)).map(|()| x)
            };
            devices.push(CudaDeviceInfo {
                index: index as usize,
                name: String::from_utf8_lossy(&buf[..end]).into_owned(),
                total_memory_bytes: bytes as u64,
                compute_capability: format!(
                    "{}.{}",
                    attr(ATTR_COMPUTE_CAPABILITY_MAJOR)?,
                    attr(ATTR_COMPUTE_CAPABILITY_MINOR)?
                ),
                multiprocessors: attr(ATTR_MULTIPROCESSOR_COUNT)?,
            });
        }
        Ok(CudaDriverInfo {
            cuda_driver_version: format!("{}.{}", v / 1000, (v % 1000) / 10),
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_query_agrees_with_libtorch_or_says_why_not() {
        match cuda_driver_info() {
            Ok(info) => {
                assert_eq!(info.devices.len(), crate::device::cuda_device_count());
                for d in &info.devices {
                    assert!(!d.name.is_empty() && d.total_memory_bytes > 0, "{d:?}");
                }
            }
            // No driver (this project's CI machines): libtorch sees no GPU either.
            Err(why) => {
                assert!(
                    why.contains("libcuda") || why.contains("CUDA driver"),
                    "{why}"
                );
                assert_eq!(crate::device::cuda_device_count(), 0);
            }
        }
    }
}
