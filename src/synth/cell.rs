//! Cell types: the white cells the generator draws, their names in
//! `cells.csv`, and (in `CellType::params`) the parameters of each type's
//! morphology, one table entry per type.
//!
//! A leukocyte is built from its type's entry by `synth::recipe` with the
//! shared builders of `synth::morphology` (cytoplasm outline and colour,
//! nucleus shape and chromatin, granules, Auer rods, vacuoles, nucleoli) with
//! random size, nucleus/cytoplasm ratio and texture, and painted into a crop,
//! with a random rotation and shift, by `synth::render` ([`render_cell`]).
//!
//! Abnormal types carry the morphology the literature describes for each AML
//! subtype (see [`CellType`]); normal types are shared by all patients.

use std::f32::consts::PI;
use std::fmt;
use std::str::FromStr;

use super::morphology::{
    Butterfly, CellParams, Channel, Chromatin, Cup, Extras, Fold, Granules, Hof, Lobed, Lobes,
    Nucleoli, Place, Rods, Round, Shape, SideLobe, Span, Step, Unit,
};
use super::recipe::Dens;
use crate::error::{Error, Result};

// The renderer's entry points, also at their paths from before it had a module.
pub use super::render::{render_cell, DEFAULT_IMAGE_SIZE, MIN_IMAGE_SIZE};

/// White-cell types the generator draws. Names (`name()`) are the snake_case
/// strings written to `cells.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CellType {
    /// Mature neutrophil, 2–5 nuclear lobes joined by thin filaments.
    SegmentedNeutrophil,
    /// Neutrophil with a curved, unsegmented band nucleus.
    BandNeutrophil,
    /// Small round cell, dense nucleus, rim of sky-blue cytoplasm.
    Lymphocyte,
    /// Large cell, folded kidney-shaped lacy nucleus, grey-blue cytoplasm, vacuoles.
    Monocyte,
    /// Bilobed nucleus, cytoplasm packed with orange granules.
    Eosinophil,
    /// Dark purple-black granules covering the nucleus.
    Basophil,
    /// Round eccentric nucleus, granular pink-blue cytoplasm.
    Myelocyte,
    /// Kidney-shaped (indented) nucleus, granular pink cytoplasm.
    Metamyelocyte,
    /// PML::RARA: hypergranular abnormal promyelocyte with a bilobed
    /// ("butterfly") nucleus largely hidden by dense azurophilic granules.
    AbnormalPromyelocyte,
    /// PML::RARA: promyelocyte with bundles of Auer rods ("faggot cell").
    FaggotCell,
    /// NPM1: blast with a cup-shaped nuclear invagination, fine chromatin,
    /// nucleoli and scant granules.
    Npm1Blast,
    /// CBFB::MYH11: myelomonocytic blast with a folded nucleus, grey-blue
    /// cytoplasm and a few azurophilic granules.
    MyelomonocyticBlast,
    /// CBFB::MYH11: abnormal eosinophil with large dark (basophilic-looking) granules.
    AbnormalEosinophil,
    /// RUNX1::RUNX1T1: large blast with deeply basophilic cytoplasm, a pale
    /// perinuclear zone and a single long thin Auer rod.
    Runx1Blast,
}

impl CellType {
    /// Every type, normal first, in the order of the montage rows.
    pub const ALL: [CellType; 14] = [
        CellType::SegmentedNeutrophil,
        CellType::BandNeutrophil,
        CellType::Lymphocyte,
        CellType::Monocyte,
        CellType::Eosinophil,
        CellType::Basophil,
        CellType::Myelocyte,
        CellType::Metamyelocyte,
        CellType::AbnormalPromyelocyte,
        CellType::FaggotCell,
        CellType::Npm1Blast,
        CellType::MyelomonocyticBlast,
        CellType::AbnormalEosinophil,
        CellType::Runx1Blast,
    ];

    /// The normal types, shared by every patient's differential.
    pub const NORMAL: [CellType; 8] = [
        CellType::SegmentedNeutrophil,
        CellType::BandNeutrophil,
        CellType::Lymphocyte,
        CellType::Monocyte,
        CellType::Eosinophil,
        CellType::Basophil,
        CellType::Myelocyte,
        CellType::Metamyelocyte,
    ];

    /// The snake_case name used in `cells.csv`.
    pub fn name(self) -> &'static str {
        match self {
            CellType::SegmentedNeutrophil => "segmented_neutrophil",
            CellType::BandNeutrophil => "band_neutrophil",
            CellType::Lymphocyte => "lymphocyte",
            CellType::Monocyte => "monocyte",
            CellType::Eosinophil => "eosinophil",
            CellType::Basophil => "basophil",
            CellType::Myelocyte => "myelocyte",
            CellType::Metamyelocyte => "metamyelocyte",
            CellType::AbnormalPromyelocyte => "abnormal_promyelocyte",
            CellType::FaggotCell => "faggot_cell",
            CellType::Npm1Blast => "npm1_blast",
            CellType::MyelomonocyticBlast => "myelomonocytic_blast",
            CellType::AbnormalEosinophil => "abnormal_eosinophil",
            CellType::Runx1Blast => "runx1_blast",
        }
    }

    /// Whether this type only occurs in leukemic patients.
    pub fn is_abnormal(self) -> bool {
        !CellType::NORMAL.contains(&self)
    }

    /// The bag label (see [`crate::classes::BAG_LABELS`]) whose morphology an
    /// abnormal type carries; `None` for normal types.
    pub fn subtype(self) -> Option<&'static str> {
        match self {
            CellType::AbnormalPromyelocyte | CellType::FaggotCell => Some("PML_RARA"),
            CellType::Npm1Blast => Some("NPM1"),
            CellType::MyelomonocyticBlast | CellType::AbnormalEosinophil => Some("CBFB_MYH11"),
            CellType::Runx1Blast => Some("RUNX1_RUNX1T1"),
            _ => None,
        }
    }
}

impl fmt::Display for CellType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CellType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        CellType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = CellType::ALL.iter().map(|t| t.name()).collect();
                Error::invalid(
                    "cell_type",
                    format!("unknown cell type `{s}` (known: {})", known.join(", ")),
                )
            })
    }
}

/// Abnormal types of a subtype with their relative frequencies; empty for
/// `control` and unknown labels.
pub fn abnormal_types(bag_label: &str) -> &'static [(CellType, f32)] {
    match bag_label {
        "PML_RARA" => &[
            (CellType::AbnormalPromyelocyte, 0.7),
            (CellType::FaggotCell, 0.3),
        ],
        "NPM1" => &[(CellType::Npm1Blast, 1.0)],
        "CBFB_MYH11" => &[
            (CellType::MyelomonocyticBlast, 0.7),
            (CellType::AbnormalEosinophil, 0.3),
        ],
        "RUNX1_RUNX1T1" => &[(CellType::Runx1Blast, 1.0)],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------
// The morphology table: one entry per type, read by `super::recipe`. Lengths
// are fractions of the cell radius, granule sizes crop units (see the field
// documentation in `super::morphology`).
// ---------------------------------------------------------------------------

impl CellType {
    /// The parameters of this type's morphology.
    pub(super) fn params(self) -> &'static CellParams {
        match self {
            CellType::SegmentedNeutrophil => &SEGMENTED_NEUTROPHIL,
            CellType::BandNeutrophil => &BAND_NEUTROPHIL,
            CellType::Lymphocyte => &LYMPHOCYTE,
            CellType::Monocyte => &MONOCYTE,
            CellType::Eosinophil => &EOSINOPHIL,
            CellType::Basophil => &BASOPHIL,
            CellType::Myelocyte => &MYELOCYTE,
            CellType::Metamyelocyte => &METAMYELOCYTE,
            CellType::AbnormalPromyelocyte => &ABNORMAL_PROMYELOCYTE,
            CellType::FaggotCell => &FAGGOT_CELL,
            CellType::Npm1Blast => &NPM1_BLAST,
            CellType::MyelomonocyticBlast => &MYELOMONOCYTIC_BLAST,
            CellType::AbnormalEosinophil => &ABNORMAL_EOSINOPHIL,
            CellType::Runx1Blast => &RUNX1_BLAST,
        }
    }
}

/// Fine neutrophilic granularity of the cytoplasm.
const NEUTROPHILIC_GRAIN: Dens = Dens::new(0.10, 0.12, 0.0, 0.0);
/// Eosinophil granules.
const ORANGE: Dens = Dens::new(0.25, 0.0, 0.0, 0.55);
/// Azurophilic granules of the abnormal promyelocytes.
const AZUROPHILIC: Dens = Dens::new(0.55, 0.75, 0.0, 0.0);

const SEGMENTED_NEUTROPHIL: CellParams = CellParams {
    radius: (0.42, 0.52),
    outline: (0.06, 0.05),
    cyto: Dens::new(0.30, 0.05, 0.02, 0.0),
    cyto_jitter: Some(Channel::Eosin),
    // 2–5 lobes joined by filaments.
    nucleus: Shape::Lobed(Lobed {
        count: Lobes::Pick(&[2, 3, 3, 3, 4, 4, 4, 5]),
        step: Step::Fixed(1.15),
        arc: 0.45,
        lobe: (0.19, 0.26),
        filament: 0.03,
        smooth: 0.02,
    }),
    chromatin: Chromatin {
        dens: (0.2, 1.55),
        freq: 22.0,
        contrast: 0.35,
    },
    extras: Extras {
        grain: NEUTROPHILIC_GRAIN,
        ..Extras::NONE
    },
};

/// A segmented neutrophil but for the nucleus.
const BAND_NEUTROPHIL: CellParams = CellParams {
    // A band: many small overlapping blobs along a 180–260° arc.
    nucleus: Shape::Lobed(Lobed {
        count: Lobes::Fixed(9),
        step: Step::Arc(PI, 1.45 * PI),
        arc: 0.45,
        lobe: (0.15, 0.2),
        filament: 0.0,
        smooth: 0.06,
    }),
    ..SEGMENTED_NEUTROPHIL
};

const LYMPHOCYTE: CellParams = CellParams {
    radius: (0.28, 0.40),
    outline: (0.08, 0.04),
    cyto: Dens::new(0.04, 0.02, 0.45, 0.0),
    cyto_jitter: Some(Channel::Blue),
    // Dense, nearly filling the cell.
    nucleus: Shape::Round(Round::plain(
        Place::Slack(0.0, 0.9),
        Span::Range(0.76, 0.88),
        (0.08, 0.06),
    )),
    chromatin: Chromatin {
        dens: (0.15, 1.85),
        freq: 16.0,
        contrast: 0.3,
    },
    // A few azurophilic granules in the larger ones.
    extras: Extras {
        granules: &[
            Granules::range(0, 4, (0.012, 0.018), Dens::new(0.4, 0.7, 0.0, 0.0)).above_radius(0.35),
        ],
        ..Extras::NONE
    },
};

const MONOCYTE: CellParams = CellParams {
    radius: (0.55, 0.68),
    outline: (0.1, 0.1),
    cyto: Dens::new(0.12, 0.07, 0.24, 0.0),
    cyto_jitter: Some(Channel::Blue),
    nucleus: Shape::Round(Round {
        lobe: Some(SideLobe {
            turn: Some(1.8),
            unit: Unit::NucleusRadius,
            offset: 0.3,
            size: 0.7,
            outline: (0.2, 0.08),
        }),
        // Kidney / horseshoe indentation facing the cell centre.
        fold: Some(Fold {
            offset: 1.05,
            size: 0.5,
            outline: (0.2, 0.05),
        }),
        smooth: 0.1,
        ..Round::plain(
            Place::Eccentric(Span::Fixed(0.12)),
            Span::Range(0.46, 0.56),
            (0.2, 0.08),
        )
    }),
    chromatin: Chromatin {
        dens: (0.18, 1.15),
        freq: 30.0,
        contrast: 0.45,
    },
    // Fine dust, and vacuoles.
    extras: Extras {
        grain: Dens::new(0.03, 0.10, 0.0, 0.0),
        granules: &[Granules::range(
            0,
            6,
            (0.02, 0.04),
            Dens::new(-0.08, -0.05, -0.16, 0.0),
        )],
        ..Extras::NONE
    },
};

const EOSINOPHIL: CellParams = CellParams {
    radius: (0.45, 0.54),
    outline: (0.06, 0.05),
    cyto: Dens::new(0.18, 0.03, 0.06, 0.0),
    cyto_jitter: None,
    // Mostly bilobed.
    nucleus: Shape::Lobed(Lobed {
        count: Lobes::Either(0.8, 2, 3),
        step: Step::Fixed(1.6),
        arc: 0.42,
        lobe: (0.22, 0.28),
        filament: 0.04,
        smooth: 0.03,
    }),
    chromatin: Chromatin {
        dens: (0.2, 1.45),
        freq: 22.0,
        contrast: 0.3,
    },
    extras: Extras {
        granules: &[Granules::fill(0.75, (0.02, 0.028), ORANGE)],
        ..Extras::NONE
    },
};

const BASOPHIL: CellParams = CellParams {
    radius: (0.40, 0.48),
    outline: (0.06, 0.06),
    cyto: Dens::new(0.12, 0.12, 0.05, 0.0),
    cyto_jitter: None,
    // A central nucleus with a lobe fused to it in a random direction.
    nucleus: Shape::Round(Round {
        lobe: Some(SideLobe {
            turn: None,
            unit: Unit::CellRadius,
            offset: 0.25,
            size: 0.3,
            outline: (0.2, 0.1),
        }),
        smooth: 0.08,
        ..Round::plain(Place::Centre, Span::Fixed(0.45), (0.2, 0.15))
    }),
    chromatin: Chromatin {
        dens: (0.15, 1.0),
        freq: 25.0,
        contrast: 0.3,
    },
    // Dark granules, over the nucleus too.
    extras: Extras {
        granules: &[
            Granules::range(40, 80, (0.022, 0.04), Dens::new(0.1, 1.5, 0.5, 0.0)).over_nucleus(),
        ],
        ..Extras::NONE
    },
};

const MYELOCYTE: CellParams = CellParams {
    radius: (0.46, 0.56),
    outline: (0.08, 0.05),
    cyto: Dens::new(0.28, 0.06, 0.12, 0.0),
    cyto_jitter: Some(Channel::Eosin),
    nucleus: Shape::Round(MYELOCYTE_NUCLEUS),
    chromatin: Chromatin {
        dens: (0.2, 1.25),
        freq: 25.0,
        contrast: 0.28,
    },
    extras: Extras {
        grain: NEUTROPHILIC_GRAIN,
        granules: &[Granules::range(
            3,
            12,
            (0.012, 0.018),
            Dens::new(0.45, 0.6, 0.0, 0.0),
        )],
        ..Extras::NONE
    },
};

/// Round and eccentric.
const MYELOCYTE_NUCLEUS: Round = Round::plain(
    Place::Eccentric(Span::Range(0.15, 0.3)),
    Span::Range(0.48, 0.56),
    (0.15, 0.05),
);

/// A myelocyte with an indented nucleus, denser chromatin and less blue.
const METAMYELOCYTE: CellParams = CellParams {
    radius: (0.44, 0.52),
    cyto: Dens::new(0.28, 0.06, 0.06, 0.0),
    nucleus: Shape::Round(Round {
        fold: Some(Fold {
            offset: 1.0,
            size: 0.45,
            outline: (0.15, 0.03),
        }),
        ..MYELOCYTE_NUCLEUS
    }),
    chromatin: Chromatin {
        dens: (0.2, 1.4),
        ..MYELOCYTE.chromatin
    },
    ..MYELOCYTE
};

const ABNORMAL_PROMYELOCYTE: CellParams = CellParams {
    radius: (0.52, 0.64),
    outline: (0.1, 0.08),
    cyto: Dens::new(0.30, 0.08, 0.10, 0.0),
    cyto_jitter: Some(Channel::Eosin),
    // Bilobed "butterfly" nucleus: two lobes fused with a cleft.
    nucleus: Shape::Butterfly(Butterfly {
        size: (0.30, 0.36),
        separation: 0.55,
        outline: (0.15, 0.06),
        smooth: 0.15,
        cleft: (1.05, 0.35),
    }),
    chromatin: Chromatin {
        dens: (0.22, 1.3),
        freq: 32.0,
        contrast: 0.2,
    },
    // Hypergranular: dense granules over the nucleus too; sometimes a rod.
    extras: Extras {
        granules: &[Granules::range(250, 450, (0.012, 0.02), AZUROPHILIC).over_nucleus()],
        rods: Rods::Maybe {
            p: 0.3,
            margin: 0.1,
            half_len: (0.08, 0.14),
            radius: 0.011,
        },
        ..Extras::NONE
    },
};

/// An abnormal promyelocyte with fewer granules and bundles of Auer rods.
const FAGGOT_CELL: CellParams = CellParams {
    extras: Extras {
        granules: &[Granules::range(40, 120, (0.012, 0.02), AZUROPHILIC)],
        // Roughly parallel, some crossing.
        rods: Rods::Bundles {
            second: 0.3,
            margin: 0.12,
            count: (4, 10),
            tilt: 0.3,
            half_len: (0.07, 0.15),
            across: 0.06,
            along: 0.04,
            radius: (0.009, 0.013),
        },
        ..Extras::NONE
    },
    ..ABNORMAL_PROMYELOCYTE
};

const NPM1_BLAST: CellParams = CellParams {
    radius: (0.44, 0.56),
    outline: (0.08, 0.05),
    cyto: Dens::new(0.08, 0.04, 0.32, 0.0),
    cyto_jitter: Some(Channel::Blue),
    nucleus: Shape::Round(Round {
        // Cup-like invagination: a pale pocket opening at the nuclear rim.
        cup: Some(Cup {
            offset: (0.45, 0.6),
            size: (0.35, 0.45),
            outline: (0.25, 0.03),
            pallor: 0.25,
        }),
        ..Round::plain(Place::Slack(0.0, 0.8), Span::Range(0.72, 0.8), (0.1, 0.05))
    }),
    // Fine chromatin, nucleoli, scant granules.
    chromatin: Chromatin {
        dens: (0.18, 1.1),
        freq: 38.0,
        contrast: 0.15,
    },
    extras: Extras {
        nucleoli: Some(Nucleoli {
            count: (1, 3),
            spread: 0.4,
            size: (0.06, 0.09),
        }),
        granules: &[Granules::range(
            0,
            5,
            (0.01, 0.016),
            Dens::new(0.4, 0.6, 0.0, 0.0),
        )],
        ..Extras::NONE
    },
};

const MYELOMONOCYTIC_BLAST: CellParams = CellParams {
    radius: (0.52, 0.64),
    outline: (0.1, 0.09),
    cyto: Dens::new(0.13, 0.07, 0.28, 0.0),
    cyto_jitter: Some(Channel::Blue),
    nucleus: Shape::Round(Round {
        lobe: Some(SideLobe {
            turn: Some(2.0),
            unit: Unit::NucleusRadius,
            offset: 0.35,
            size: 0.6,
            outline: (0.2, 0.1),
        }),
        // Shallow fold, not the deep kidney of a mature monocyte.
        fold: Some(Fold {
            offset: 1.15,
            size: 0.35,
            outline: (0.2, 0.03),
        }),
        smooth: 0.1,
        ..Round::plain(
            Place::Eccentric(Span::Fixed(0.1)),
            Span::Range(0.55, 0.64),
            (0.15, 0.14),
        )
    }),
    chromatin: Chromatin {
        dens: (0.18, 1.05),
        freq: 36.0,
        contrast: 0.18,
    },
    // Nucleoli; a few azurophilic granules, then vacuoles.
    extras: Extras {
        nucleoli: Some(Nucleoli {
            count: (1, 3),
            spread: 0.45,
            size: (0.05, 0.08),
        }),
        granules: &[
            Granules::range(4, 16, (0.012, 0.018), Dens::new(0.35, 0.65, 0.0, 0.0)),
            Granules::range(0, 3, (0.02, 0.035), Dens::new(-0.08, -0.05, -0.18, 0.0)),
        ],
        ..Extras::NONE
    },
};

/// An eosinophil with one larger, offset nucleus (inv(16) eosinophils are
/// often less segmented, monocytoid), fewer orange granules and large dark
/// ones, some over the nucleus.
const ABNORMAL_EOSINOPHIL: CellParams = CellParams {
    radius: (0.48, 0.58),
    nucleus: Shape::Round(Round::plain(
        Place::Eccentric(Span::Fixed(0.15)),
        Span::Fixed(0.42),
        (0.25, 0.1),
    )),
    extras: Extras {
        granules: &[
            Granules::fill(0.45, (0.018, 0.026), ORANGE),
            Granules::range(15, 40, (0.03, 0.045), Dens::new(0.15, 1.1, 0.35, 0.0)).over_nucleus(),
        ],
        ..Extras::NONE
    },
    ..EOSINOPHIL
};

const RUNX1_BLAST: CellParams = CellParams {
    radius: (0.56, 0.70),
    outline: (0.1, 0.06),
    cyto: Dens::new(0.06, 0.05, 0.62, 0.0),
    cyto_jitter: Some(Channel::Blue),
    nucleus: Shape::Round(Round::plain(
        Place::Eccentric(Span::Range(0.18, 0.28)),
        Span::Range(0.5, 0.58),
        (0.15, 0.05),
    )),
    chromatin: Chromatin {
        dens: (0.18, 1.1),
        freq: 36.0,
        contrast: 0.16,
    },
    extras: Extras {
        nucleoli: Some(Nucleoli {
            count: (1, 4),
            spread: 0.5,
            size: (0.05, 0.08),
        }),
        // Perinuclear pale zone (Golgi hof) on the side facing the cell centre.
        hof: Some(Hof {
            offset: 0.95,
            size: (0.2, 0.26),
            outline: (0.3, 0.05),
            pallor: 0.65,
        }),
        granules: &[Granules::range(
            8,
            30,
            (0.01, 0.016),
            Dens::new(0.45, 0.35, 0.0, 0.0),
        )],
        // One long thin Auer rod in the cytoplasm away from the nucleus.
        rods: Rods::Opposite {
            spread: 0.5,
            dist: 0.55,
            tilt: 0.4,
            half_len: (0.28, 0.4),
            radius: 0.009,
        },
        ..Extras::NONE
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_abnormal_flags() {
        for t in CellType::ALL {
            assert_eq!(t.name().parse::<CellType>().unwrap(), t);
            assert_eq!(t.is_abnormal(), t.subtype().is_some(), "{t}");
        }
        let e = "blast".parse::<CellType>().unwrap_err();
        assert!(e.to_string().contains("cell_type"), "{e}");
        for label in crate::classes::BAG_LABELS {
            for (t, _) in abnormal_types(label) {
                assert_eq!(t.subtype(), Some(label));
            }
        }
        assert!(abnormal_types("control").is_empty());
    }
}
