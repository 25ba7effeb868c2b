//! The dataset reader on generated folder trees (`amlmil_fuzz::tree`): each tree
//! is written to a temporary folder and opened with `OpenOptions::skip()` and
//! `OpenOptions::fail()` (with image decoding when the tree asks for it); an
//! opened cohort is summarised and split into folds. Every tree must give `Ok`
//! or `Err`.
#![no_main]

use amlmil::dataset::{Dataset, OpenOptions};
use amlmil_fuzz::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: amlmil_fuzz::init("dataset"), |tree: Tree| {
    let dir = tempfile::tempdir().expect("temporary folder");
    tree.write(dir.path()).expect("write the tree");
    for options in [OpenOptions::skip(), OpenOptions::fail()] {
        let options = options.with_image_check(tree.check_images);
        let opened = Dataset::open(dir.path(), &options);
        amlmil_fuzz::report("Dataset::open", &opened);
        if let Ok((dataset, _issues)) = opened {
            let _ = dataset.summary();
            let _ = dataset.folds(5, 0);
            let _ = dataset.check_images();
        }
    }
});
