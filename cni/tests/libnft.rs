//! libnftables in process: batches, JSON listings and refusals as `nft` gives them.
//! Needs root.

mod common;

use common::*;
use hull_cni::libnft;

#[test]
fn batches_lists_and_refusals_match_the_nft_binary() {
    require_root();
    assert!(
        libnft::available(),
        "libnftables.so.1 did not load (the nftables package installs it)"
    );
    let t = format!("inet hull-libnft{}", tag());
    let ok = libnft::run(&format!("add table {t}\nadd chain {t} c\n"), 0).expect("loaded");
    assert!(ok.is_ok(), "{ok:?}");
    let listed = libnft::run(&format!("list table {t}"), libnft::OUTPUT_JSON)
        .expect("loaded")
        .expect("listed");
    let v: serde_json::Value = serde_json::from_str(&listed).expect("JSON output");
    let chains: Vec<_> = v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|i| i.pointer("/chain/name"))
        .collect();
    assert_eq!(chains, vec!["c"]);
    // The same table through the binary: both see one kernel state.
    let bin = std::process::Command::new("nft")
        .args(["list", "chain"])
        .args(t.split(' '))
        .arg("c")
        .output()
        .expect("nft");
    assert!(bin.status.success());
    // A refused batch changes nothing and says why, as nft's stderr would.
    let err = libnft::run(&format!("add chain {t} d\nadd rule {t} nosuch accept\n"), 0)
        .expect("loaded")
        .expect_err("a rule in a missing chain");
    assert!(err.contains("No such file or directory"), "{err}");
    let after = libnft::run(&format!("list table {t}"), 0)
        .expect("loaded")
        .expect("listed");
    assert!(!after.contains("chain d"), "half a batch applied: {after}");
    assert!(
        libnft::run(&format!("delete table {t}"), 0)
            .expect("loaded")
            .is_ok()
    );
    assert!(
        libnft::run(&format!("list table {t}"), 0)
            .expect("loaded")
            .is_err()
    );
}
