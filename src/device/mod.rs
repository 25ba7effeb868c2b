//! Where models run: the device a user names (`auto`, `cpu`, `cuda`, `cuda:N`),
//! checked against the GPUs libtorch sees, and the encoder's arithmetic. In
//! configuration files a device is the same string the CLI and the C ABI take.
//! What the NVIDIA driver says of each GPU (name, memory, compute capability)
//! comes from [`driver`].
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::error::{Error, Result};

mod driver;
pub use driver::{cuda_driver_info, CudaDeviceInfo, CudaDriverInfo};

/// Where to run: `auto` (first GPU if any, else CPU), `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Device {
            device: s.to_owned(),
            reason: reason.to_owned(),
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| bad("expected `cuda:N` with N a GPU index")),
                None => Err(bad("unknown device; use `auto`, `cpu`, `cuda` or `cuda:N`")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl DeviceSpec {
    /// The libtorch device, checking that a requested GPU exists.
    pub fn resolve(self) -> Result<Device> {
        let count = cuda_device_count();
        match self {
            DeviceSpec::Auto => Ok(if count > 0 {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) if i < count => Ok(Device::Cuda(i)),
            DeviceSpec::Cuda(i) => Err(Error::Device {
                device: format!("cuda:{i}"),
                reason: if count == 0 {
                    "no CUDA device is available on this machine (libtorch sees 0 GPUs)".into()
                } else {
                    format!("only {count} CUDA device(s) are available")
                },
            }),
        }
    }
}

/// A libtorch device spelled as configurations spell it: `cpu`, `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => DeviceSpec::Cuda(i).to_string(),
        Device::Cpu => DeviceSpec::Cpu.to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Number of CUDA devices libtorch can use (0 on a machine without a GPU).
pub fn cuda_device_count() -> usize {
    tch::Cuda::device_count().max(0) as usize
}

/// Environment variable that, set to `0`, makes [`cpu_bf16`] report no native
/// bf16 (to test the refusal, or to rule bf16 out on a machine).
pub const CPU_BF16_ENV: &str = "AMLMIL_CPU_BF16";

/// The instruction set that gives this CPU native bf16 arithmetic, as oneDNN
/// uses it for the fused encoder: `"amx_bf16"` or `"avx512_bf16"` (from
/// `/proc/cpuinfo`), or why there is none. Without them oneDNN would emulate
/// bf16 slower than fp32, so sessions refuse bf16 on such CPUs.
pub fn cpu_bf16() -> std::result::Result<&'static str, String> {
    if std::env::var(CPU_BF16_ENV).is_ok_and(|v| v.trim() == "0") {
        return Err(format!("native bf16 is switched off by {CPU_BF16_ENV}=0"));
    }
    static FLAGS: std::sync::OnceLock<Option<Vec<String>>> = std::sync::OnceLock::new();
    let flags = FLAGS.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("flags"))?;
        let (_, list) = line.split_once(':')?;
        Some(list.split_whitespace().map(str::to_owned).collect())
    });
    let Some(flags) = flags else {
        return Err("the CPU's instruction sets cannot be read (/proc/cpuinfo)".into());
    };
    let has = |f: &str| flags.iter().any(|x| x == f);
    if has("amx_bf16") {
        Ok("amx_bf16")
    } else if has("avx512_bf16") {
        Ok("avx512_bf16")
    } else {
        Err("this CPU has neither avx512_bf16 nor amx_bf16 (bf16 would be emulated, slower than fp32)".into())
    }
}

/// Arithmetic of the encoder: fp32 everywhere; fp16 and bf16 on CUDA; bf16 also
/// on CPUs with native bf16 ([`cpu_bf16`]), through the fused path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "fp16" | "float16" | "f16" | "half" => Ok(Precision::Fp16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::invalid(
                "precision",
                format!("`{other}` is not fp32, fp16 or bf16"),
            )),
        }
    }
}

impl Precision {
    /// `"fp32"`, `"fp16"` or `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// The libtorch element type of this precision.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_through_serde() {
        for (text, spec) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("cuda:1", DeviceSpec::Cuda(1)),
        ] {
            let parsed: DeviceSpec = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(parsed, spec);
            assert_eq!(serde_json::to_value(spec).unwrap(), serde_json::json!(text));
        }
        assert_eq!("GPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        let err = serde_json::from_value::<DeviceSpec>(serde_json::json!("tpu")).unwrap_err();
        assert!(err.to_string().contains("tpu"), "{err}");
    }
}
