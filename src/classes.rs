//! The five diagnostic classes and their fixed order.
//!
//! The order is part of every MIL checkpoint's manifest and never comes from the
//! order files are read in. Folder names (`bag_label`) follow the public AML data
//! set and SCEMILA; display names use the HGVS fusion notation of the paper.

/// Folder / CSV names of the classes, in the library's fixed order.
pub const BAG_LABELS: [&str; 5] = ["PML_RARA", "NPM1", "CBFB_MYH11", "RUNX1_RUNX1T1", "control"];

/// Human-readable names, index-aligned with [`BAG_LABELS`].
pub const DISPLAY_NAMES: [&str; 5] = [
    "PML::RARA",
    "NPM1",
    "CBFB::MYH11",
    "RUNX1::RUNX1T1",
    "healthy control",
];

/// Number of classes of the default task.
pub const NUM_CLASSES: usize = BAG_LABELS.len();

/// Index of a `bag_label` in the fixed order, or `None` for an unknown label.
pub fn class_index(bag_label: &str) -> Option<usize> {
    BAG_LABELS.iter().position(|l| *l == bag_label)
}

/// Display name for a bag label; unknown labels are returned unchanged.
pub fn display_name(bag_label: &str) -> &str {
    class_index(bag_label).map_or(bag_label, |i| DISPLAY_NAMES[i])
}
