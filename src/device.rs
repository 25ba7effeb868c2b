//! Where models run: the device a user names (`auto`, `cpu`, `cuda`, `cuda:N`),
//! checked against the GPUs libtorch sees, and the encoder's arithmetic. In
//! configuration files a device is the same string the CLI and the C ABI take.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::error::{Error, Result};

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

/// Arithmetic of the encoder. Reduced precision needs a GPU.
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
