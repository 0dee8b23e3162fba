//! The scripts and sample sources, compiled into the crate.
//!
//! They are embedded rather than read from the source tree so a built `sdp`
//! binary can set up the test bed from any directory; [`materialize`] lays
//! them out again in the repository's own shape, so `sample-repos.sh` finds
//! `testbed/samples/` relative to itself exactly as it does in a checkout.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::TestbedError;

/// `(path relative to the repository root, contents)`.
pub(crate) const FILES: &[(&str, &str)] = &[
    (
        "scripts/testbed/docker.sh",
        include_str!("../../scripts/testbed/docker.sh"),
    ),
    (
        "scripts/testbed/runtime-image.sh",
        include_str!("../../scripts/testbed/runtime-image.sh"),
    ),
    (
        "scripts/testbed/gateway-image.sh",
        include_str!("../../scripts/testbed/gateway-image.sh"),
    ),
    (
        "scripts/testbed/sample-repos.sh",
        include_str!("../../scripts/testbed/sample-repos.sh"),
    ),
    (
        "scripts/testbed/prereqs.sh",
        include_str!("../../scripts/testbed/prereqs.sh"),
    ),
    (
        "testbed/samples/service/main.go",
        include_str!("../samples/service/main.go"),
    ),
    (
        "testbed/samples/service/README.md",
        include_str!("../samples/service/README.md"),
    ),
    (
        "testbed/samples/service-branches/feature.go",
        include_str!("../samples/service-branches/feature.go"),
    ),
    (
        "testbed/samples/service-branches/broken.go",
        include_str!("../samples/service-branches/broken.go"),
    ),
    (
        "testbed/samples/erangel/.htaccess",
        include_str!("../samples/erangel/.htaccess"),
    ),
    (
        "testbed/samples/erangel/README.md",
        include_str!("../samples/erangel/README.md"),
    ),
    (
        "testbed/samples/erangel/index.php",
        include_str!("../samples/erangel/index.php"),
    ),
    (
        "testbed/samples/erangel/application/config/production/config.php",
        include_str!("../samples/erangel/application/config/production/config.php"),
    ),
    (
        "testbed/samples/erangel-branches/feature.php",
        include_str!("../samples/erangel-branches/feature.php"),
    ),
];

/// Path of an embedded script inside a [`materialize`]d tree.
pub(crate) fn script(root: &Path, name: &str) -> PathBuf {
    root.join("scripts/testbed").join(name)
}

/// Writes the embedded scripts and samples under the system temp dir and
/// returns that directory: `<dir>/scripts/testbed/*.sh` and
/// `<dir>/testbed/samples/...`.
///
/// The directory is named after a hash of the contents, so processes built
/// from the same sources share it and a rebuilt crate never runs a stale
/// script. Files are written to a temporary name and renamed, so concurrent
/// test processes never see a half-written script.
pub fn materialize() -> Result<PathBuf, TestbedError> {
    // Held while writing so threads of one process never share a
    // temporary file name (it carries only the process id).
    static ROOT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut done = ROOT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(root) = done.as_ref() {
        return Ok(root.clone());
    }
    let root = std::env::temp_dir().join(format!("sdp-testbed-{:016x}", contents_hash()));
    write_tree(&root)?;
    *done = Some(root.clone());
    Ok(root)
}

fn contents_hash() -> u64 {
    let mut hasher = DefaultHasher::new();
    FILES.hash(&mut hasher);
    hasher.finish()
}

fn write_tree(root: &Path) -> Result<(), TestbedError> {
    for (rel, contents) in FILES {
        let path = root.join(rel);
        if std::fs::read(&path).is_ok_and(|have| have == contents.as_bytes()) {
            continue;
        }
        let dir = path.parent().unwrap_or(root);
        std::fs::create_dir_all(dir)
            .map_err(TestbedError::io(format!("creating {}", dir.display())))?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id()
        ));
        std::fs::write(&tmp, contents)
            .map_err(TestbedError::io(format!("writing {}", tmp.display())))?;
        #[cfg(unix)]
        if rel.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .map_err(TestbedError::io(format!("chmod {}", tmp.display())))?;
        }
        std::fs::rename(&tmp, &path)
            .map_err(TestbedError::io(format!("renaming to {}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    /// A sample or script added to the tree but not to [`FILES`] would work
    /// from a checkout and silently vanish from `sdp dev`.
    #[test]
    fn every_script_and_sample_is_embedded() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut found = Vec::new();
        walk(&repo.join("scripts/testbed"), &mut found);
        walk(&repo.join("testbed/samples"), &mut found);
        let embedded: Vec<&str> = FILES.iter().map(|(rel, _)| *rel).collect();
        for path in found {
            let rel = path
                .strip_prefix(repo)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            assert!(embedded.contains(&rel.as_str()), "{rel} is not in FILES");
        }
    }

    #[test]
    fn materialize_lays_out_the_repository_shape() {
        let root = materialize().unwrap();
        assert_eq!(materialize().unwrap(), root, "one directory per process");
        for (rel, contents) in FILES {
            assert_eq!(
                std::fs::read_to_string(root.join(rel)).unwrap(),
                *contents,
                "{rel}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(script(&root, "docker.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "scripts are executable");
        }
    }
}
