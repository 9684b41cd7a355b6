//! Hostile layers: `..`, absolute paths, symlinks and hard links out of the root, a
//! symlink planted by an earlier layer, a decompression bomb. Nothing may be written
//! outside the snapshot; what cannot be honoured inside it is refused.

mod image_support;

use std::io::Write;
use std::path::{Path, PathBuf};

use hull_runtime::image::ImageStore;
use hull_runtime::image::pull::Quiet;
use hull_runtime::image::unpack::{UnpackOptions, apply_layer};
use image_support::*;

/// Raw tar entries, names written byte for byte (the `tar` crate's path setters
/// refuse `..`, which is exactly what a hostile layer contains).
fn raw_tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_ustar();
        {
            let raw = h.as_mut_bytes();
            raw[..name.len()].copy_from_slice(name.as_bytes());
            raw[157..157 + link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn outside_is_empty(dir: &Path) -> Vec<String> {
    tree(dir)
}

#[test]
fn entries_never_leave_the_snapshot() {
    let s = Scratch::new("hostile-direct");
    let outside = s.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"keep").unwrap();
    let o = outside.display().to_string();
    let rel = o.trim_start_matches('/');
    let up30 = "../".repeat(8);
    let root = s.path("snap");
    std::fs::create_dir_all(&root).unwrap();

    let dotdot = format!("{up30}{rel}/dotdot");
    let abs = format!("{o}/abs");
    let via = "evil/via-symlink".to_string();
    let relsym = format!("{up30}{rel}");
    let tarball = raw_tar(&[
        (&dotdot, b'0', "", b"x"),
        (&abs, b'0', "", b"x"),
        ("evil", b'2', &o, b""),
        (&via, b'0', "", b"x"),
        ("evilrel", b'2', &relsym, b""),
        ("evilrel/victim", b'0', "", b"overwritten"),
    ]);
    apply_layer(
        &tarball[..],
        &root,
        &[],
        "hostile",
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(outside_is_empty(&outside), vec!["victim"]);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    // Everything landed inside, where the root-relative resolution put it.
    assert!(root.join(rel).join("dotdot").is_file());
    assert!(root.join(rel).join("abs").is_file());
    assert!(root.join(rel).join("via-symlink").is_file());
    assert_eq!(
        std::fs::read(root.join(rel).join("victim")).unwrap(),
        b"overwritten"
    );

    // A later layer through a symlink planted by this one (a lower snapshot).
    let upper2 = s.path("snap2");
    std::fs::create_dir_all(&upper2).unwrap();
    let t2 = raw_tar(&[("evil/crosslayer", b'0', "", b"x")]);
    apply_layer(
        &t2[..],
        &upper2,
        std::slice::from_ref(&root),
        "hostile2",
        &UnpackOptions::default(),
    )
    .unwrap();
    assert!(upper2.join(rel).join("crosslayer").is_file());
    assert_eq!(outside_is_empty(&outside), vec!["victim"]);

    // Hard links out (directly, or through a symlinked dir) are refused.
    for (i, target) in [
        format!("{o}/victim"),
        "evil/victim-missing".to_string(),
        format!("{up30}etc/hostname"),
    ]
    .iter()
    .enumerate()
    {
        let up = s.path(&format!("snap-hl{i}"));
        std::fs::create_dir_all(&up).unwrap();
        let t = raw_tar(&[("hl", b'1', target, b"")]);
        let e = apply_layer(&t[..], &up, &[], "hl", &UnpackOptions::default()).unwrap_err();
        assert!(e.to_string().contains("hard link"), "{e}");
        assert!(!up.join("hl").exists());
    }
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"keep");
    assert_eq!(std::fs::metadata(outside.join("victim")).unwrap().len(), 4);
}

#[test]
fn decompression_is_bounded() {
    let s = Scratch::new("hostile-bomb");
    let root = s.path("snap");
    std::fs::create_dir_all(&root).unwrap();
    let big = vec![0u8; 4 << 20];
    let t = raw_tar(&[("zeros", b'0', "", &big)]);
    let opts = UnpackOptions {
        max_bytes: 1 << 20,
        ..Default::default()
    };
    let e = apply_layer(&t[..], &root, &[], "bomb", &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit"), "{e}");
    let t = raw_tar(&[
        ("a", b'0', "", b"1"),
        ("b", b'0', "", b"2"),
        ("c", b'0', "", b"3"),
    ]);
    let opts = UnpackOptions {
        max_entries: 2,
        ..Default::default()
    };
    let e = apply_layer(&t[..], &root, &[], "many", &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("too many entries"), "{e}");
}

#[test]
fn hostile_image_from_a_registry_writes_nothing_outside() {
    let s = Scratch::new("hostile-pull");
    let outside: PathBuf = s.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let o = outside.display().to_string();
    let reg = Registry::start(&s.path("reg"));
    mkimage_env(&s.path("layout"), "hostile", "1", &[("HOSTILE_TARGET", &o)]);
    reg.push(&s.path("layout"), "1", "t/hostile:1", &[]);
    let store = ImageStore::open(&s.path("data")).unwrap();
    let e = store
        .pull(&format!("{}/t/hostile:1", reg.host), &Quiet)
        .unwrap_err()
        .to_string();
    // The last layer hard-links to a file outside: refused, naming layer and entry.
    assert!(e.contains("hard link") && e.contains("hl"), "{e}");
    assert!(tree(&outside).is_empty(), "escaped: {:?}", tree(&outside));
    assert!(
        store.list().unwrap().is_empty(),
        "a failed pull records nothing"
    );
    // The layers before it unpacked inside their snapshots.
    let snaps = store.snapshots().list().unwrap();
    assert_eq!(snaps.len(), 3);
    let rel = o.trim_start_matches('/');
    let found: Vec<String> = snaps
        .iter()
        .flat_map(|c| tree(&store.snapshots().fs_path(c).unwrap()))
        .filter(|p| p.starts_with(rel) && p.contains("escaped"))
        .collect();
    for want in [
        "escaped-dotdot",
        "escaped-abs",
        "escaped-symlink",
        "escaped-rel",
        "escaped-crosslayer",
    ] {
        assert!(
            found.iter().any(|p| p.ends_with(want)),
            "{want} not contained: {found:?}"
        );
    }
    // No temp dirs left, and GC removes the orphan snapshots of the failed pull.
    assert!(!tree(&s.path("data")).iter().any(|p| p.contains(".tmp-")));
    store.gc().unwrap();
    assert!(store.snapshots().list().unwrap().is_empty());
    let _ = std::io::stderr().flush();
}
