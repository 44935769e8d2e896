use std::sync::Arc;

use super::*;

fn tree(root: &Path, files: &[(&str, &str)]) -> PathBuf {
    let tree = root.join(crate::rules::random_hex(4));
    for (path, text) in files {
        let path = tree.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    tree
}

#[test]
fn the_least_recently_used_cache_goes_first_and_a_read_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let caches = Arc::new(Caches::open(dir.path(), 25, None).unwrap());
    let a = tree(dir.path(), &[("a", "0123456789")]);
    let held = caches.adopt("s", "a", &a, 10).unwrap();
    let b = tree(dir.path(), &[("b", "0123456789")]);
    drop(caches.adopt("s", "b", &b, 10).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(2));
    drop(caches.host_exact("s", "b"));
    // Past the cap: `a` is older but held, so `b` cannot go either way... `c` joins.
    let c = tree(dir.path(), &[("c", "0123456789")]);
    drop(caches.adopt("s", "c", &c, 10).unwrap());
    assert!(caches.host_exact("s", "a").is_some(), "held: kept");
    assert!(
        caches.host_exact("s", "b").is_none(),
        "least recently used: gone"
    );
    assert!(!dir.path().join("tier/s/b").exists());
    // One process at a time (an agent, or `deckhand exec`) keeps a tier.
    assert!(matches!(
        Caches::open(dir.path(), 25, None),
        Err(super::CacheError::Busy { .. })
    ));
    drop(held);
    drop(caches);
    // Reopened, the tier is what was left.
    let again = Arc::new(Caches::open(dir.path(), 25, None).unwrap());
    assert_eq!(again.host_bytes(), 20);
    assert_eq!(
        again.host_newest("s", "").map(|(k, _)| k).as_deref(),
        Some("c")
    );
}

#[test]
fn a_packed_tree_unpacks_to_the_same_files_and_only_named_paths_go_in() {
    let dir = tempfile::tempdir().unwrap();
    let t = tree(
        dir.path(),
        &[
            ("work/target/x", "built"),
            ("work/other", "no"),
            ("root/.cargo/r", "reg"),
        ],
    );
    std::os::unix::fs::symlink("x", t.join("work/target/link")).unwrap();
    let out = dir.path().join("p.tar.zst");
    let (size, sha) = pack::pack_tree(&t, &out).unwrap();
    assert_eq!(size, std::fs::metadata(&out).unwrap().len());
    assert_eq!(sha.len(), 64);
    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let limits = Limits::for_disk_of(dir.path());
    let file = std::fs::File::open(&out).unwrap();
    crate::host::archive::unpack(file, &back, limits, &Default::default()).unwrap();
    assert_eq!(
        std::fs::read_to_string(back.join("work/target/x")).unwrap(),
        "built"
    );
    let mut tar = Vec::new();
    let paths = ["/work/target".to_owned(), "/missing".to_owned()];
    let bytes = pack::tar_paths(&back, &paths, (1000, 1000), &mut tar).unwrap();
    assert_eq!(bytes, 5);
    let mut archive = tar::Archive::new(tar.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert_eq!(e.header().uid().unwrap(), 1000);
            e.path().unwrap().display().to_string()
        })
        .collect();
    assert_eq!(names, ["work/target", "work/target/link", "work/target/x"]);
}

#[test]
fn a_copy_into_a_volume_replaces_its_links_and_never_follows_one() {
    let dir = tempfile::tempdir().unwrap();
    let t = tree(
        dir.path(),
        &[
            ("work/deps/a/lib", "dep"),
            ("work/deps/b", "top"),
            ("work/other/x", "x"),
        ],
    );
    std::os::unix::fs::symlink("a", t.join("work/deps/link")).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("b"), "host").unwrap();
    // What the job's checkout left in its workspace: links out of it.
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::os::unix::fs::symlink(&outside, volume.join("deps")).unwrap();
    std::fs::create_dir(volume.join("other")).unwrap();
    std::os::unix::fs::symlink(&outside, volume.join("other/x")).unwrap();
    let owner = (0, 0);
    let bytes =
        super::copy::copy_path(&t, "work/deps".as_ref(), &volume, "deps".as_ref(), owner).unwrap();
    assert_eq!(bytes, 6);
    let bytes = super::copy::copy_path(
        &t,
        "work/other/x".as_ref(),
        &volume,
        "other/x".as_ref(),
        owner,
    )
    .unwrap();
    assert_eq!(bytes, 1);
    assert_eq!(std::fs::read_to_string(outside.join("b")).unwrap(), "host");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert!(volume.join("deps").symlink_metadata().unwrap().is_dir());
    assert_eq!(
        std::fs::read_to_string(volume.join("deps/a/lib")).unwrap(),
        "dep"
    );
    assert_eq!(
        std::fs::read_link(volume.join("deps/link")).unwrap(),
        Path::new("a")
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("other/x")).unwrap(),
        "x"
    );
    // A path the tier lacks is left alone.
    let none = super::copy::copy_path(&t, "work/nope".as_ref(), &volume, "nope".as_ref(), owner);
    assert_eq!(none.unwrap(), 0);
    assert!(!volume.join("nope").exists());
}
