//! Stratified k-fold cross-validation splits with the paper's chunk rotation.
//!
//! Kazeminia et al. (DESIGN §2) evaluate with 5-fold stratified cross-validation
//! where each fold uses 60% of the patients for training, 20% for validation and
//! 20% for testing, obtained by rotating five stratified chunks: fold `f` trains
//! on chunks `f, f+1, f+2`, validates on `f+3` and tests on `f+4` (mod 5). This
//! module generalises that to `k` chunks (train = `k-2` chunks).
//!
//! Chunks are built deterministically from a seed:
//! 1. for each class in ascending class index, the patients of that class (in
//!    the order given) are shuffled with a Fisher–Yates shuffle driven by
//!    `ChaCha8` keyed with the little-endian bytes of `seed` (rest of the key
//!    zero) on stream `class`, so one class's shuffle does not depend on the
//!    size of the others;
//! 2. they are dealt round-robin into the `k` chunks, the dealer continuing
//!    across classes where the previous class stopped.
//!
//! Dealing round-robin gives every chunk `⌊n_c/k⌋` or `⌈n_c/k⌉` patients of
//! class `c` (proportions within ±1 patient), and continuing the dealer across
//! classes keeps the chunk sizes within ±1 of each other too. The shuffle uses
//! only the raw `ChaCha8` key stream and our own unbiased bounded sampling (no
//! `rand` seeding or shuffling helpers, whose output may change between
//! releases), so the folds of a seed stay the same: cross-validation results
//! must remain reproducible.
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::classes::BAG_LABELS;
use crate::error::{Error, Result};

/// The paper's number of folds.
pub const DEFAULT_FOLDS: usize = 5;

/// One cross-validation fold: indices into the patient list given to
/// [`stratified_folds`], each list sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldSplit {
    /// Fold number `f` in `0..k`.
    pub fold: usize,
    /// Patients of chunks `f, …, f+k-3` (mod k).
    pub train: Vec<usize>,
    /// Patients of chunk `f+k-2` (mod k), used for early stopping.
    pub validation: Vec<usize>,
    /// Patients of chunk `f+k-1` (mod k); every patient is tested in exactly one fold.
    pub test: Vec<usize>,
}

/// Deals the patients (given by their class labels) into `k` stratified chunks.
///
/// Returns `k` lists of indices into `labels`, each sorted ascending. Errors when
/// `k < 3` (a fold needs train, validation and test chunks), when `labels` is
/// empty, or when a class that occurs has fewer than `k` patients (some chunk
/// would lack it).
pub fn stratified_chunks(labels: &[usize], k: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if k < 3 {
        return Err(Error::invalid(
            "k",
            format!("{k} folds: need at least 3 chunks (train, validation and test)"),
        ));
    }
    if labels.is_empty() {
        return Err(Error::invalid("labels", "no patients to split"));
    }
    let num_classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (patient, &class) in labels.iter().enumerate() {
        by_class[class].push(patient);
    }
    let too_small: Vec<String> = by_class
        .iter()
        .enumerate()
        .filter(|(_, members)| !members.is_empty() && members.len() < k)
        .map(|(class, members)| format!("`{}` has {}", class_name(class), members.len()))
        .collect();
    if !too_small.is_empty() {
        return Err(Error::invalid(
            "labels",
            format!(
                "{k}-fold stratification needs at least {k} patients per class, but {}",
                too_small.join(", ")
            ),
        ));
    }

    let mut chunks: Vec<Vec<usize>> = vec![Vec::new(); k];
    let mut dealer = 0usize;
    for (class, members) in by_class.iter_mut().enumerate() {
        let mut rng = class_rng(seed, class);
        shuffle(members, &mut rng);
        for &patient in members.iter() {
            chunks[dealer % k].push(patient);
            dealer += 1;
        }
    }
    for chunk in &mut chunks {
        chunk.sort_unstable();
    }
    Ok(chunks)
}

/// The `k` folds of stratified cross-validation with the chunk rotation of the
/// paper (see the module docs). `labels[i]` is the class index of patient `i`.
pub fn stratified_folds(labels: &[usize], k: usize, seed: u64) -> Result<Vec<FoldSplit>> {
    let chunks = stratified_chunks(labels, k, seed)?;
    let folds = (0..k)
        .map(|fold| {
            let chunk = |offset: usize| &chunks[(fold + offset) % k];
            let mut train: Vec<usize> = (0..k - 2).flat_map(|o| chunk(o).iter().copied()).collect();
            train.sort_unstable();
            FoldSplit {
                fold,
                train,
                validation: chunk(k - 2).clone(),
                test: chunk(k - 1).clone(),
            }
        })
        .collect();
    Ok(folds)
}

/// Class name for messages: the bag label when the index is one of ours.
fn class_name(class: usize) -> String {
    BAG_LABELS
        .get(class)
        .map_or_else(|| format!("class {class}"), |l| (*l).to_owned())
}

/// The random stream of one class: the raw ChaCha8 cipher, independent of how
/// `rand_core` expands seeds.
fn class_rng(seed: u64, class: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(class as u64);
    rng
}

/// Fisher–Yates shuffle on the raw `u64` stream (value-stable, see module docs).
fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = uniform_below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// A uniform integer in `0..n` (`n > 0`).
fn uniform_below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    // Rejecting the top `2^64 mod n` values removes the bias a bare `% n` has.
    let excess = (u64::MAX % n + 1) % n;
    loop {
        let x = rng.next_u64();
        if x <= u64::MAX - excess {
            return x % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unbalanced cohort like the paper's: classes of 24, 36, 37, 32 and 60 patients,
    /// interleaved so class membership does not follow index order.
    fn cohort() -> Vec<usize> {
        let sizes = [24, 36, 37, 32, 60];
        let mut labels = Vec::new();
        let mut left = sizes;
        while left.iter().any(|&n| n > 0) {
            for (class, n) in left.iter_mut().enumerate() {
                if *n > 0 {
                    labels.push(class);
                    *n -= 1;
                }
            }
        }
        labels
    }

    fn count(labels: &[usize], members: &[usize], class: usize) -> usize {
        members.iter().filter(|&&p| labels[p] == class).count()
    }

    #[test]
    fn chunks_are_stratified_within_one_patient() {
        let labels = cohort();
        for seed in 0..4 {
            let chunks = stratified_chunks(&labels, 5, seed).unwrap();
            for class in 0..5 {
                let counts: Vec<usize> = chunks.iter().map(|c| count(&labels, c, class)).collect();
                let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                assert!(hi - lo <= 1, "class {class} seed {seed}: {counts:?}");
            }
            let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn folds_partition_the_patients_and_test_each_once() {
        let labels = cohort();
        let n = labels.len();
        for k in [3, 5, 7] {
            let folds = stratified_folds(&labels, k, 42).unwrap();
            assert_eq!(folds.len(), k);
            let mut tested = vec![0usize; n];
            for (f, split) in folds.iter().enumerate() {
                assert_eq!(split.fold, f);
                let mut all: Vec<usize> = split
                    .train
                    .iter()
                    .chain(&split.validation)
                    .chain(&split.test)
                    .copied()
                    .collect();
                all.sort_unstable();
                // Sorted union equal to 0..n means disjoint and complete at once.
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "k {k} fold {f}");
                for &p in &split.test {
                    tested[p] += 1;
                }
            }
            assert!(tested.iter().all(|&t| t == 1), "k {k}: {tested:?}");
        }
    }

    #[test]
    fn rotation_follows_the_paper() {
        let labels = cohort();
        let chunks = stratified_chunks(&labels, 5, 7).unwrap();
        let folds = stratified_folds(&labels, 5, 7).unwrap();
        for (f, split) in folds.iter().enumerate() {
            let mut train: Vec<usize> = [f, f + 1, f + 2]
                .iter()
                .flat_map(|&c| chunks[c % 5].clone())
                .collect();
            train.sort_unstable();
            assert_eq!(split.train, train);
            assert_eq!(split.validation, chunks[(f + 3) % 5]);
            assert_eq!(split.test, chunks[(f + 4) % 5]);
        }
        // 60/20/20 of 189 patients.
        let sizes: Vec<usize> = [&folds[0].train, &folds[0].validation, &folds[0].test]
            .iter()
            .map(|v| v.len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 189);
        assert!(
            (113..=114).contains(&sizes[0]) && (37..=38).contains(&sizes[1]),
            "{sizes:?}"
        );
    }

    #[test]
    fn seeds_are_deterministic_and_matter() {
        let labels = cohort();
        let a = stratified_folds(&labels, 5, 1).unwrap();
        assert_eq!(a, stratified_folds(&labels, 5, 1).unwrap());
        assert_ne!(a, stratified_folds(&labels, 5, 2).unwrap());
    }

    #[test]
    fn bad_arguments_are_named() {
        let labels = cohort();
        let e = stratified_folds(&labels, 2, 0).unwrap_err().to_string();
        assert!(e.contains("`k`") && e.contains("at least 3"), "{e}");
        let e = stratified_folds(&[], 5, 0).unwrap_err().to_string();
        assert!(e.contains("no patients"), "{e}");
        // NPM1 with 3 patients and control with 4, both too few for 5 folds.
        let labels = [0, 0, 0, 0, 0, 1, 1, 1, 4, 4, 4, 4];
        let e = stratified_folds(&labels, 5, 0).unwrap_err().to_string();
        assert!(
            e.contains("`NPM1` has 3") && e.contains("`control` has 4"),
            "{e}"
        );
        assert!(!e.contains("PML_RARA"), "{e}");
    }

    #[test]
    fn unknown_class_indices_are_named_by_number() {
        let e = stratified_folds(&[7, 7, 0, 0, 0], 3, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`class 7` has 2"), "{e}");
    }

    #[test]
    fn uniform_below_covers_the_range() {
        let mut rng = class_rng(3, 0);
        let mut seen = [0usize; 6];
        for _ in 0..6000 {
            seen[uniform_below(&mut rng, 6) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }
}
