//! node_exporter's filesystem collector: the mounts in `<procfs>/1/mounts`
//! (or `<procfs>/mounts` when `hidepid=` hides PID 1), minus excluded mount
//! points and filesystem types, each sized with statfs(2) at
//! `<rootfs><mount point>`. Labels `device`, `fstype`, `mountpoint`; of
//! several identical mounts the first wins.
//!
//! statfs blocks for as long as the filesystem does: forever on a dead NFS
//! server. So the sweep runs on tokio's blocking pool under a deadline. A
//! mount whose statfs misses the deadline is stuck: it is reported with
//! `node_filesystem_device_error 1` and not asked again until that call
//! returns, so at most one thread waits per dead mount (node_exporter's stuck
//! mount watcher does the same). In the cycle where a mount first hangs, the
//! other mounts are missing, being inside the abandoned sweep; later cycles
//! skip the stuck one and report the rest.

use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{FsUsage, HostFilters, Kernel, excluded, parse_error};
use crate::collect::{Batch, CollectError};

pub(super) struct Filesystems {
    shared: Arc<Shared>,
    timeout: Duration,
    /// The last sweep's buffers, for the next one to reuse; `None` while a
    /// sweep runs and after one was abandoned.
    scratch: Mutex<Option<Sweep>>,
}

/// What the async side and the sweep on the blocking pool both see.
struct Shared {
    /// `<procfs>/1/mounts`, then `<procfs>/mounts`.
    mount_tables: [PathBuf; 2],
    /// Put before each mount point for statfs; empty when the root is `/`.
    rootfs_prefix: OsString,
    filters: Arc<HostFilters>,
    kernel: Arc<dyn Kernel>,
    watch: Mutex<Watch>,
}

/// Which sweep is current and where it is, so a late one can be told apart
/// and a hung mount named.
#[derive(Default)]
struct Watch {
    /// Bumped when a sweep starts or is abandoned; an older sweep stops at its next step.
    generation: u64,
    /// The current sweep is inside statfs on `current`.
    in_progress: bool,
    current: MountLabels,
    /// Mounts whose statfs has not returned; skipped until it does.
    stuck: Vec<MountLabels>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct MountLabels {
    device: String,
    mount_point: String,
    fs_type: String,
}

impl MountLabels {
    /// Overwrites the fields, reusing their buffers.
    fn set(&mut self, device: &str, mount_point: &str, fs_type: &str) {
        for (field, value) in
            [(&mut self.device, device), (&mut self.mount_point, mount_point), (&mut self.fs_type, fs_type)]
        {
            field.clear();
            field.push_str(value);
        }
    }
}

/// One pass over the mount table; its buffers are kept between cycles.
#[derive(Default)]
struct Sweep {
    /// The mount table's text.
    text: String,
    /// Every kept mount's device, mount point and type, back to back.
    labels: String,
    mounts: Vec<Mount>,
    /// Scratch for `<rootfs><mount point>`.
    path: PathBuf,
    /// The first problem reading or parsing the mount table.
    error: Option<CollectError>,
}

struct Mount {
    /// Ranges in `Sweep::labels`.
    device: Range<usize>,
    mount_point: Range<usize>,
    fs_type: Range<usize>,
    read_only: bool,
    /// `None` when statfs failed, or was not asked because the mount is stuck.
    usage: Option<FsUsage>,
}

impl Filesystems {
    pub(super) fn new(
        procfs_root: &Path,
        rootfs: &Path,
        filters: Arc<HostFilters>,
        kernel: Arc<dyn Kernel>,
        timeout: Duration,
    ) -> Self {
        let rootfs_prefix = if rootfs == Path::new("/") { OsString::new() } else { rootfs.as_os_str().to_owned() };
        let shared = Shared {
            mount_tables: [procfs_root.join("1/mounts"), procfs_root.join("mounts")],
            rootfs_prefix,
            filters,
            kernel,
            watch: Mutex::default(),
        };
        Self { shared: Arc::new(shared), timeout, scratch: Mutex::default() }
    }

    pub(super) async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let mut sweep =
            self.scratch.lock().expect("filesystem scratch lock is never poisoned").take().unwrap_or_default();
        let generation = {
            let mut watch = self.shared.watch();
            watch.generation = watch.generation.wrapping_add(1);
            watch.in_progress = false;
            watch.generation
        };
        let mut abandon = Abandon { shared: &self.shared, generation, armed: true };
        let shared = Arc::clone(&self.shared);
        let task = tokio::task::spawn_blocking(move || {
            sweep.run(&shared, generation);
            sweep
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(mut sweep)) => {
                abandon.armed = false;
                sweep.push_samples(out);
                let error = sweep.error.take();
                *self.scratch.lock().expect("filesystem scratch lock is never poisoned") = Some(sweep);
                error.map_or(Ok(()), Err)
            }
            Ok(Err(join_error)) => {
                abandon.armed = false;
                Err(parse_error(&self.shared.mount_tables[0], format!("filesystem sweep failed: {join_error}")))
            }
            Err(_elapsed) => {
                if let Some(stuck) = abandon.fire() {
                    let labels = [
                        ("device", stuck.device.as_str()),
                        ("fstype", stuck.fs_type.as_str()),
                        ("mountpoint", stuck.mount_point.as_str()),
                    ];
                    out.push("node_filesystem_device_error", &labels, 1.0);
                }
                // As node_exporter: a stuck mount is a device error, not a failed collector.
                Ok(())
            }
        }
    }

    #[cfg(test)]
    fn stuck_mount_points(&self) -> Vec<String> {
        self.shared.watch().stuck.iter().map(|stuck| stuck.mount_point.clone()).collect()
    }
}

impl Shared {
    fn watch(&self) -> MutexGuard<'_, Watch> {
        self.watch.lock().expect("filesystem watch lock is never poisoned: nothing in it panics")
    }
}

/// Gives up on a sweep when its deadline passes or its future is dropped.
struct Abandon<'a> {
    shared: &'a Shared,
    generation: u64,
    armed: bool,
}

impl Abandon<'_> {
    /// Stops the sweep at its next step and marks the mount it is inside
    /// statfs on, if any, as stuck; returns that mount.
    fn fire(&mut self) -> Option<MountLabels> {
        if !std::mem::replace(&mut self.armed, false) {
            return None;
        }
        let mut watch = self.shared.watch();
        if watch.generation != self.generation {
            return None;
        }
        watch.generation = watch.generation.wrapping_add(1);
        if !std::mem::replace(&mut watch.in_progress, false) {
            return None;
        }
        let stuck = watch.current.clone();
        warn!(
            mountpoint = %stuck.mount_point,
            "statfs did not answer in time; reporting the filesystem as failed until it does"
        );
        watch.stuck.push(stuck.clone());
        Some(stuck)
    }
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Sweep {
    /// Reads the mount table and stats every kept mount; runs on the blocking pool.
    fn run(&mut self, shared: &Shared, generation: u64) {
        self.mounts.clear();
        self.labels.clear();
        self.error = None;
        match self.read_mount_table(shared) {
            Ok(table) => self.parse_mount_table(table, &shared.filters),
            Err(err) => {
                self.error = Some(err);
                return;
            }
        }
        let Sweep { labels, mounts, path, .. } = self;
        for mount in mounts.iter_mut() {
            let mount_point = &labels[mount.mount_point.clone()];
            {
                let mut watch = shared.watch();
                if watch.generation != generation {
                    return;
                }
                if watch.stuck.iter().any(|stuck| stuck.mount_point == mount_point) {
                    continue;
                }
                watch.in_progress = true;
                watch.current.set(&labels[mount.device.clone()], mount_point, &labels[mount.fs_type.clone()]);
            }
            let full_path = path.as_mut_os_string();
            full_path.clear();
            full_path.push(&shared.rootfs_prefix);
            full_path.push(mount_point);
            let result = shared.kernel.statfs(path);
            {
                let mut watch = shared.watch();
                if watch.generation != generation {
                    // Abandoned while inside statfs: if this mount was
                    // marked stuck, it has answered now.
                    if let Some(index) = watch.stuck.iter().position(|stuck| stuck.mount_point == mount_point) {
                        watch.stuck.swap_remove(index);
                        info!(mountpoint = mount_point, "filesystem answers statfs again");
                    }
                    return;
                }
                watch.in_progress = false;
            }
            match result {
                Ok(usage) => mount.usage = Some(usage),
                // node_exporter logs this at debug level too: a mount the
                // agent may not read is common and not worth a warning.
                Err(err) => debug!(mountpoint = mount_point, error = %err, "statfs failed"),
            }
        }
    }

    /// Reads PID 1's mount table, or our own when PID 1's is hidden (as
    /// node_exporter does); returns the path read.
    fn read_mount_table<'a>(&mut self, shared: &'a Shared) -> Result<&'a Path, CollectError> {
        let read = |path: &'a PathBuf, text: &mut String| {
            text.clear();
            std::fs::File::open(path)
                .and_then(|mut file| file.read_to_string(text))
                .map(|_| path.as_path())
                .map_err(|source| CollectError::Read { path: path.display().to_string(), source })
        };
        let [pid1, own] = &shared.mount_tables;
        match read(pid1, &mut self.text) {
            Err(CollectError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => read(own, &mut self.text),
            result => result,
        }
    }

    fn parse_mount_table(&mut self, table: &Path, filters: &HostFilters) {
        let Sweep { text, labels, mounts, error, .. } = self;
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(device), Some(mount_point), Some(fs_type), Some(options)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                if !line.trim().is_empty() {
                    error.get_or_insert_with(|| parse_error(table, format!("malformed mount {line:?}")));
                }
                continue;
            };
            // The mount point goes into the arena first: exclusions match its unescaped form.
            let start = labels.len();
            let mount_point = append_unescaped(labels, mount_point);
            let kept = {
                let mount_point = &labels[mount_point.clone()];
                !excluded(&filters.mount_points_exclude, mount_point)
                    && !excluded(&filters.fs_types_exclude, fs_type)
                    && !mounts.iter().any(|m| {
                        labels[m.device.clone()] == *device
                            && labels[m.mount_point.clone()] == *mount_point
                            && labels[m.fs_type.clone()] == *fs_type
                    })
            };
            if !kept {
                labels.truncate(start);
                continue;
            }
            mounts.push(Mount {
                mount_point,
                device: append(labels, device),
                fs_type: append(labels, fs_type),
                read_only: options.split(',').any(|option| option == "ro"),
                usage: None,
            });
        }
    }

    fn push_samples(&self, out: &mut Batch) {
        for mount in &self.mounts {
            let labels = [
                ("device", &self.labels[mount.device.clone()]),
                ("fstype", &self.labels[mount.fs_type.clone()]),
                ("mountpoint", &self.labels[mount.mount_point.clone()]),
            ];
            let Some(usage) = mount.usage else {
                out.push("node_filesystem_device_error", &labels, 1.0);
                continue;
            };
            out.push("node_filesystem_device_error", &labels, 0.0);
            out.push("node_filesystem_size_bytes", &labels, usage.size_bytes);
            out.push("node_filesystem_free_bytes", &labels, usage.free_bytes);
            out.push("node_filesystem_avail_bytes", &labels, usage.avail_bytes);
            out.push("node_filesystem_files", &labels, usage.files);
            out.push("node_filesystem_files_free", &labels, usage.files_free);
            out.push("node_filesystem_readonly", &labels, if mount.read_only { 1.0 } else { 0.0 });
        }
    }
}

/// Appends a mount point from the mount table. The kernel writes space and
/// tab in it as `\040` and `\011`; node_exporter turns back those two and no
/// other escape, so Herd does too.
fn append_unescaped(arena: &mut String, raw: &str) -> Range<usize> {
    let start = arena.len();
    let mut rest = raw;
    while let Some((before, after)) = rest.split_once('\\') {
        arena.push_str(before);
        rest = if let Some(after) = after.strip_prefix("040") {
            arena.push(' ');
            after
        } else if let Some(after) = after.strip_prefix("011") {
            arena.push('\t');
            after
        } else {
            arena.push('\\');
            after
        };
    }
    arena.push_str(rest);
    start..arena.len()
}

fn append(arena: &mut String, value: &str) -> Range<usize> {
    let start = arena.len();
    arena.push_str(value);
    start..arena.len()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{default_filters, new_batch, render};
    use super::*;
    use std::collections::HashMap;
    use std::sync::Condvar;
    use std::time::Instant;

    /// The kept mounts of a mount table, one `device mountpoint fstype ro|rw` line each.
    fn check(table: &str, expected: &str) {
        let mut sweep = Sweep { text: table.to_owned(), ..Sweep::default() };
        sweep.parse_mount_table(Path::new("/proc/1/mounts"), &default_filters());
        let mut kept: String = sweep
            .mounts
            .iter()
            .map(|m| {
                let mode = if m.read_only { "ro" } else { "rw" };
                let (device, mount_point, fs_type) = (
                    &sweep.labels[m.device.clone()],
                    &sweep.labels[m.mount_point.clone()],
                    &sweep.labels[m.fs_type.clone()],
                );
                format!("{device} {mount_point:?} {fs_type} {mode}\n")
            })
            .collect();
        if let Some(err) = sweep.error {
            kept.push_str(&format!("error: {err}\n"));
        }
        assert_eq!(kept, expected, "for:\n{table}");
    }

    #[test]
    fn node_exporter_default_exclusions() {
        check(
            "sysfs /sys sysfs rw,nosuid 0 0\n\
             proc /proc proc rw 0 0\n\
             udev /dev devtmpfs rw 0 0\n\
             tmpfs /run tmpfs rw,nosuid 0 0\n\
             tmpfs /run/credentials/systemd-sysctl.service ramfs ro 0 0\n\
             /dev/sda1 / ext4 rw,relatime 0 0\n\
             cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n\
             cgroup /cgroup-v1/memory cgroup rw,memory 0 0\n\
             /dev/sda1 /var/lib/docker ext4 rw,relatime 0 0\n\
             overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0\n\
             overlay /srv/overlay overlay rw 0 0\n\
             nsfs /run/docker/netns/x nsfs rw 0 0\n\
             /dev/loop0 /snap/core/1 squashfs ro 0 0\n\
             /dev/sdb1 /srv/media\\040library xfs ro,noatime 0 0\n\
             /dev/sdb1 /srv/media\\040library xfs rw 0 0\n\
             server:/export /mnt/nfs nfs4 rw,vers=4.2 0 0\n",
            "tmpfs \"/run\" tmpfs rw\n\
             /dev/sda1 \"/\" ext4 rw\n\
             /dev/sda1 \"/var/lib/docker\" ext4 rw\n\
             /dev/sdb1 \"/srv/media library\" xfs ro\n\
             server:/export \"/mnt/nfs\" nfs4 rw\n",
        );
    }

    #[test]
    fn malformed_lines_are_reported_and_skipped() {
        check(
            "/dev/sda1 / ext4\n\n/dev/sdb1 /data xfs rw 0 0\n",
            "/dev/sdb1 \"/data\" xfs rw\nerror: /proc/1/mounts: unexpected format: malformed mount \"/dev/sda1 / ext4\"\n",
        );
    }

    #[test]
    fn only_space_and_tab_escapes_are_undone() {
        check("/dev/sdc1 /data\\011x\\134y\\040z\\ ext4 rw 0 0\n", "/dev/sdc1 \"/data\\tx\\\\134y z\\\\\" ext4 rw\n");
    }

    /// statfs answers at once, except on `hang_on`, which waits until released.
    struct HangingKernel {
        hang_on: &'static str,
        released: Mutex<bool>,
        wake: Condvar,
        calls: Mutex<HashMap<String, usize>>,
    }

    impl HangingKernel {
        fn calls(&self, mount_point: &str) -> usize {
            self.calls.lock().unwrap().get(mount_point).copied().unwrap_or(0)
        }

        fn release(&self) {
            *self.released.lock().unwrap() = true;
            self.wake.notify_all();
        }
    }

    impl Kernel for HangingKernel {
        fn statfs(&self, path: &Path) -> std::io::Result<FsUsage> {
            let mount_point = path.to_string_lossy().into_owned();
            *self.calls.lock().unwrap().entry(mount_point.clone()).or_default() += 1;
            if mount_point == self.hang_on {
                let released = self.released.lock().unwrap();
                drop(self.wake.wait_while(released, |released| !*released).unwrap());
            }
            Ok(FsUsage { size_bytes: 100.0, free_bytes: 50.0, avail_bytes: 40.0, files: 10.0, files_free: 5.0 })
        }

        fn now(&self) -> std::time::SystemTime {
            std::time::SystemTime::UNIX_EPOCH
        }

        fn uname(&self, _: &mut dyn FnMut(&super::super::Uname<'_>)) {}
    }

    fn device_errors(rendered: &str) -> Vec<&str> {
        rendered.lines().filter(|line| line.starts_with("node_filesystem_device_error")).collect()
    }

    #[tokio::test]
    async fn a_hung_mount_is_reported_skipped_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("1")).unwrap();
        std::fs::write(
            dir.path().join("1/mounts"),
            "/dev/sda1 / ext4 rw 0 0\nserver:/export /mnt/nfs nfs4 rw 0 0\n/dev/sdb1 /srv xfs rw 0 0\n",
        )
        .unwrap();
        let kernel = Arc::new(HangingKernel {
            hang_on: "/mnt/nfs",
            released: Mutex::new(false),
            wake: Condvar::new(),
            calls: Mutex::default(),
        });
        let filesystems = Filesystems::new(
            dir.path(),
            Path::new("/"),
            Arc::new(default_filters()),
            Arc::clone(&kernel) as Arc<dyn Kernel>,
            Duration::from_millis(100),
        );

        // First cycle: the sweep hangs; the hung mount is named, the rest wait for the next cycle.
        let (table, mut batch) = new_batch();
        filesystems.collect(&mut batch).await.unwrap();
        assert_eq!(
            device_errors(&render(&table, &batch)),
            ["node_filesystem_device_error{device=\"server:/export\",fstype=\"nfs4\",mountpoint=\"/mnt/nfs\"} 1"]
        );
        assert_eq!(filesystems.stuck_mount_points(), ["/mnt/nfs"]);

        // Second cycle: the stuck mount is not asked again; the others are reported.
        let (table, mut batch) = new_batch();
        filesystems.collect(&mut batch).await.unwrap();
        let rendered = render(&table, &batch);
        assert_eq!(
            device_errors(&rendered),
            [
                "node_filesystem_device_error{device=\"/dev/sda1\",fstype=\"ext4\",mountpoint=\"/\"} 0",
                "node_filesystem_device_error{device=\"/dev/sdb1\",fstype=\"xfs\",mountpoint=\"/srv\"} 0",
                "node_filesystem_device_error{device=\"server:/export\",fstype=\"nfs4\",mountpoint=\"/mnt/nfs\"} 1",
            ]
        );
        assert!(
            rendered
                .contains("node_filesystem_avail_bytes{device=\"/dev/sdb1\",fstype=\"xfs\",mountpoint=\"/srv\"} 40\n")
        );
        assert_eq!(kernel.calls("/mnt/nfs"), 1);

        // The server comes back: the late call returns and clears the mark.
        kernel.release();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !filesystems.stuck_mount_points().is_empty() {
            assert!(Instant::now() < deadline, "the stuck mark was never cleared");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (table, mut batch) = new_batch();
        filesystems.collect(&mut batch).await.unwrap();
        let rendered = render(&table, &batch);
        assert!(rendered.contains(
            "node_filesystem_device_error{device=\"server:/export\",fstype=\"nfs4\",mountpoint=\"/mnt/nfs\"} 0\n"
        ));
        assert_eq!(kernel.calls("/mnt/nfs"), 2);
    }

    #[tokio::test]
    async fn pid1_mounts_hidden_falls_back_to_our_own() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mounts"), "/dev/sda1 / ext4 ro 0 0\n").unwrap();
        let kernel = Arc::new(HangingKernel {
            hang_on: "",
            released: Mutex::new(true),
            wake: Condvar::new(),
            calls: Mutex::default(),
        });
        let filesystems =
            Filesystems::new(dir.path(), Path::new("/"), Arc::new(default_filters()), kernel, Duration::from_secs(5));
        let (table, mut batch) = new_batch();
        filesystems.collect(&mut batch).await.unwrap();
        assert!(
            render(&table, &batch)
                .contains("node_filesystem_readonly{device=\"/dev/sda1\",fstype=\"ext4\",mountpoint=\"/\"} 1\n")
        );
    }
}
