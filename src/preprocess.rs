//! Cell images → normalised encoder input: resize to the encoder's input size,
//! scale to [0, 1], subtract the manifest's mean and divide by its std, NCHW.
use tch::{Device, Kind, Tensor};

use crate::cell_image::CellImage;
use crate::checkpoint::Normalization;
use crate::error::Result;

/// Turns `cells` into a `[N, 3, size, size]` float tensor on `device`.
pub fn to_input_batch(
    cells: &[&CellImage],
    size: u32,
    norm: &Normalization,
    device: Device,
    kind: Kind,
) -> Result<Tensor> {
    let plane = size as usize * size as usize;
    // Each channel's 256 possible values, normalised once (the same formula per
    // pixel would be two divisions each).
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - norm.mean[c]) / norm.std[c])
    });
    let mut data = vec![0f32; cells.len() * 3 * plane];
    for (cell, out) in cells.iter().zip(data.chunks_exact_mut(3 * plane)) {
        let resized;
        let rgb = if cell.width() == size && cell.height() == size {
            cell.rgb()
        } else {
            resized = cell.resized(size);
            resized.rgb()
        };
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            r[i] = lut[0][px[0] as usize];
            g[i] = lut[1][px[1] as usize];
            b[i] = lut[2][px[2] as usize];
        }
    }
    let s = size as i64;
    let host = Tensor::f_from_slice(&data)?.f_view([cells.len() as i64, 3, s, s])?;
    if device.is_cuda() {
        // Pinned host memory and an asynchronous copy: the transfer overlaps the
        // previous batch's kernels (libtorch's pinned allocator keeps the buffer
        // alive until the copy has run).
        return Ok(host
            .f_pin_memory(device)?
            .f_to_device_(device, kind, true, false)?);
    }
    Ok(host.f_to_kind(kind)?)
}
