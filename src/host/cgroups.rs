//! What a container uses, read from its cgroup: CPU time, memory now and at its
//! peak, and its memory limit. Both hierarchies: cgroup v1 (with v2's unified
//! tree beside it, as on this machine's Debian) and cgroup v2 alone (Amazon Linux
//! 2023, the AMI's base). The cgroup is found from `/proc/<pid>/cgroup` of the
//! container's first process, so Docker's cgroup driver (cgroupfs or systemd)
//! does not matter. Docker removes the cgroup when the container exits: readers
//! sample while it runs and keep the last sample. Under the cgroupfs driver a
//! container may have a parent of its own ([`Cgroup::at`]), whose counters hold
//! everything it used once it has exited, however short it ran.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where cgroup hierarchies are mounted on a Linux host.
pub const ROOT: &str = "/sys/fs/cgroup";

/// v1 reports "no limit" as a page-aligned i64::MAX; anything this large is none.
const NO_LIMIT_ABOVE: u64 = 1 << 62;

/// One container's cgroup files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    layout: Layout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// `cpuacct.usage` (ns) in `cpu`, `memory.{usage,max_usage,limit}_in_bytes`
    /// in `memory`.
    V1 { cpu: PathBuf, memory: PathBuf },
    /// `cpu.stat` (`usage_usec`), `memory.current`, `memory.peak` (kernel 5.19+)
    /// and `memory.max` in one directory.
    V2 { dir: PathBuf },
}

/// A reading of a cgroup's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    /// The most it held since it started (v2 without `memory.peak`: the most
    /// this reader saw, which a caller keeps across samples).
    pub memory_peak_bytes: u64,
    /// `None`: no limit.
    pub memory_limit_bytes: Option<u64>,
}

impl Cgroup {
    /// The cgroup at `path` (as a cgroup parent names it, `/deckhand/<name>`) in
    /// this host's hierarchies; `None` when they have neither layout.
    pub fn at(path: &str) -> Option<Cgroup> {
        Cgroup::at_under(Path::new(ROOT), path)
    }

    fn at_under(root: &Path, path: &str) -> Option<Cgroup> {
        let relative = path.trim_start_matches('/');
        if root.join("cgroup.controllers").exists() {
            return Some(Cgroup {
                layout: Layout::V2 {
                    dir: root.join(relative),
                },
            });
        }
        // v1: `cpuacct` is the mount or a link to `cpu,cpuacct`.
        let (cpu, memory) = (root.join("cpuacct"), root.join("memory"));
        (cpu.exists() && memory.exists()).then(|| Cgroup {
            layout: Layout::V1 {
                cpu: cpu.join(relative),
                memory: memory.join(relative),
            },
        })
    }

    /// Removes the (empty) cgroup at `path` from every hierarchy it is in: under
    /// v1 runc made it in each controller's. One that is not there is no error.
    pub fn remove(path: &str) -> std::io::Result<()> {
        remove_under(Path::new(ROOT), path)
    }

    /// The cgroup of process `pid`, as the host sees it.
    pub fn of_process(pid: u32) -> Option<Cgroup> {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Cgroup::from_membership(Path::new(ROOT), &membership)
    }

    /// From the text of `/proc/<pid>/cgroup` and the mount root of the
    /// hierarchies. v1's controllers win when present (a hybrid host's unified
    /// tree holds no controllers).
    pub fn from_membership(root: &Path, membership: &str) -> Option<Cgroup> {
        let mut cpu = None;
        let mut memory = None;
        let mut unified = None;
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let relative = path.trim_start_matches('/');
            if controllers.is_empty() {
                unified = Some(root.join(relative));
            }
            let names: Vec<&str> = controllers.split(',').collect();
            if names.contains(&"cpuacct") {
                cpu = Some(root.join(controllers).join(relative));
            }
            if names.contains(&"memory") {
                memory = Some(root.join("memory").join(relative));
            }
        }
        let layout = match (cpu, memory, unified) {
            (Some(cpu), Some(memory), _) => Layout::V1 { cpu, memory },
            (_, _, Some(dir)) => Layout::V2 { dir },
            _ => return None,
        };
        Some(Cgroup { layout })
    }

    /// The counters now; `None` once the cgroup is gone (the container exited).
    pub fn sample(&self) -> Option<Sample> {
        match &self.layout {
            Layout::V1 { cpu, memory } => {
                let cpu_ns = read_u64(&cpu.join("cpuacct.usage"))?;
                let memory_bytes = read_u64(&memory.join("memory.usage_in_bytes"))?;
                Some(Sample {
                    cpu_seconds: cpu_ns as f64 / 1e9,
                    memory_bytes,
                    memory_peak_bytes: read_u64(&memory.join("memory.max_usage_in_bytes"))
                        .unwrap_or(memory_bytes),
                    memory_limit_bytes: read_u64(&memory.join("memory.limit_in_bytes"))
                        .filter(|&limit| limit < NO_LIMIT_ABOVE),
                })
            }
            Layout::V2 { dir } => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let usage_usec: u64 = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                let memory_bytes = read_u64(&dir.join("memory.current"))?;
                Some(Sample {
                    cpu_seconds: usage_usec as f64 / 1e6,
                    memory_bytes,
                    memory_peak_bytes: read_u64(&dir.join("memory.peak")).unwrap_or(memory_bytes),
                    // "max" does not parse: no limit.
                    memory_limit_bytes: read_u64(&dir.join("memory.max")),
                })
            }
        }
    }
}

impl Sample {
    /// This reading after `earlier`: the peak is the most either saw.
    pub fn after(self, earlier: Option<Sample>) -> Sample {
        let peak = earlier.map_or(0, |e| e.memory_peak_bytes);
        Sample {
            memory_peak_bytes: self.memory_peak_bytes.max(peak),
            ..self
        }
    }
}

fn remove_under(root: &Path, path: &str) -> std::io::Result<()> {
    let relative = path.trim_start_matches('/');
    let mut dirs = vec![root.join(relative)];
    if !root.join("cgroup.controllers").exists() {
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            // Links (`cpu` -> `cpu,cpuacct`) name a hierarchy twice.
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path().join(relative));
            }
        }
    }
    for dir in dirs {
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5abef8b225ad3a9db89431d28c41b4dabd337fb6b7b8727a07dd5e599a73a408";

    fn write(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    /// This machine's Docker: v1 controllers, cgroupfs driver, the unified tree
    /// beside them (as `/proc/<pid>/cgroup` read here).
    #[test]
    fn v1_hybrid_with_the_cgroupfs_driver() {
        let root = tempfile::tempdir().unwrap();
        let membership = format!(
            "9:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n2:cpuacct:/docker/{ID}\n1:cpu:/docker/{ID}\n0::/docker/{ID}\n"
        );
        write(
            &root.path().join("cpuacct/docker").join(ID),
            &[("cpuacct.usage", "2500000000\n")],
        );
        write(
            &root.path().join("memory/docker").join(ID),
            &[
                ("memory.usage_in_bytes", "1048576\n"),
                ("memory.max_usage_in_bytes", "8388608\n"),
                ("memory.limit_in_bytes", "67108864\n"),
            ],
        );
        let cgroup = Cgroup::from_membership(root.path(), &membership).unwrap();
        assert_eq!(
            cgroup.sample(),
            Some(Sample {
                cpu_seconds: 2.5,
                memory_bytes: 1 << 20,
                memory_peak_bytes: 8 << 20,
                memory_limit_bytes: Some(64 << 20),
            })
        );
    }

    /// Older kernels mount `cpu,cpuacct` together; no limit is i64::MAX rounded
    /// down to a page.
    #[test]
    fn v1_with_cpu_and_cpuacct_together_and_no_limit() {
        let root = tempfile::tempdir().unwrap();
        let membership = format!("5:memory:/docker/{ID}\n3:cpu,cpuacct:/docker/{ID}\n");
        write(
            &root.path().join("cpu,cpuacct/docker").join(ID),
            &[("cpuacct.usage", "1000\n")],
        );
        write(
            &root.path().join("memory/docker").join(ID),
            &[
                ("memory.usage_in_bytes", "4096\n"),
                ("memory.max_usage_in_bytes", "4096\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
            ],
        );
        let sample = Cgroup::from_membership(root.path(), &membership)
            .unwrap()
            .sample()
            .unwrap();
        assert_eq!(sample.memory_limit_bytes, None);
        assert_eq!(sample.cpu_seconds, 1e-6);
    }

    /// Amazon Linux 2023: cgroup v2 only, Docker's systemd driver.
    #[test]
    fn v2_with_the_systemd_driver() {
        let root = tempfile::tempdir().unwrap();
        let membership = format!("0::/system.slice/docker-{ID}.scope\n");
        write(
            &root.path().join(format!("system.slice/docker-{ID}.scope")),
            &[
                (
                    "cpu.stat",
                    "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
                ),
                ("memory.current", "2097152\n"),
                ("memory.peak", "16777216\n"),
                ("memory.max", "134217728\n"),
            ],
        );
        assert_eq!(
            Cgroup::from_membership(root.path(), &membership)
                .unwrap()
                .sample(),
            Some(Sample {
                cpu_seconds: 1.5,
                memory_bytes: 2 << 20,
                memory_peak_bytes: 16 << 20,
                memory_limit_bytes: Some(128 << 20),
            })
        );
    }

    /// A kernel before 5.19 has no `memory.peak`: the most seen across samples.
    #[test]
    fn v2_without_memory_peak_and_without_a_limit() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("docker").join(ID);
        write(
            &dir,
            &[
                ("cpu.stat", "usage_usec 10\n"),
                ("memory.current", "3000\n"),
                ("memory.max", "max\n"),
            ],
        );
        let cgroup = Cgroup::from_membership(root.path(), &format!("0::/docker/{ID}\n")).unwrap();
        let first = cgroup.sample().unwrap();
        assert_eq!(first.memory_limit_bytes, None);
        std::fs::write(dir.join("memory.current"), "1000\n").unwrap();
        let second = cgroup.sample().unwrap().after(Some(first));
        assert_eq!(
            (second.memory_bytes, second.memory_peak_bytes),
            (1000, 3000)
        );
    }

    #[test]
    fn a_gone_cgroup_reads_as_none() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = Cgroup::from_membership(root.path(), &format!("0::/docker/{ID}\n")).unwrap();
        assert_eq!(cgroup.sample(), None);
        assert_eq!(Cgroup::from_membership(root.path(), "garbage"), None);
    }

    /// The real thing: this test process's own cgroup, whatever the host has.
    #[test]
    fn this_process_has_a_readable_cgroup() {
        let cgroup = Cgroup::of_process(std::process::id()).expect("a cgroup");
        // The host's root cgroup (outside a container) may lack the files; a
        // container's or a service's has them.
        if let Some(sample) = cgroup.sample() {
            assert!(
                sample.cpu_seconds > 0.0 && sample.memory_bytes > 0,
                "{sample:?}"
            );
        }
    }

    #[test]
    fn a_parent_is_found_in_either_layout_and_removed_from_every_hierarchy() {
        let v1 = tempfile::tempdir().unwrap();
        let root = v1.path();
        for hierarchy in ["cpu,cpuacct", "memory", "pids"] {
            std::fs::create_dir_all(root.join(hierarchy).join("deckhand/job-1")).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
        let parent = Cgroup::at_under(root, "/deckhand/job-1").unwrap();
        assert_eq!(
            parent.layout,
            Layout::V1 {
                cpu: root.join("cpuacct/deckhand/job-1"),
                memory: root.join("memory/deckhand/job-1"),
            }
        );
        remove_under(root, "/deckhand/job-1").unwrap();
        for hierarchy in ["cpu,cpuacct", "memory", "pids"] {
            assert!(!root.join(hierarchy).join("deckhand/job-1").exists());
            assert!(root.join(hierarchy).join("deckhand").exists());
        }
        // Gone already: no error.
        remove_under(root, "/deckhand/job-1").unwrap();

        let v2 = tempfile::tempdir().unwrap();
        let root = v2.path();
        write(root, &[("cgroup.controllers", "cpu memory pids")]);
        std::fs::create_dir_all(root.join("deckhand/job-2")).unwrap();
        let parent = Cgroup::at_under(root, "/deckhand/job-2").unwrap();
        assert_eq!(
            parent.layout,
            Layout::V2 {
                dir: root.join("deckhand/job-2")
            }
        );
        remove_under(root, "/deckhand/job-2").unwrap();
        assert!(!root.join("deckhand/job-2").exists());
        // Neither layout: nothing to read.
        assert!(Cgroup::at_under(tempfile::tempdir().unwrap().path(), "/x").is_none());
    }
}
