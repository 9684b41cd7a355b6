//! Pulls from a real docker-registry on 127.0.0.1 (anonymous), checks what lands in
//! the store and what an overlay of the snapshots shows, platform choice, mirrors,
//! errors, and GC. Needs root (overlay mounts, trusted.* xattrs, mknod).

mod image_support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use hull_runtime::image::overlay;
use hull_runtime::image::pull::Quiet;
use hull_runtime::image::{Error, ImageStore};
use image_support::*;

fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

#[test]
fn anonymous_pull_whiteouts_and_overlay_view() {
    let s = Scratch::new("pull-anon");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("layout"), "busybox", "1");
    reg.push(&s.path("layout"), "1", "acc/busybox:1", &[]);
    let store = ImageStore::open(&s.path("data")).unwrap();
    let reference = format!("{}/acc/busybox:1", reg.host);
    let rec = store.pull(&reference, &Quiet).unwrap();
    assert_eq!(rec.name, reference);
    assert_eq!(rec.layers.len(), 2);
    // Every blob the record names is stored and hashes to its name.
    for d in [&rec.manifest_digest, &rec.config_digest] {
        store.content().read(d).unwrap();
    }
    for l in &rec.layers {
        assert!(
            store.content().has(&l.digest, Some(l.size)),
            "layer blob {}",
            l.digest
        );
    }
    // The top snapshot holds layer 2 as overlayfs wants it.
    let top = store.snapshots().fs_path(&rec.layers[1].chain_id).unwrap();
    assert_eq!(
        std::fs::read_to_string(top.join("etc/hello")).unwrap(),
        "hello-from-layer2\n"
    );
    let wh = std::fs::symlink_metadata(top.join("bin/zcat")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert_eq!(
        xattr(&top.join("opt/d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(
        top.join("etc/fifo")
            .metadata()
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let a = std::fs::metadata(top.join("etc/hello")).unwrap();
    let b = std::fs::metadata(top.join("etc/hello-link")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link kept");
    assert_eq!(a.mtime(), 1700000000, "mtime kept");
    let base = store.snapshots().fs_path(&rec.layers[0].chain_id).unwrap();
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert_eq!(
        std::fs::metadata(base.join("bin/busybox")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );

    // Mounted, the merged view applies the whiteouts.
    let (upper, work, root) = (s.path("c/upper"), s.path("c/work"), s.path("c/rootfs"));
    for d in [&upper, &work, &root] {
        std::fs::create_dir_all(d).unwrap();
    }
    overlay::mount(&store.lowers(&rec).unwrap(), &upper, &work, &root).unwrap();
    assert!(!root.join("bin/zcat").exists(), "whiteout hides /bin/zcat");
    assert!(root.join("bin/cat").exists());
    let mut names: Vec<String> = std::fs::read_dir(root.join("opt/d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["new"], "opaque dir hides the lower's entries");
    overlay::unmount(&root).unwrap();
    assert!(!overlay::is_mounted(&root));

    // A second pull finds everything present and changes nothing.
    let before = tree(&s.path("data/content"));
    let again = store.pull(&reference, &Quiet).unwrap();
    assert_eq!(again.manifest_digest, rec.manifest_digest);
    assert_eq!(tree(&s.path("data/content")), before);
    // Lookups by ID prefix and digest.
    assert_eq!(store.get(rec.id()).unwrap().name, rec.name);
    assert_eq!(
        store
            .get(&format!("{}/acc/busybox@{}", reg.host, rec.manifest_digest))
            .unwrap()
            .name,
        rec.name
    );
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn zstd_layers_and_index_platform_choice() {
    let s = Scratch::new("pull-zstd");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("z"), "zstd", "1");
    mkimage(&s.path("multi"), "multiarch", "1");
    mkimage(&s.path("arm"), "armonly", "1");
    reg.push(&s.path("z"), "1", "t/zstd:1", &["--preserve-digests"]);
    reg.push(
        &s.path("multi"),
        "1",
        "t/multi:1",
        &["--all", "--preserve-digests"],
    );
    reg.push(
        &s.path("arm"),
        "1",
        "t/arm:1",
        &["--all", "--preserve-digests"],
    );
    let store = ImageStore::open(&s.path("data")).unwrap();

    let z = store
        .pull(&format!("{}/t/zstd:1", reg.host), &Quiet)
        .unwrap();
    assert!(
        z.layers[0].media_type.ends_with("zstd"),
        "{}",
        z.layers[0].media_type
    );
    let top = store.snapshots().fs_path(&z.layers[1].chain_id).unwrap();
    assert!(top.join("etc/hello").is_file());

    let m = store
        .pull(&format!("{}/t/multi:1", reg.host), &Quiet)
        .unwrap();
    assert!(m.index_digest.is_some());
    let cfg = store.config(&m).unwrap();
    assert_eq!(cfg.architecture, "amd64");

    let err = store
        .pull(&format!("{}/t/arm:1", reg.host), &Quiet)
        .unwrap_err();
    assert!(matches!(err, Error::NoPlatform { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("t/arm:1") && msg.contains("linux/amd64") && msg.contains("linux/arm64/v8"),
        "{msg}"
    );
}

#[test]
fn registry_errors_name_the_reference_and_status() {
    let s = Scratch::new("pull-errors");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("layout"), "busybox", "1");
    reg.push(&s.path("layout"), "1", "acc/busybox:1", &[]);
    let store = ImageStore::open(&s.path("data")).unwrap();

    let e = store
        .pull(&format!("{}/acc/nope:1", reg.host), &Quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("acc/nope:1") && e.contains("404"), "{e}");

    let dead = free_port();
    let e = store
        .pull(&format!("127.0.0.1:{dead}/acc/busybox:1"), &Quiet)
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");

    let wrong = format!("{}/acc/busybox@sha256:{}", reg.host, "0".repeat(64));
    let e = store.pull(&wrong, &Quiet).unwrap_err().to_string();
    assert!(e.contains("404") || e.contains("digest"), "{e}");

    let e = store.pull("Not A Ref", &Quiet).unwrap_err().to_string();
    assert!(e.contains("invalid image reference"), "{e}");
    // Nothing was recorded and no temp files were left.
    assert!(store.list().unwrap().is_empty());
    assert!(!tree(&s.path("data")).iter().any(|p| p.contains(".tmp-")));
}

#[test]
fn mirrors_are_tried_first_and_the_name_is_kept() {
    let s = Scratch::new("pull-mirror");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("layout"), "busybox", "1");
    reg.push(&s.path("layout"), "1", "library/busybox:1", &[]);
    let mut store = ImageStore::open(&s.path("data")).unwrap();
    // A dead mirror first: it is skipped, the live one serves.
    store
        .registry
        .add_mirror_flag(&format!("docker.io=http://127.0.0.1:{}", free_port()))
        .unwrap();
    store
        .registry
        .add_mirror_flag(&format!("docker.io=http://{}", reg.host))
        .unwrap();
    let rec = store.pull("busybox:1", &Quiet).unwrap();
    assert_eq!(rec.name, "docker.io/library/busybox:1");
    assert!(store.get("busybox:1").is_ok());

    // The same through registries.toml.
    std::fs::write(
        s.path("data2.toml"),
        format!(
            "[mirrors]\n\"registry.k8s.io\" = [\"http://{}\"]\n",
            reg.host
        ),
    )
    .unwrap();
    std::fs::create_dir_all(s.path("data2")).unwrap();
    std::fs::rename(s.path("data2.toml"), s.path("data2/registries.toml")).unwrap();
    let store2 = ImageStore::open(&s.path("data2")).unwrap();
    let rec = store2
        .pull("registry.k8s.io/library/busybox:1", &Quiet)
        .unwrap();
    assert_eq!(rec.name, "registry.k8s.io/library/busybox:1");

    std::fs::write(s.path("data2/registries.toml"), "[mirrorz]\n").unwrap();
    let e = ImageStore::open(&s.path("data2"))
        .err()
        .expect("bad toml refused")
        .to_string();
    assert!(e.contains("registries.toml"), "{e}");
}

#[test]
fn gc_frees_what_is_unused_and_leases_protect() {
    let s = Scratch::new("pull-gc");
    let reg = Registry::start(&s.path("reg"));
    mkimage(&s.path("a"), "busybox", "1");
    mkimage(&s.path("b"), "shared", "1");
    reg.push(&s.path("a"), "1", "t/a:1", &[]);
    reg.push(&s.path("b"), "1", "t/b:1", &[]);
    let store = ImageStore::open(&s.path("data")).unwrap();
    let a = store.pull(&format!("{}/t/a:1", reg.host), &Quiet).unwrap();
    let b = store.pull(&format!("{}/t/b:1", reg.host), &Quiet).unwrap();
    assert_eq!(
        a.layers[0].chain_id, b.layers[0].chain_id,
        "base layer shared"
    );
    assert_eq!(store.snapshots().list().unwrap().len(), 3);

    // A container of a: rm refuses; GC keeps its snapshots.
    std::fs::create_dir_all(s.path("data/containers/c1")).unwrap();
    store.lease("c1", &a).unwrap();
    let e = store.remove(&a.name, false).unwrap_err();
    assert!(matches!(e, Error::InUse { .. }), "{e}");
    assert!(e.to_string().contains("c1"));
    let (_, gc) = store.remove(&a.name, true).unwrap();
    assert_eq!(gc.snapshots_removed, 0, "leased snapshots stay");
    assert!(
        gc.blobs_removed >= 3,
        "a's own manifest, config and top layer: {gc:?}"
    );
    assert!(store.snapshots().exists(&a.layers[1].chain_id));
    // Container gone: its layer goes, the shared base stays for b.
    store.release("c1").unwrap();
    let gc = store.gc().unwrap();
    assert_eq!(gc.snapshots_removed, 1);
    assert!(store.snapshots().exists(&b.layers[0].chain_id));
    assert!(!store.content().has(&a.layers[1].digest, None));
    assert!(store.content().has(&b.layers[0].digest, None));

    store.remove(&b.name, false).unwrap();
    assert!(store.snapshots().list().unwrap().is_empty());
    assert!(store.content().list().unwrap().is_empty());
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.remove(&b.name, false),
        Err(Error::NotFound(_))
    ));
}
