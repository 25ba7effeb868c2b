//! The augmentation chain of one view ([`ViewAugment`]) and the multi-crop
//! views of a batch ([`MultiCropConfig`]) with the SimCLR, SwAV and DINO
//! presets.
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::geometry::check_crop_ranges;
use super::{
    check_images, check_probability, check_range, random_flips, random_grayscale,
    random_resized_crop, random_rotation, ColorJitter, GaussianBlur, Padding, Solarize,
    StainJitter, CELL_SIZE, CPU_SMALL_SIZE, GLOBAL_REFERENCE_SIDE, LOCAL_REFERENCE_SIDE,
};
use crate::error::{Error, Result};

/// Augmentations of one view after its crop, applied in this order: flips,
/// rotation, stain jitter, colour jitter, greyscale, blur, solarisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewAugment {
    pub p_horizontal_flip: f64,
    pub p_vertical_flip: f64,
    /// Angle range in degrees, drawn uniformly; `None` for no rotation.
    pub rotation: Option<(f64, f64)>,
    pub rotation_padding: Padding,
    /// Off unless set (configurations written before it parse unchanged).
    #[serde(default)]
    pub stain_jitter: StainJitter,
    pub color_jitter: ColorJitter,
    pub p_grayscale: f64,
    pub blur: GaussianBlur,
    pub solarize: Solarize,
}

impl ViewAugment {
    /// SimCLR's view (Chen et al. 2020, appendix A) with the cell-specific
    /// rotation and vertical flip of DESIGN.md §2: jitter strength 1, greyscale
    /// 0.2, blur p 0.5 with σ 0.1–2.0.
    pub fn simclr() -> Self {
        ViewAugment {
            p_horizontal_flip: 0.5,
            p_vertical_flip: 0.5,
            // Cells have no up or down: any angle.
            rotation: Some((-180.0, 180.0)),
            rotation_padding: Padding::Border,
            stain_jitter: StainJitter::none(),
            color_jitter: ColorJitter::simclr(1.0),
            p_grayscale: 0.2,
            blur: GaussianBlur {
                p: 0.5,
                sigma: (0.1, 2.0),
            },
            solarize: Solarize {
                p: 0.0,
                threshold: 0.5,
            },
        }
    }

    /// DINO's view: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, greyscale 0.2, the given
    /// blur and solarisation probabilities (global 1: 1.0/0; global 2: 0.1/0.2;
    /// local: 0.5/0), plus the cells' rotation and vertical flip.
    pub fn dino(p_blur: f64, p_solarize: f64) -> Self {
        ViewAugment {
            color_jitter: ColorJitter::dino(),
            blur: GaussianBlur {
                p: p_blur,
                sigma: (0.1, 2.0),
            },
            solarize: Solarize {
                p: p_solarize,
                threshold: 0.5,
            },
            ..Self::simclr()
        }
    }

    /// Only the crop: no flips, rotation or photometric change.
    pub fn identity() -> Self {
        ViewAugment {
            p_horizontal_flip: 0.0,
            p_vertical_flip: 0.0,
            rotation: None,
            rotation_padding: Padding::Border,
            stain_jitter: StainJitter::none(),
            color_jitter: ColorJitter::none(),
            p_grayscale: 0.0,
            blur: GaussianBlur {
                p: 0.0,
                sigma: (0.1, 2.0),
            },
            solarize: Solarize {
                p: 0.0,
                threshold: 0.5,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_probability("p_horizontal_flip", self.p_horizontal_flip)?;
        check_probability("p_vertical_flip", self.p_vertical_flip)?;
        if let Some(r) = self.rotation {
            check_range("rotation", r, f64::NEG_INFINITY)?;
        }
        self.stain_jitter.validate()?;
        self.color_jitter.validate()?;
        check_probability("p_grayscale", self.p_grayscale)?;
        self.blur.validate()?;
        self.solarize.validate()
    }

    /// Applies the chain to already cropped images; `reference_side` is the
    /// side the references give the blur's σ for (224 for global views, 96 for
    /// local ones: [`GLOBAL_REFERENCE_SIDE`], [`LOCAL_REFERENCE_SIDE`]).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        images: &Tensor,
        rng: &mut R,
        reference_side: f64,
    ) -> Result<Tensor> {
        self.validate()?;
        let mut x = random_flips(images, self.p_horizontal_flip, self.p_vertical_flip, rng)?;
        if let Some(degrees) = self.rotation {
            x = random_rotation(&x, degrees, self.rotation_padding, rng)?;
        }
        x = self.stain_jitter.apply(&x, rng)?;
        x = self.color_jitter.apply(&x, rng)?;
        x = random_grayscale(&x, self.p_grayscale, rng)?;
        x = self.blur.apply(&x, rng, reference_side)?;
        self.solarize.apply(&x, rng)
    }
}

/// One kind of crop of a multi-crop set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CropSpec {
    /// Number of views of this kind.
    pub count: usize,
    /// Output side in pixels.
    pub size: i64,
    /// Range of the crop's area as a fraction of the image.
    pub scale: (f64, f64),
    /// Augmentation of view `i` is `augment[i % len]` (DINO's two global views differ).
    pub augment: Vec<ViewAugment>,
}

/// Multi-crop views (Caron et al. 2020): `global.count` large crops followed by
/// `local.count` small ones, all from the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiCropConfig {
    pub global: CropSpec,
    pub local: CropSpec,
    /// Aspect-ratio range of the crops (3/4 – 4/3 in all three methods).
    pub ratio: (f64, f64),
}

/// Local crop side for a global side, keeping the references' 96 : 224 ratio
/// (rounded to an even number of pixels).
pub fn local_size_for(global_size: i64) -> i64 {
    2 * ((LOCAL_REFERENCE_SIDE / GLOBAL_REFERENCE_SIDE * global_size as f64) / 2.0).round() as i64
}

impl MultiCropConfig {
    /// SimCLR: two views of scale 0.08–1 at `size` px.
    pub fn simclr(size: i64) -> Self {
        MultiCropConfig {
            global: CropSpec {
                count: 2,
                size,
                scale: (0.08, 1.0),
                augment: vec![ViewAugment::simclr()],
            },
            local: CropSpec {
                count: 0,
                size: local_size_for(size),
                scale: (0.05, 0.14),
                augment: vec![ViewAugment::simclr()],
            },
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// SwAV: 2 global views (scale 0.14–1) at `size` px and 6 local views (scale
    /// 0.05–0.14) at 96/224 of it, all with SimCLR's augmentations.
    pub fn swav(size: i64) -> Self {
        let mut c = Self::simclr(size);
        c.global.scale = (0.14, 1.0);
        c.local.count = 6;
        c
    }

    /// DINO: 2 global views (scale 0.4–1; blur p 1.0, then blur 0.1 + solarise
    /// 0.2) and 8 local views (scale 0.05–0.4, blur 0.5) at 96/224 of `size`.
    pub fn dino(size: i64) -> Self {
        MultiCropConfig {
            global: CropSpec {
                count: 2,
                size,
                scale: (0.4, 1.0),
                augment: vec![ViewAugment::dino(1.0, 0.0), ViewAugment::dino(0.1, 0.2)],
            },
            local: CropSpec {
                count: 8,
                size: local_size_for(size),
                scale: (0.05, 0.4),
                augment: vec![ViewAugment::dino(0.5, 0.0)],
            },
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// Presets by name: `simclr`, `swav`, `dino` at 144 px cells (local crops
    /// 62 px), or with the suffix `-cpu-small` at 64 px (local crops 28 px).
    pub fn preset(name: &str) -> Result<Self> {
        let (method, size) = match name.strip_suffix("-cpu-small") {
            Some(m) => (m, CPU_SMALL_SIZE),
            None => (name, CELL_SIZE),
        };
        match method {
            "simclr" => Ok(Self::simclr(size)),
            "swav" => Ok(Self::swav(size)),
            "dino" => Ok(Self::dino(size)),
            _ => Err(Error::invalid(
                "preset",
                format!("`{name}` is not a multi-crop preset (simclr, swav, dino, with optional -cpu-small)"),
            )),
        }
    }

    /// Sets the stain jitter of every view.
    pub fn set_stain_jitter(&mut self, jitter: StainJitter) {
        for a in self
            .global
            .augment
            .iter_mut()
            .chain(self.local.augment.iter_mut())
        {
            a.stain_jitter = jitter;
        }
    }

    /// Number of views [`MultiCropConfig::views`] returns.
    pub fn num_views(&self) -> usize {
        self.global.count + self.local.count
    }

    pub fn validate(&self) -> Result<()> {
        check_range("ratio", self.ratio, f64::MIN_POSITIVE)?;
        if self.global.count == 0 {
            return Err(Error::invalid("global.count", "at least one global view"));
        }
        if self.num_views() < 2 {
            return Err(Error::invalid(
                "global.count",
                "self-supervised pre-training compares at least two views",
            ));
        }
        for (arg, spec) in [("global", &self.global), ("local", &self.local)] {
            if spec.count == 0 {
                continue;
            }
            if spec.size < 1 {
                return Err(Error::invalid(
                    format!("{arg}.size"),
                    format!("{} px is not a size", spec.size),
                ));
            }
            check_crop_ranges(spec.scale, self.ratio)?;
            if spec.augment.is_empty() {
                return Err(Error::invalid(
                    format!("{arg}.augment"),
                    "at least one augmentation chain",
                ));
            }
            for a in &spec.augment {
                a.validate()?;
            }
        }
        Ok(())
    }

    /// The views of a batch: `global.count` tensors `[N, 3, G, G]`, then
    /// `local.count` tensors `[N, 3, L, L]`. Each view draws its crop boxes, then
    /// its augmentation parameters, in view order.
    pub fn views<R: Rng + ?Sized>(&self, images: &Tensor, rng: &mut R) -> Result<Vec<Tensor>> {
        check_images(images, "images", true)?;
        self.validate()?;
        let mut out = Vec::with_capacity(self.num_views());
        for (spec, reference) in [
            (&self.global, GLOBAL_REFERENCE_SIDE),
            (&self.local, LOCAL_REFERENCE_SIDE),
        ] {
            for i in 0..spec.count {
                let x = random_resized_crop(images, spec.size, spec.scale, self.ratio, rng)?;
                out.push(spec.augment[i % spec.augment.len()].apply(&x, rng, reference)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_scale_crop_sizes() {
        assert_eq!(local_size_for(224), 96);
        assert_eq!(local_size_for(144), 62);
        assert_eq!(local_size_for(64), 28);
        let d = MultiCropConfig::preset("dino").unwrap();
        assert_eq!((d.global.count, d.local.count), (2, 8));
        assert_eq!((d.global.size, d.local.size), (144, 62));
        let s = MultiCropConfig::preset("swav-cpu-small").unwrap();
        assert_eq!((s.global.count, s.local.count, s.global.size), (2, 6, 64));
        assert_eq!(MultiCropConfig::preset("simclr").unwrap().num_views(), 2);
        assert!(MultiCropConfig::preset("byol").is_err());
        let json = serde_json::to_string(&d).unwrap();
        let back: MultiCropConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }
}
