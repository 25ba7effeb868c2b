//! classify.rs — the C example's program, written against the Rust API.
//!
//!     cargo run --example classify -- ENCODER.safetensors MIL.safetensors BAG_DIR [DEVICE] [TOP_K]
//!
//! Prints the predicted subtype, the class probabilities and the cells with the
//! highest attention for the predicted class.
use std::path::PathBuf;

use amlmil::{Bag, CellImage, Session, SessionOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: {} ENCODER MIL BAG_DIR [DEVICE] [TOP_K]", args[0]);
        std::process::exit(2);
    }
    let options = SessionOptions {
        device: args.get(4).map_or("auto", String::as_str).parse()?,
        ..Default::default()
    };
    let session = Session::new(args[1].as_ref(), args[2].as_ref(), &options)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args[3])?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("tif" | "tiff" | "png" | "jpg" | "jpeg")
            )
        })
        .collect();
    files.sort();
    let mut bag = Bag::new();
    for (i, f) in files.iter().enumerate() {
        bag.add(i as u64, CellImage::open(f)?)?;
    }
    println!("bag {}: {} cells", args[3], bag.len());
    let result = session.classify(&bag, &mut |_, _, _| true)?;
    println!("predicted: {}", result.classes[result.predicted]);
    for (class, p) in result.classes.iter().zip(&result.probabilities) {
        println!("  {class:<14} {p:.4}");
    }
    let k = args.get(5).map_or(Ok(5), |k| k.parse())?;
    let top = result.top_cells(result.predicted, k).unwrap_or_default();
    println!(
        "top {} cells for {}:",
        top.len(),
        result.classes[result.predicted]
    );
    for (rank, cell) in top.iter().enumerate() {
        println!(
            "  #{} {} attention {:.4}",
            rank + 1,
            files[cell.index].display(),
            cell.attention
        );
    }
    Ok(())
}
